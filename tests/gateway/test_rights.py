"""Rights per room against real gateways: publish-only and play-only tokens, several tokens
per room, JWT `grants` (a list and one object), PLAY_OPEN.

The gateways run without a media worker: a request that passes authorisation gets 503
`no_worker` (WHIP) or 404 `no_room` (WHEP: nobody publishes), which is how "allowed" shows
without any media.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
import pytest

from testkit.processes import GatewayProcess, run_gateway_cli, start_gateway
from tests.support.sdp import OFFER

JWT_SECRET = "a-jwt-secret-of-at-least-32-bytes!!"
SDP = {"Content-Type": "application/sdp"}
REFUSED = (401, 403)


def make_jwt(claims: dict[str, Any]) -> str:
    return jwt.encode({"exp": int(time.time()) + 300, **claims}, JWT_SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {
        # A token that ends in ":play" is written with its right after it.
        "ROOM_TOKENS": "r1:pubkey:publish;r1:viewkey:play;both:bothkey;odd:key:play:publish",
        "JWT_SECRET": JWT_SECRET,
        "ADMIN_TOKEN": "admin-tok",
    }
    process = start_gateway(tmp_path_factory.mktemp("rights"), workers=0, env=env, wait="/healthz")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def play_open(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {"PLAY_OPEN": "true", "ROOM_TOKENS": "r1:streamkey:publish", "JWT_SECRET": JWT_SECRET}
    process = start_gateway(tmp_path_factory.mktemp("open"), workers=0, env=env, wait="/healthz")
    yield process
    process.stop()


async def attempt(
    http: aiohttp.ClientSession,
    gateway: GatewayProcess,
    action: str,
    room: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    path = f"/api/whip/publish/{room}" if action == "publish" else f"/api/whep/play/{room}"
    async with http.post(gateway.url + path, data=OFFER, headers={**SDP, **(headers or {})}) as r:
        return r.status, await r.json()


async def test_publish_only_and_play_only_tokens(
    gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    status, body = await attempt(http, gateway, "play", "r1", bearer("pubkey"))
    assert status == 403, body
    assert body["code"] == "forbidden"
    assert body["error"] == "this credential may publish room 'r1' but not play"
    status, body = await attempt(http, gateway, "publish", "r1", bearer("viewkey"))
    assert status == 403, body
    assert body["error"] == "this credential may play room 'r1' but not publish"
    assert (await attempt(http, gateway, "publish", "r1", bearer("pubkey")))[0] not in REFUSED
    assert (await attempt(http, gateway, "play", "r1", {"X-Auth-Token": "viewkey"}))[0] == 404
    # The old form means both; a key of another room still gets 403, none at all 401.
    assert (await attempt(http, gateway, "publish", "both", bearer("bothkey")))[0] == 503
    assert (await attempt(http, gateway, "play", "both", bearer("bothkey")))[0] == 404
    assert (await attempt(http, gateway, "play", "both", bearer("viewkey")))[0] == 403
    status, body = await attempt(http, gateway, "publish", "r1")
    assert status == 401 and body["code"] == "unauthorized"
    # Only a final :publish / :play is a right: "key:play" is the token, with publish.
    assert (await attempt(http, gateway, "publish", "odd", bearer("key:play")))[0] == 503
    assert (await attempt(http, gateway, "play", "odd", bearer("key:play")))[0] == 403
    assert (await attempt(http, gateway, "publish", "odd", bearer("key")))[0] == 401


async def test_jwt_grants(gateway: GatewayProcess, http: aiohttp.ClientSession) -> None:
    viewer = make_jwt({"grants": [{"room": "r9", "publish": False, "play": True}]})
    status, body = await attempt(http, gateway, "publish", "r9", bearer(viewer))
    assert status == 403 and body["error"] == "this credential may play room 'r9' but not publish"
    assert (await attempt(http, gateway, "play", "r9", bearer(viewer)))[0] == 404
    assert (await attempt(http, gateway, "play", "r8", bearer(viewer)))[0] == 403
    # One object instead of a list; a right left out is not granted.
    publisher = make_jwt({"grants": {"room": "r8", "publish": True}})
    assert (await attempt(http, gateway, "publish", "r8", bearer(publisher)))[0] == 503
    status, body = await attempt(http, gateway, "play", "r8", bearer(publisher))
    assert status == 403 and "may publish room 'r8' but not play" in body["error"]
    # grants replaces the room claim; the room claim alone still means both.
    both = make_jwt({"room": "r7"})
    assert (await attempt(http, gateway, "publish", "r7", bearer(both)))[0] == 503
    assert (await attempt(http, gateway, "play", "r7", bearer(both)))[0] == 404
    mixed = make_jwt({"room": "r7", "grants": [{"room": "r7", "play": True}]})
    assert (await attempt(http, gateway, "publish", "r7", bearer(mixed)))[0] == 403
    # A malformed grants claim is an invalid token.
    for bad in ({"room": "r7", "publish": "yes"}, [{"publish": True}], "r7", [{"room": "a b"}]):
        status, body = await attempt(http, gateway, "play", "r7", bearer(make_jwt({"grants": bad})))
        assert status == 401 and body["code"] == "invalid_token", (bad, body)


async def test_play_open(play_open: GatewayProcess, http: aiohttp.ClientSession) -> None:
    # Anyone watches any room, with or without a credential (even a wrong one).
    for room in ("r1", "elsewhere"):
        assert (await attempt(http, play_open, "play", room))[0] == 404
    assert (await attempt(http, play_open, "play", "r1", bearer("wrong")))[0] == 404
    # Publishing still needs the stream key (or a JWT with the right).
    assert (await attempt(http, play_open, "publish", "r1"))[0] == 401
    assert (await attempt(http, play_open, "publish", "r1", bearer("wrong")))[0] == 401
    assert (await attempt(http, play_open, "publish", "elsewhere"))[0] == 401
    assert (await attempt(http, play_open, "publish", "r1", bearer("streamkey")))[0] == 503
    viewer = make_jwt({"grants": {"room": "r2", "play": True}})
    assert (await attempt(http, play_open, "publish", "r2", bearer(viewer)))[0] == 403
    # TURN/ICE details of OPTIONS follow "may use the room": play is open, so yes.
    async with http.options(play_open.url + "/api/whep/play/r1") as response:
        assert response.status == 204


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ROOM_TOKENS": "r1::publish"}, "ROOM_TOKENS"),  # a right with no token
        ({"AUTH_HOOK_URL": "ftp://key@hook.example/x"}, "AUTH_HOOK_URL"),
        ({"WEBHOOK_URLS": "https://ok.example/x,nope-key"}, "WEBHOOK_URLS"),
        ({"WEBHOOK_URLS": "https://ok.example/x"}, "WEBHOOK_SECRET"),  # unsigned: refused
        ({"PLAY_OPEN": "maybe"}, "PLAY_OPEN"),
    ],
)
def test_invalid_settings_exit_2(env: dict[str, str], named: str) -> None:
    result = run_gateway_cli("--workers", "0", env=env)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    # URLs may carry credentials: never echoed, like the tokens.
    assert "key" not in result.stderr and "r1::publish" not in result.stderr
