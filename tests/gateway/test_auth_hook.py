"""The external auth hook (AUTH_HOOK_URL) against real gateways and a real hook: an aiohttp
server in the test, on 127.0.0.1, that records every request and answers what the request's
`want` query parameter asks for (the gateway forwards the query to it).

The gateways run without a media worker: an allowed WHIP POST gets 503 `no_worker`, an
allowed WHEP POST 404 `no_room`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from testkit.processes import GatewayProcess, pick_free_port, start_gateway
from tests.support.sdp import OFFER

SDP = {"Content-Type": "application/sdp"}


class Hook:
    """The operator's auth service: answers by the `want` query parameter."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> int:
        app = web.Application()
        app.router.add_post("/auth", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        want = body.get("query", {}).get("want", "allow")
        if want == "slow":
            await asyncio.sleep(1.2)
        statuses = {"allow": 204, "deny": 403, "unauth": 401, "boom": 500, "moved": 302}
        headers = {"Location": "/elsewhere"} if want == "moved" else None
        return web.json_response({"ok": want}, status=statuses.get(want, 200), headers=headers)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    server = Hook()
    yield server
    await server.stop()


async def post(
    http: aiohttp.ClientSession,
    gateway: GatewayProcess,
    action: str,
    room: str,
    want: str,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    kind = "whip/publish" if action == "publish" else "whep/play"
    url = f"{gateway.url}/api/{kind}/{room}?want={want}&x=1"
    async with http.post(url, data=OFFER, headers={**SDP, **(headers or {})}) as response:
        return response.status, await response.json(), dict(response.headers)


async def metric(http: aiohttp.ClientSession, gateway: GatewayProcess, sample: str) -> float:
    async with http.get(gateway.url + "/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    raise AssertionError(f"no {sample} in /metrics")


async def test_hook_decides_publish_and_play(
    hook: Hook, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = await hook.start()
    env = {
        "AUTH_HOOK_URL": f"http://127.0.0.1:{port}/auth",
        "AUTH_HOOK_TIMEOUT": "0.5",
        "AUTH_HOOK_CACHE_TTL": "30",
        "ROOM_TOKENS": "r1:static",  # the hook decides, not the tokens
        "ADMIN_TOKEN": "admin-tok",
    }
    gateway = start_gateway(tmp_path, workers=0, env=env, wait="/healthz")
    try:
        auth = {"Authorization": "Bearer tok", "User-Agent": "test-agent"}
        status, body, _ = await post(http, gateway, "publish", "r1", "allow", auth)
        assert status == 503 and body["code"] == "no_worker", body
        assert hook.requests == [
            {
                "action": "publish",
                "room": "r1",
                "path": "r1",
                "protocol": "whip",
                "client_ip": "127.0.0.1",
                "ip": "127.0.0.1",
                "user_agent": "test-agent",
                "query": {"want": "allow", "x": "1"},
                "token_sha256": hashlib.sha256(b"tok").hexdigest(),
            }
        ]
        # An allow is cached for the same action, room, credential and client...
        assert (await post(http, gateway, "publish", "r1", "allow", auth))[0] == 503
        assert len(hook.requests) == 1
        # ...but not for another action, room or credential.
        assert (await post(http, gateway, "play", "r1", "allow", auth))[0] == 404
        assert hook.requests[-1]["action"] == "play" and hook.requests[-1]["protocol"] == "whep"
        assert (await post(http, gateway, "publish", "r2", "allow", auth))[0] == 503
        assert (await post(http, gateway, "publish", "r1", "allow"))[0] == 503
        assert hook.requests[-1]["token_sha256"] is None
        assert len(hook.requests) == 4

        # Refusals keep the hook's status and are never cached; the static token is no key.
        static = {"Authorization": "Bearer static"}
        for _ in range(2):
            status, body, _ = await post(http, gateway, "publish", "r1", "deny", static)
            assert status == 403 and body["code"] == "forbidden"
            assert "refused" in body["error"] and "publish room 'r1'" in body["error"]
        assert len(hook.requests) == 6
        status, body, headers = await post(http, gateway, "play", "r1", "unauth")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")

        # Failures are 503 with Retry-After: any other status, a redirect, a timeout.
        for want, code in (("boom", "auth_hook_failed"), ("moved", "auth_hook_failed")):
            status, body, headers = await post(http, gateway, "publish", "r1", want)
            assert (status, body["code"]) == (503, code) and "Retry-After" in headers
        started = time.monotonic()
        status, body, headers = await post(http, gateway, "publish", "r1", "slow")
        assert (status, body["code"]) == (503, "auth_hook_timeout") and "Retry-After" in headers
        assert time.monotonic() - started < 2.5

        # The admin API stays local: the hook is not asked.
        asked = len(hook.requests)
        async with http.get(gateway.url + "/api/admin/workers", headers=static) as response:
            assert response.status == 403
        admin = {"Authorization": "Bearer admin-tok"}
        async with http.get(gateway.url + "/api/admin/workers", headers=admin) as response:
            assert response.status == 200
        assert len(hook.requests) == asked

        outcome = 'live_auth_hook_requests_total{outcome="%s"}'
        assert await metric(http, gateway, outcome % "cached") == 1
        assert await metric(http, gateway, outcome % "allow") == 4
        assert await metric(http, gateway, outcome % "deny") == 3
        assert await metric(http, gateway, outcome % "error") == 2
        assert await metric(http, gateway, outcome % "timeout") == 1
        assert await metric(http, gateway, "live_auth_hook_seconds_count") == 10
    finally:
        gateway.stop()


async def test_hook_unreachable_then_sent_the_token(
    hook: Hook, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    port = pick_free_port()  # nothing listens there yet
    env = {
        "AUTH_HOOK_URL": f"http://127.0.0.1:{port}/auth",
        "AUTH_HOOK_SEND_TOKEN": "true",
        "PLAY_OPEN": "true",
    }
    gateway = start_gateway(tmp_path, workers=0, env=env, wait="/healthz")
    try:
        auth = {"X-Auth-Token": "tok"}
        status, body, headers = await post(http, gateway, "publish", "r1", "allow", auth)
        assert (status, body["code"]) == (503, "auth_hook_unreachable") and "Retry-After" in headers
        # PLAY_OPEN: watching needs neither a credential nor the hook.
        assert (await post(http, gateway, "play", "r1", "deny"))[0] == 404
        await hook.start(port)
        assert (await post(http, gateway, "publish", "r1", "allow", auth))[0] == 503
        assert [r["action"] for r in hook.requests] == ["publish"]
        assert hook.requests[0]["token"] == "tok" and "token_sha256" not in hook.requests[0]
        unreachable = 'live_auth_hook_requests_total{outcome="unreachable"}'
        assert await metric(http, gateway, unreachable) == 1
    finally:
        gateway.stop()
