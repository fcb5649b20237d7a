"""Authentication against a real gateway: every kind of credential against every kind of room
and the admin API, the JWT refusals, CORS for allowed and disallowed origins, and TURN
credentials only for callers allowed in the room.

The gateways here run without a media worker: a request that passes authentication gets
503 `no_worker`, which is how "allowed" shows without any media.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from multidict import CIMultiDictProxy

from testkit.processes import GatewayProcess, start_gateway
from tests.support.sdp import OFFER

JWT_SECRET = "a-jwt-secret-of-at-least-32-bytes!!"
AUDIENCE = "live-sfu"
ENV = {
    "AUTH_TOKEN": "global-tok",
    "ROOM_TOKENS": "vip:vip-tok",
    "JWT_SECRET": JWT_SECRET,
    "JWT_AUDIENCE": AUDIENCE,
    "ADMIN_TOKEN": "admin-tok",
    "ALLOWED_ORIGIN": "https://app.example,http://localhost:3000",
    "TURN_URLS": "turn:turn.example:3478",
    "TURN_SECRET": "turn-shared-secret",
    "LOG_LEVEL": "debug",
}
SDP = {"Content-Type": "application/sdp"}
ALLOWED = 503  # passed authentication, then found no media worker


def make_jwt(
    claims: dict[str, Any] | None = None,
    *,
    key: Any = JWT_SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"exp": now + 300, "iat": now, "aud": AUDIENCE}
    payload.update(claims or {})
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def unsigned_jwt(claims: dict[str, Any]) -> str:
    """alg=none: PyJWT will not sign it, so build it by hand."""
    import base64
    import json

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    payload = {"exp": now + 300, "aud": AUDIENCE, **claims}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("auth"), workers=0, env=ENV, wait="/healthz")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def open_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """No credential configured at all: live-webrtc-go's open server."""
    process = start_gateway(tmp_path_factory.mktemp("open"), workers=0, wait="/healthz")
    yield process
    process.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def publish_status(
    http: aiohttp.ClientSession, gateway: GatewayProcess, room: str, headers: dict[str, str]
) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    url = f"{gateway.url}/api/whip/publish/{room}"
    async with http.post(url, data=OFFER, headers={**SDP, **headers}) as response:
        return response.status, await response.json(), response.headers


# Credentials, and what they get on: a room with its own token ("vip"), a room covered by
# AUTH_TOKEN ("lobby"), and the admin API.
CREDENTIALS: dict[str, tuple[dict[str, str], int, int, int]] = {
    "none": ({}, 401, 401, 401),
    "wrong token": (bearer("nope"), 401, 401, 401),
    "room token": (bearer("vip-tok"), ALLOWED, 403, 403),
    "room token in X-Auth-Token": ({"X-Auth-Token": "vip-tok"}, ALLOWED, 403, 403),
    "global token": (bearer("global-tok"), 403, ALLOWED, 403),
    "global token in X-Auth-Token": ({"X-Auth-Token": "global-tok"}, 403, ALLOWED, 403),
    "admin token": (bearer("admin-tok"), 403, 403, 200),
    "JWT for every room": (bearer(make_jwt()), ALLOWED, ALLOWED, 403),
    "JWT for vip": (bearer(make_jwt({"room": "vip"})), ALLOWED, 403, 403),
    "JWT for lobby": (bearer(make_jwt({"room": "lobby"})), 403, ALLOWED, 403),
    "JWT role admin": (bearer(make_jwt({"role": "Admin"})), ALLOWED, ALLOWED, 200),
    "JWT admin true": (bearer(make_jwt({"admin": True, "room": "vip"})), ALLOWED, 403, 200),
    "JWT admin 1": (bearer(make_jwt({"admin": 1})), ALLOWED, ALLOWED, 200),
    "JWT admin false": (bearer(make_jwt({"admin": False})), ALLOWED, ALLOWED, 403),
    "JWT in X-Auth-Token": ({"X-Auth-Token": make_jwt()}, ALLOWED, ALLOWED, 403),
    "X-Auth-Token wins over Bearer": (
        {"X-Auth-Token": "nope", "Authorization": "Bearer vip-tok"},
        401,
        401,
        401,
    ),
    "Bearer with extra spaces": ({"Authorization": "bearer   vip-tok  "}, ALLOWED, 403, 403),
    "Basic is not a bearer token": ({"Authorization": "Basic dmlwLXRvaw=="}, 401, 401, 401),
}


