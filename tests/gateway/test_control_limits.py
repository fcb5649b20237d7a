"""Rate limits and session caps on real gateways.

The buckets refill at 0.01 token/s, so nothing refills during a test however slow the
machine is: what is asserted is the bucket arithmetic, not a timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from multidict import CIMultiDictProxy
from prometheus_client.parser import text_string_to_metric_families

from testkit.client import new_pc, publisher_offer, viewer_offer
from testkit.processes import GatewayProcess, start_gateway

SLOW = {"RATE_LIMIT_RPS": "0.01", "RATE_LIMIT_BURST": "2"}
SDP = {"Content-Type": "application/sdp"}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Rate limited, no trusted proxy: X-Forwarded-For must be ignored."""
    process = start_gateway(tmp_path_factory.mktemp("rl"), workers=0, env=SLOW, wait="/healthz")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """Rate limited behind a trusted proxy (the test itself, on 127.0.0.1)."""
    env = {**SLOW, "TRUSTED_PROXIES": "127.0.0.1/32"}
    process = start_gateway(tmp_path_factory.mktemp("rlp"), workers=0, env=env, wait="/healthz")
    yield process
    process.stop()


async def status_of(
    http: aiohttp.ClientSession, url: str, method: str = "GET", **headers: str
) -> tuple[int, CIMultiDictProxy[str], str]:
    async with http.request(method, url, headers=headers) as response:
        return response.status, response.headers, await response.text()


async def metric(http: aiohttp.ClientSession, gateway: GatewayProcess, name: str) -> float:
    async with http.get(gateway.url + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


async def test_rate_limit_per_client_ignores_spoofed_forwarded_for(
    limited: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    url = limited.url + "/api/rooms"
    assert (await status_of(http, url))[0] == 200
    # A different X-Forwarded-For from an untrusted peer is the same client.
    assert (await status_of(http, url, **{"X-Forwarded-For": "203.0.113.1"}))[0] == 200
    status, headers, body = await status_of(http, url, **{"X-Forwarded-For": "203.0.113.2"})
    assert status == 429, body
    assert int(headers["Retry-After"]) >= 1
    assert '"code": "rate_limited"' in body
    assert headers["Access-Control-Allow-Origin"] == "*"  # a page can read the refusal
    # Every API path shares the bucket, WHIP included (its POST is refused before auth/body).
    assert (await status_of(http, limited.url + "/api/bootstrap"))[0] == 429
    assert (await status_of(http, limited.url + "/api/whip/publish/r", "POST"))[0] == 429
    # Probes, metrics, preflights and session URLs are never limited.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await status_of(http, limited.url + path))[0] != 429, path
    preflight = {"Origin": "https://x.example", "Access-Control-Request-Method": "POST"}
    assert (await status_of(http, url, "OPTIONS", **preflight))[0] == 204
    assert (await status_of(http, limited.url + "/api/whip/session/x", "DELETE"))[0] == 404
    assert await metric(http, limited, "live_http_rate_limited_total") == 3


async def test_rate_limit_behind_trusted_proxy(
    behind_proxy: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    url = behind_proxy.url + "/api/rooms"

    async def as_client(forwarded_for: str) -> int:
        return (await status_of(http, url, **{"X-Forwarded-For": forwarded_for}))[0]

    assert [await as_client("203.0.113.1") for _ in range(3)] == [200, 200, 429]
    # Another client behind the proxy has its own bucket...
    assert await as_client("203.0.113.2") == 200
    # ...and a client cannot escape its bucket by prepending a hop of its own.
    assert await as_client("198.51.100.99, 203.0.113.1") == 429
    # IPv6 clients of one /64 share a bucket; another /64 does not.
    assert await as_client("2001:db8:0:1::1") == 200
    assert await as_client("2001:db8:0:1::2") == 200
    assert await as_client("2001:db8:0:1:ffff::3") == 429
    assert await as_client("2001:db8:0:2::1") == 200
    # The proxy's own requests (no X-Forwarded-For) are the proxy's bucket.
    assert (await status_of(http, url))[0] == 200


# --- caps ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {
        "TRUSTED_PROXIES": "127.0.0.1/32",  # lets the test speak as several clients
        "MAX_SESSIONS_PER_IP": "1",
        "MAX_SESSIONS_PER_WORKER": "2",
        "MAX_PENDING_SESSIONS": "3",
    }
    args = ["--bind-addresses", "127.0.0.1"]
    process = start_gateway(tmp_path_factory.mktemp("caps"), workers=2, args=args, env=env)
    yield process
    process.stop()


@pytest.fixture
async def peer_connections() -> AsyncIterator[list[RTCPeerConnection]]:
    pcs: list[RTCPeerConnection] = []
    yield pcs
    for pc in pcs:
        await pc.close()


async def test_session_caps(
    capped: GatewayProcess, http: aiohttp.ClientSession, peer_connections: list[object]
) -> None:
    async def wait_both_workers() -> None:
        for _ in range(200):
            async with http.get(capped.url + "/metrics") as response:
                text = await response.text()
            if "live_workers 2.0" in text:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("two workers never registered")

    await wait_both_workers()

    async def create(kind: str, room: str, client: str) -> tuple[int, str, str]:
        pc = new_pc()
        peer_connections.append(pc)
        if kind == "whip":
            offer = await publisher_offer(pc)
            path = f"/api/whip/publish/{room}"
        else:
            offer = await viewer_offer(pc)
            path = f"/api/whep/play/{room}"
        headers = {**SDP, "X-Forwarded-For": client}
        async with http.post(capped.url + path, data=offer, headers=headers) as response:
            body = await response.text()
            code = (await response.json())["code"] if response.status >= 400 else ""
            return response.status, code, response.headers.get("Location", body)

    # Nobody connects (the offers' peers never get their answers): all sessions stay pending.
    status, _, first = await create("whip", "r1", "203.0.113.1")
    assert status == 201
    assert (await create("whip", "r2", "203.0.113.1"))[:2] == (429, "too_many_sessions_from_client")
    assert (await create("whep", "r1", "203.0.113.2"))[0] == 201  # r1's worker: 2 sessions
    assert (await create("whep", "r1", "203.0.113.3"))[:2] == (503, "worker_full")
    assert (await create("whip", "r2", "203.0.113.3"))[0] == 201  # the other worker: 3 pending
    assert (await create("whip", "r3", "203.0.113.4"))[:2] == (503, "too_many_pending_sessions")
    # Closing a session frees its place under every cap.
    async with http.delete(capped.url + first) as response:
        assert response.status == 200
    assert (await create("whip", "r3", "203.0.113.4"))[0] == 201
    assert (await create("whip", "r4", "203.0.113.1"))[:2] == (503, "too_many_pending_sessions")

    async with http.get(capped.url + "/metrics") as response:
        families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    refused = {
        s.labels["reason"]: s.value
        for s in families["live_sessions_refused"].samples
        if s.name == "live_sessions_refused_total"
    }
    assert refused == {
        "too_many_sessions_from_client": 1,
        "worker_full": 1,
        "too_many_pending_sessions": 2,
    }
