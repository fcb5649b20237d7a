"""Live reload: SIGHUP re-reads CONFIG_FILE (and the secret <ENV>_FILE files) and applies the
live settings without touching a session; a bad file keeps the running configuration; a
changed restart-only setting is named in one log line and not applied."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_all, parse_environment_file, try_load_all
from testkit.processes import GatewayProcess
from tests.support.clients import PeerProcess

# Not an SDP offer: an authorized POST gets 400 bad_offer, an unauthorized one 401/403.
PROBE_BODY = b"not sdp"


def _post(url: str, token: str | None, body: bytes = PROBE_BODY) -> int:
    headers = {"Content-Type": "application/sdp"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _cors_origin(url: str, origin: str) -> str | None:
    request = urllib.request.Request(url, headers={"Origin": origin})
    with urllib.request.urlopen(request, timeout=5) as response:
        allowed: str | None = response.headers.get("Access-Control-Allow-Origin")
        return allowed


def _reload(gateway: GatewayProcess, config_file: Path, text: str, expect: str) -> str:
    """Write the file, SIGHUP, and return the log lines the reload wrote (ending in `expect`)."""
    before = gateway.log().count(expect)
    config_file.write_text(text)
    os.kill(gateway.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    while gateway.log().count(expect) == before:
        assert time.monotonic() < deadline, f"no {expect!r} after SIGHUP:\n{gateway.log()}"
        time.sleep(0.05)
    time.sleep(0.2)  # the lines that follow (restart-only, overridden)
    log = gateway.log()
    start = log.rfind("received SIGHUP")
    return log[start:]


def test_sighup_changes_the_token_live_and_keeps_sessions(
    gateway_factory: Callable[..., GatewayProcess],
    peers: Callable[..., PeerProcess],
    tmp_path: Path,
) -> None:
    config_file = tmp_path / "live-sfu.env"
    config_file.write_text(
        '# the operator\'s file\nAUTH_TOKEN="old-token"\n\nMAX_BODY_BYTES=65536\n'
    )
    gateway = gateway_factory(workers=1, env={"CONFIG_FILE": str(config_file)})
    publish = gateway.url + "/api/whip/publish/probe"
    assert _post(publish, "old-token") == 400
    assert _post(publish, "new-token") == 401

    # A live publisher (old token) and a viewer that joins after the reload (new token).
    publisher = peers("publish", gateway.url, "live", "--seconds", "9", "--token", "old-token")
    time.sleep(2.5)
    said = _reload(
        gateway,
        config_file,
        "AUTH_TOKEN=new-token\nMAX_BODY_BYTES=2048\nALLOWED_ORIGIN=https://app.example\n",
        "configuration reloaded",
    )
    assert "applied: ALLOWED_ORIGIN, AUTH_TOKEN" in said, said
    restart_lines = [line for line in said.splitlines() if "need a restart" in line]
    assert len(restart_lines) == 1 and "MAX_BODY_BYTES" in restart_lines[0], said
    assert "AUTH_TOKEN" not in restart_lines[0]
    assert "new-token" not in gateway.log()  # a secret is named, never shown

    assert _post(publish, "old-token") == 401
    assert _post(publish, "new-token") == 400
    # MAX_BODY_BYTES needs a restart: the 2048-byte limit was not applied.
    assert _post(publish, "new-token", PROBE_BODY * 400) == 400
    assert _cors_origin(gateway.url + "/api/whip/publish/probe", "https://app.example") == (
        "https://app.example"
    )
    assert _cors_origin(gateway.url + "/api/whip/publish/probe", "https://other.example") is None

    viewer = peers(
        "view", gateway.url, "live", "--seconds", "4", "--min-video-frames", "60",
        "--token", "new-token",
    )  # fmt: skip
    watched = viewer.result(timeout=30)
    published = publisher.result(timeout=30)
    assert watched["ok"], watched
    assert published["ok"] and published["delete_status"] == 200, published
    assert "closed by worker" not in gateway.log()  # nothing ended the publisher early


def test_sighup_changes_the_log_level_of_workers_too(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    config_file = tmp_path / "live-sfu.env"
    config_file.write_text("LOG_LEVEL=info\n")
    gateway = gateway_factory(workers=1, env={"CONFIG_FILE": str(config_file)})
    said = _reload(gateway, config_file, "LOG_LEVEL=debug\n", "configuration reloaded")
    assert "applied: LOG_LEVEL" in said, said
    deadline = time.monotonic() + 5
    while "log level set to debug" not in gateway.log():  # the worker's own line
        assert time.monotonic() < deadline, gateway.log()
        time.sleep(0.05)


def test_a_bad_file_keeps_the_running_configuration(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    config_file = tmp_path / "live-sfu.env"
    secret_file = tmp_path / "admin-token"
    secret_file.write_text("admin-one\n")
    config_file.write_text(f"AUTH_TOKEN=one\nADMIN_TOKEN_FILE={secret_file}\n")
    gateway = gateway_factory(
        workers=1, env={"CONFIG_FILE": str(config_file), "RATE_LIMIT_BURST": "1000"}
    )
    publish = gateway.url + "/api/whip/publish/probe"
    workers = gateway.url + "/api/admin/workers"

    def admin(token: str) -> int:
        request = urllib.request.Request(workers, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert admin("admin-one") == 200
    assert admin("admin-two") == 401

    admin_line = f"ADMIN_TOKEN_FILE={secret_file}\n"
    for bad, why in [
        (admin_line + "AUTH_TOKEN=two\nMAX_SESSIONS_PER_IP=many\n", "MAX_SESSIONS_PER_IP"),
        (admin_line + "AUTH_TOKEN=two\nJWT_AUDIENCE=aud\n", "JWT_AUDIENCE is set but"),
        ("AUTH_TOKEN=two\nthis is not a setting\n" + admin_line, "line 2"),
        (f"AUTH_TOKEN=two\nADMIN_TOKEN_FILE={tmp_path / 'missing'}\n", "ADMIN_TOKEN_FILE"),
    ]:
        said = _reload(gateway, config_file, bad, "reload refused")
        refused = [line for line in said.splitlines() if "reload refused" in line]
        assert len(refused) == 1 and why in refused[0], said
        assert "configuration reloaded" not in said
        assert _post(publish, "one") == 400, bad
        assert _post(publish, "two") == 401, bad
        assert admin("admin-one") == 200, bad

    # A secret file is read again on a reload; the environment wins over CONFIG_FILE.
    secret_file.write_text("admin-two\n")
    said = _reload(
        gateway,
        config_file,
        f"AUTH_TOKEN=two\nADMIN_TOKEN_FILE={secret_file}\nRATE_LIMIT_BURST=5\n",
        "configuration reloaded",
    )
    assert "applied: AUTH_TOKEN, ADMIN_TOKEN" in said, said
    assert "CONFIG_FILE's RATE_LIMIT_BURST ignored" in said, said
    assert _post(publish, "two") == 400
    assert admin("admin-one") == 401
    assert admin("admin-two") == 200


# --- the file and the loading path, in process -----------------------------------------------


def test_environment_file_syntax() -> None:
    text = (
        "# comment\n; another\n\n  AUTH_TOKEN = 'single quoted # not a comment'  \n"
        'ALLOWED_ORIGIN="https://a.example, https://b.example"\n'
        'TURN_PASSWORD="with \\"escaped\\" quotes"\nEMPTY=\nLOG_LEVEL=info\nLOG_LEVEL=debug\n'
    )
    assert parse_environment_file(text) == {
        "AUTH_TOKEN": "single quoted # not a comment",
        "ALLOWED_ORIGIN": "https://a.example, https://b.example",
        "TURN_PASSWORD": 'with "escaped" quotes',
        "EMPTY": "",
        "LOG_LEVEL": "debug",
    }
    for bad in ("JUST_A_NAME\n", "1ABC=x\n", 'A="unterminated\n'):
        with pytest.raises(ValueError, match="line 1"):
            parse_environment_file(bad)


def test_precedence_flag_environment_file_default(tmp_path: Path) -> None:
    config_file = tmp_path / "env"
    config_file.write_text("RATE_LIMIT_RPS=7\nRATE_LIMIT_BURST=8\nMAX_SUBS_PER_ROOM=9\n")
    env = {"CONFIG_FILE": str(config_file), "RATE_LIMIT_BURST": "80", "MAX_SUBS_PER_ROOM": ""}
    limits = load_all(["--rate-limit-rps", "70"], env).config.limits
    assert (limits.rate_limit_rps, limits.rate_limit_burst) == (70, 80)
    assert limits.max_subs_per_room == 9  # an empty variable counts as unset
    assert load_all([], {}).config.limits.rate_limit_rps == 20  # the default
    flagged = load_all(["--config-file", str(config_file)], {}).config
    assert flagged.limits.rate_limit_rps == 7 and flagged.ops.config_file == str(config_file)


def test_try_load_all_raises_instead_of_exiting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DRAIN_TIMEOUT"):
        try_load_all([], {"DRAIN_TIMEOUT": "-1"})
    with pytest.raises(ConfigError, match="cannot read it"):
        try_load_all([], {"CONFIG_FILE": str(tmp_path / "nope")})
    assert try_load_all([], {"DRAIN_TIMEOUT": "0"}).config.ops.drain_timeout == 0