def _check_refusal(status: int, body: dict[str, Any], headers: Any) -> None:
    assert isinstance(body.get("error"), str) and body["error"]
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")
    else:
        assert "WWW-Authenticate" not in headers
    for secret in ("vip-tok", "global-tok", "admin-tok", JWT_SECRET):
        assert secret not in body["error"]


@pytest.mark.parametrize("name", list(CREDENTIALS))
async def test_credential_matrix(
    gateway: GatewayProcess, http: aiohttp.ClientSession, name: str
) -> None:
    headers, on_vip, on_lobby, on_admin = CREDENTIALS[name]
    for room, expected in (("vip", on_vip), ("lobby", on_lobby)):
        status, body, response_headers = await publish_status(http, gateway, room, headers)
        assert status == expected, (room, body)
        if status == ALLOWED:
            assert body["code"] == "no_worker"
        else:
            _check_refusal(status, body, response_headers)
    # WHEP is authorised the same way (it then finds no room: 404 means "allowed").
    url = f"{gateway.url}/api/whep/play/vip"
    async with http.post(url, data=OFFER, headers={**SDP, **headers}) as response:
        assert response.status == (404 if on_vip == ALLOWED else on_vip)
    async with http.get(f"{gateway.url}/api/admin/workers", headers=headers) as response:
        assert response.status == on_admin, await response.text()
        if on_admin != 200:
            _check_refusal(response.status, await response.json(), response.headers)


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def _hs256_with_public_key() -> str:
    """The classic key-confusion forgery: HMAC keyed with the server's public key."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"exp": now + 300, "aud": AUDIENCE}).encode())
    mac = hmac.new(RSA_PUBLIC_PEM, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(mac)}"


REFUSED_JWTS = {
    "alg none": unsigned_jwt({}),
    "RS256": make_jwt(key=RSA_KEY, algorithm="RS256"),
    "HS256 keyed with a public key": _hs256_with_public_key(),
    "wrong secret": make_jwt(key="another-secret-another-secret-xx"),
    "expired": make_jwt({"exp": int(time.time()) - 120}),
    "not valid yet": make_jwt({"nbf": int(time.time()) + 600}),
    "issued in the future": make_jwt({"iat": int(time.time()) + 600}),
    "no exp": make_jwt({"exp": None}),
    "wrong audience": make_jwt({"aud": "someone-else"}),
    "no audience": make_jwt({"aud": None}),
    "room not a string": make_jwt({"room": ["vip"]}),
    "garbage": "not.a.jwt",
}


@pytest.mark.parametrize("name", list(REFUSED_JWTS))
async def test_jwt_refusals(
    gateway: GatewayProcess, http: aiohttp.ClientSession, name: str
) -> None:
    headers = bearer(REFUSED_JWTS[name])
    status, body, response_headers = await publish_status(http, gateway, "lobby", headers)
    assert status == 401, body
    assert body["code"] == "invalid_token"
    assert 'error="invalid_token"' in response_headers["WWW-Authenticate"]
    async with http.get(f"{gateway.url}/api/admin/workers", headers=headers) as response:
        assert response.status == 401


async def test_expiry_within_leeway_is_accepted(
    gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    token = make_jwt({"exp": int(time.time()) - 5})  # 30 s leeway, as in live-webrtc-go
    status, _body, _headers = await publish_status(http, gateway, "lobby", bearer(token))
    assert status == ALLOWED


async def test_open_server_allows_every_room_and_disables_admin(
    open_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    for headers in ({}, bearer("anything")):
        status, body, _ = await publish_status(http, open_gateway, "lobby", headers)
        assert status == ALLOWED, body
        async with http.get(f"{open_gateway.url}/api/admin/workers", headers=headers) as r:
            assert r.status == 403
            assert (await r.json())["code"] == "admin_disabled"
    url = f"{open_gateway.url}/api/admin/rooms/lobby/close"
    async with http.post(url, headers=bearer("admin-tok")) as response:
        assert response.status == 403
    async with http.get(f"{open_gateway.url}/api/bootstrap") as response:
        body = await response.json()
    assert body["authEnabled"] is False


async def test_invalid_room_is_400_before_auth(
    gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{gateway.url}/api/admin/rooms/bad.room/close") as response:
        assert response.status == 400
        assert (await response.json())["code"] == "invalid_room"


async def test_secrets_never_reach_the_log(gateway: GatewayProcess) -> None:
    log = gateway.log()
    assert "aiohttp.access" in log  # the access log is on, so this checks something
    for secret in ("vip-tok", "global-tok", "admin-tok", JWT_SECRET, "turn-shared-secret"):
        assert secret not in log
    for token in REFUSED_JWTS.values():
        assert token not in log
    for headers, *_expected in CREDENTIALS.values():
        for value in headers.values():
            assert value.split()[-1] not in log


# --- CORS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["https://app.example", "http://localhost:3000"])
async def test_cors_allowed_origin(
    gateway: GatewayProcess, http: aiohttp.ClientSession, origin: str
) -> None:
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    for path in ("/api/whip/publish/vip", "/api/rooms", "/api/admin/rooms/vip/close"):
        async with http.options(gateway.url + path, headers=preflight) as response:
            assert response.status == 204, path
            assert response.headers["Access-Control-Allow-Origin"] == origin
            assert response.headers["Access-Control-Allow-Credentials"] == "true"
            assert "Origin" in response.headers.getall("Vary")
            methods = {
                m.strip() for m in response.headers["Access-Control-Allow-Methods"].split(",")
            }
            assert {"POST", "PATCH", "DELETE"} <= methods
            allowed = response.headers["Access-Control-Allow-Headers"].lower()
            for header in ("authorization", "content-type", "if-match", "x-auth-token"):
                assert header in allowed
            exposed = response.headers["Access-Control-Expose-Headers"].lower()
            for header in ("location", "etag", "link"):
                assert header in exposed
    # The real request, even a refused one, carries the headers so the page can read it.
    status, _body, headers = await publish_status(http, gateway, "vip", {"Origin": origin})
    assert status == 401
    assert headers["Access-Control-Allow-Origin"] == origin


@pytest.mark.parametrize("origin", ["https://evil.example", "https://app.example.evil", "null"])
async def test_cors_disallowed_origin_gets_no_cors_headers(
    gateway: GatewayProcess, http: aiohttp.ClientSession, origin: str
) -> None:
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    async with http.options(gateway.url + "/api/whip/publish/vip", headers=preflight) as r:
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]
        assert "Origin" in r.headers.getall("Vary")
    async with http.get(gateway.url + "/api/rooms", headers={"Origin": origin}) as r:
        assert r.status == 200
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]


async def test_cors_star_sends_no_credentials_header(
    open_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    headers = {"Origin": "https://anywhere.example"}
    async with http.get(open_gateway.url + "/api/rooms", headers=headers) as response:
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers


# --- ICE servers: TURN credentials only for callers allowed in the room -----------------------


async def test_bootstrap_turn_credentials_need_room_access(
    gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    url = f"{gateway.url}/api/bootstrap"
    async with http.get(url) as response:
        anonymous = await response.json()
    assert anonymous["authEnabled"] is True
    assert anonymous["features"]["rooms"] is True
    assert all("turn:" not in u for s in anonymous["iceServers"] for u in s["urls"])
    async with http.get(url, params={"room": "vip"}, headers=bearer("global-tok")) as response:
        wrong_room = await response.json()
    assert all("username" not in s for s in wrong_room["iceServers"])
    async with http.get(url, params={"room": "vip"}, headers=bearer("vip-tok")) as response:
        allowed = await response.json()
    turn = allowed["iceServers"][-1]
    assert turn["urls"] == ["turn:turn.example:3478"]
    expiry, _, room = turn["username"].partition(":")
    assert room == "vip" and int(expiry) > time.time() + 3600
    assert turn["credential"] and turn["credential"] != "turn-shared-secret"
    async with http.get(url, params={"room": "bad room"}) as response:
        assert response.status == 400


async def test_options_link_headers_carry_turn_only_when_authorised(
    gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    url = f"{gateway.url}/api/whip/publish/vip"
    async with http.options(url) as response:
        anonymous = response.headers.getall("Link")
    assert anonymous and all("turn:" not in link for link in anonymous)
    async with http.options(url, headers=bearer("vip-tok")) as response:
        links = response.headers.getall("Link")
    turn = [link for link in links if "turn:" in link]
    assert len(turn) == 1 and ":vip" in turn[0] and 'credential="' in turn[0]
