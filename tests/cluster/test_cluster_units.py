"""The cluster's settings and pure decisions, without processes: secrets from files, what a
log shows of REDIS_URL, the placement score, the hop marker, the signed redirect grants."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from gateway.cluster.grant import GRANT_TTL_S, RedirectGrants, sign_grant
from gateway.cluster.node import NodeLoad, _hop_of, _redirect_url, _without_grant, redacted_url
from gateway.config import load_config
from gateway.http.errors import HttpError
from gateway.placement.directory import SingleNode

URL = "http://10.0.0.1:8080"


def test_redis_url_and_password_come_from_files(tmp_path: Path) -> None:
    url_file = tmp_path / "redis_url"
    url_file.write_text("redis://:pw-from-file@10.0.0.9:6379/2\n")
    token_file = tmp_path / "node_token"
    token_file.write_text("n" * 16 + "\n")
    config = load_config(
        ["--workers", "0"],
        {
            "REDIS_URL_FILE": str(url_file),
            "NODE_TOKEN_FILE": str(token_file),
            "NODE_URL": URL + "/",
            "NODE_ID": "media-1",
        },
    ).cluster
    assert config.enabled and config.redis_url == "redis://:pw-from-file@10.0.0.9:6379/2"
    assert config.node_url == URL and config.node_id == "media-1"
    assert config.node_token == "n" * 16
    assert config.heartbeat_interval == 2.5
    assert "pw-from-file" not in repr(config) and "n" * 16 not in repr(config)


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"NODE_ID": "a.b"}, "NODE_ID"),
        ({"NODE_URL": "ftp://x"}, "NODE_URL"),
        ({"NODE_URL": "http://x/?q=1"}, "NODE_URL"),
        ({"NODE_TOKEN": "short"}, "NODE_TOKEN"),
        ({"REDIS_URL": ""}, "need REDIS_URL"),
    ],
)
def test_invalid_cluster_settings_exit_2(
    env: dict[str, str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"REDIS_URL": "redis://127.0.0.1:6379/0", "NODE_URL": URL}
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--workers", "0"], {**base, **env})
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip()
    assert complaint in line and len(line.splitlines()) == 1


def test_logs_never_show_redis_credentials() -> None:
    assert redacted_url("redis://user:secret@h:6379/1") == "redis://***@h:6379/1"
    assert redacted_url("rediss://:secret@h/0") == "rediss://***@h/0"
    assert redacted_url("unix:///run/redis.sock?password=secret") == "unix:///run/redis.sock"


def test_least_loaded_prefers_sessions_per_worker_then_this_node() -> None:
    def load(
        node: str, sessions: int, workers: int = 2, capacity: int = 0, draining: bool = False
    ) -> NodeLoad:
        return NodeLoad(node, URL, 0, sessions, workers, capacity, draining)

    nodes = [load("a", 4), load("b", 2), load("c", 1, workers=1)]
    assert min(nodes, key=lambda n: n.score("a")).node_id == "b"  # 1 per worker, rooms tie
    tie = [load("a", 2), load("b", 2)]
    assert min(tie, key=lambda n: n.score("b")).node_id == "b"  # no redirect on a tie
    assert not load("d", 0, draining=True).has_capacity
    assert not load("e", 0, workers=0).has_capacity
    assert not load("f", 10, capacity=10).has_capacity
    assert load("g", 9, capacity=10).has_capacity and load("h", 10**6).has_capacity


def test_the_hop_marker_is_added_once_and_read_back() -> None:
    target = "/api/whip/publish/r1"
    redirected = _redirect_url(URL, target, "b")
    assert redirected == URL + target + "?node=b"
    assert _redirect_url(URL, target + "?x=1", "b").endswith("?x=1&node=b")
    assert _hop_of(target) is None and _hop_of("/p?node=b") == "b"
    assert _hop_of("/p?x=1&node=") == "" and _hop_of("/p?nodes=1") is None


async def test_a_single_node_serves_everything_here() -> None:
    single = SingleNode()
    assert await single.route_endpoint("publisher", "r1", "/api/whip/publish/r1") is None
    assert await single.route_session("x", "/api/whip/session/x") is None
    assert single.location("/api/whip/session/x") == "/api/whip/session/x"
    assert single.not_ready() is None and len(single.new_session_id()) == 32


# --- signed redirect grants (gateway/cluster/grant.py) ---------------------------------------

SECRET = "node-token-" + "x" * 16


def _refusal(grants: RedirectGrants, grant: str, room: str = "r1", now: float = 1000.0) -> str:
    with pytest.raises(HttpError) as refused:
        grants.check(grant, room, "publish", now=now)
    assert refused.value.status == 401 and "WWW-Authenticate" in refused.value.headers
    return refused.value.code


def test_a_grant_is_taken_for_its_room_right_and_node_once_until_it_expires() -> None:
    grants = RedirectGrants(SECRET, "b")
    grant = sign_grant(SECRET, "r1", "publish", "b", now=1000.0)
    payload, _, signature = grant.partition(".")
    assert len(signature) == 43  # 32 bytes, base64url without padding
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert decoded["room"] == "r1" and decoded["right"] == "publish" and decoded["node"] == "b"
    assert decoded["exp"] == 1000 + GRANT_TTL_S and len(decoded["nonce"]) == 16
    assert SECRET not in grant
    grants.check(grant, "r1", "publish", now=1000.0 + GRANT_TTL_S)  # taken, at the last second
    assert _refusal(grants, grant, now=1001.0) == "grant_used"  # once
    assert _refusal(grants, sign_grant(SECRET, "r1", "publish", "b", now=900)) == "grant_expired"
    assert _refusal(grants, sign_grant(SECRET, "r1", "publish", "c", now=999)) == "grant_other_node"
    assert _refusal(grants, sign_grant(SECRET, "r2", "publish", "b", now=999)) == "grant_other_room"
    assert _refusal(grants, sign_grant(SECRET, "r1", "play", "b", now=999)) == "grant_other_right"
    other_key = sign_grant("another-node-token-0123", "r1", "publish", "b", now=999)
    assert _refusal(grants, other_key) == "invalid_grant"
    fresh = sign_grant(SECRET, "r1", "publish", "b", now=999)
    tampered_payload = sign_grant(SECRET, "r2", "publish", "b", now=999).split(".")[0]
    for bad in (
        tampered_payload + "." + fresh.split(".")[1],  # another payload under this signature
        fresh[:-2] + ("AA" if not fresh.endswith("AA") else "BB"),
        fresh.replace(".", ""),
        "",
        ".",
        "é.é",
        "x" * 2000 + "." + "y",
    ):
        assert _refusal(grants, bad) == "invalid_grant", bad


def test_a_redirect_replaces_a_grant_the_request_carried() -> None:
    assert _without_grant("/p?grant=x&a=1&grant=y") == "/p?a=1"
    assert _without_grant("/p?grant=x") == "/p" and _without_grant("/p") == "/p"
    assert _without_grant("/p?grants=1") == "/p?grants=1"
