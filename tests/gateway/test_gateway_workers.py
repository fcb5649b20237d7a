"""The gateway with workers: session flow, failure mapping, registration and death detection.

The workers here are fake_worker.py processes: no media, but the real protocol over the real
ZeroMQ socket, so every gateway code path runs as in production.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable

import aiohttp
import pytest
from gateway_testkit import OFFER, FakeWorker, GatewayProcess, wait_until

SDP = {"Content-Type": "application/sdp"}
SDPFRAG = "application/trickle-ice-sdpfrag"
CANDIDATES = (
    "a=mid:0\r\n"
    "a=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host\r\n"
    "a=candidate:2 1 udp 2122194687 198.51.100.2 61765 typ host\r\n"
    "a=end-of-candidates\r\n"
)

StartGateway = Callable[..., GatewayProcess]
StartWorker = Callable[..., FakeWorker]


async def ready(http: aiohttp.ClientSession, gateway: GatewayProcess, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while True:
        async with http.get(gateway.url + "/readyz") as response:
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway not ready:\n{gateway.log()}")
        await _sleep()


async def _sleep() -> None:
    await asyncio.sleep(0.05)


async def gateway_with_worker(
    start_gateway: StartGateway,
    start_fake_worker: StartWorker,
    http: aiohttp.ClientSession,
    *args: str,
    env: dict[str, str] | None = None,
) -> tuple[GatewayProcess, FakeWorker]:
    gateway = start_gateway("--workers", "0", *args, env=env)
    await gateway.wait_healthy()
    worker = start_fake_worker(gateway.ipc_endpoint, "fake-1")
    await worker.wait_output("registered")
    await ready(http, gateway)
    return gateway, worker


async def publish(
    http: aiohttp.ClientSession, gateway: GatewayProcess, room: str, offer: str = OFFER
) -> aiohttp.ClientResponse:
    async with http.post(f"{gateway.url}/api/whip/publish/{room}", data=offer, headers=SDP) as r:
        await r.read()
        return r


async def play(
    http: aiohttp.ClientSession, gateway: GatewayProcess, room: str
) -> aiohttp.ClientResponse:
    async with http.post(f"{gateway.url}/api/whep/play/{room}", data=OFFER, headers=SDP) as r:
        await r.read()
        return r


async def test_publish_play_trickle_and_delete(
    start_gateway: StartGateway, start_fake_worker: StartWorker, http: aiohttp.ClientSession
) -> None:
    gateway, worker = await gateway_with_worker(start_gateway, start_fake_worker, http)

    response = await publish(http, gateway, "live")
    assert response.status == 201, gateway.log()
    assert response.headers["Content-Type"] == "application/sdp"
    location = response.headers["Location"]
    assert location.startswith("/api/whip/session/") and len(location) > 40
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert response.headers.getall("Link") == ['<stun:stun.l.google.com:19302>; rel="ice-server"']

    assert (await publish(http, gateway, "live")).status == 409

    viewer = await play(http, gateway, "live")
    assert viewer.status == 201
    assert viewer.headers["Location"].startswith("/api/whep/session/")

    session_url = gateway.url + location
    frag = {"Content-Type": SDPFRAG, "If-Match": etag}
    async with http.patch(session_url, data=CANDIDATES, headers={"If-Match": etag}) as r:
        assert r.status == 415
    async with http.patch(session_url, data=CANDIDATES, headers={"Content-Type": SDPFRAG}) as r:
        assert r.status == 428
    async with http.patch(session_url, data=CANDIDATES, headers={**frag, "If-Match": '"x"'}) as r:
        assert r.status == 412
    restart = "a=ice-ufrag:new1\r\na=ice-pwd:newpasswordnewpassword\r\n" + CANDIDATES
    async with http.patch(session_url, data=restart, headers=frag) as r:
        assert r.status == 422
        assert "ICE restart is not supported" in (await r.json())["error"]
    async with http.patch(session_url, data=CANDIDATES, headers={**frag, "If-Match": "*"}) as r:
        assert r.status == 422
    async with http.patch(session_url, data="garbage", headers=frag) as r:
        assert r.status == 400
    same_creds = "a=ice-ufrag:cli1\r\na=ice-pwd:clientpasswordclientpass\r\n" + CANDIDATES
    async with http.patch(session_url, data=same_creds, headers=frag) as r:
        assert r.status == 204
        assert "ETag" not in r.headers
        assert await r.read() == b""
    await worker.wait_output("candidates")
    assert " 2 0 True" in worker.output()  # two candidates, mid 0, end-of-candidates

    async with http.get(session_url) as r:
        assert r.status == 204
    # If-Match is ignored on DELETE (simple-whip-client sends it everywhere).
    async with http.delete(session_url, headers={"If-Match": '"stale"'}) as r:
        assert r.status == 200
    await worker.wait_output("closed ")
    async with http.delete(session_url) as r:
        assert r.status == 404
    # A WHIP session id is not a WHEP session.
    async with http.delete(gateway.url + location.replace("whip", "whep")) as r:
        assert r.status == 404

    # The room lives on while the viewer is there; a new publisher may take it.
    assert (await publish(http, gateway, "live")).status == 201


async def test_worker_failures_map_to_http_and_free_the_room(
    start_gateway: StartGateway, start_fake_worker: StartWorker, http: aiohttp.ClientSession
) -> None:
    gateway, _worker = await gateway_with_worker(start_gateway, start_fake_worker, http)
    for code, status in [
        ("bad_offer", 400),
        ("publisher_exists", 409),
        ("no_room", 404),
        ("overloaded", 503),
        ("internal", 503),
    ]:
        response = await publish(http, gateway, "r", OFFER + f"a=x-fail:{code}\r\n")
        assert response.status == status, code
        if status == 503:
            assert response.headers["Retry-After"] == "2"
    # Nothing was leaked by the failures: the room is free, WHEP finds no room.
    assert (await play(http, gateway, "r")).status == 404
    assert (await publish(http, gateway, "r")).status == 201


async def test_subscriber_limit(
    start_gateway: StartGateway, start_fake_worker: StartWorker, http: aiohttp.ClientSession
) -> None:
    gateway, _ = await gateway_with_worker(
        start_gateway, start_fake_worker, http, env={"MAX_SUBS_PER_ROOM": "2"}
    )
    assert (await publish(http, gateway, "r")).status == 201
    assert (await play(http, gateway, "r")).status == 201
    assert (await play(http, gateway, "r")).status == 201
    third = await play(http, gateway, "r")
    assert third.status == 403


async def test_worker_timeout_answers_503_and_releases_the_room(
    start_gateway: StartGateway, start_fake_worker: StartWorker, http: aiohttp.ClientSession
) -> None:
    gateway, _ = await gateway_with_worker(
        start_gateway, start_fake_worker, http, "--ipc-timeout", "0.5"
    )
    slow = await publish(http, gateway, "r", OFFER + "a=x-delay:1.5\r\n")
    assert slow.status == 503
    assert (await publish(http, gateway, "r")).status == 201


@pytest.mark.parametrize("how", [signal.SIGSTOP, signal.SIGKILL])
async def test_dead_worker_is_dropped_within_two_seconds(
    start_gateway: StartGateway,
    start_fake_worker: StartWorker,
    http: aiohttp.ClientSession,
    how: signal.Signals,
) -> None:
    gateway, worker = await gateway_with_worker(start_gateway, start_fake_worker, http)
    response = await publish(http, gateway, "r")
    session_url = gateway.url + response.headers["Location"]
    os.kill(worker.process.pid, how)
    started = time.monotonic()
    while True:
        async with http.get(session_url) as r:
            if r.status == 404:
                break
        assert time.monotonic() - started < 2.0, "session still there 2 s after the worker died"
        await _sleep()
    async with http.get(gateway.url + "/readyz") as r:
        assert r.status == 503
    assert (await publish(http, gateway, "r")).status == 503
    if how == signal.SIGSTOP:
        # Woken up, it is told to register again and serves again.
        os.kill(worker.process.pid, signal.SIGCONT)
        await worker.wait_output("reregister")
        await ready(http, gateway)
        assert (await publish(http, gateway, "r")).status == 201


async def test_worker_token_is_required_when_set(
    start_gateway: StartGateway, start_fake_worker: StartWorker, http: aiohttp.ClientSession
) -> None:
    gateway = start_gateway("--workers", "0", env={"WORKER_TOKEN": "s3cret"})
    await gateway.wait_healthy()
    intruder = start_fake_worker(gateway.ipc_endpoint, "intruder")
    await wait_until(lambda: intruder.process.poll() is not None, 10, "refused worker to exit")
    assert intruder.process.returncode == 3 and "bad worker token" in intruder.output()
    good = start_fake_worker(gateway.ipc_endpoint, "good", "--token", "s3cret")
    await good.wait_output("registered")
    await ready(http, gateway)


@pytest.mark.parametrize(
    ("worker_id", "extra", "reason"),
    [
        ("old", ("--protocol", "999"), "protocol 999"),
        ("local-0", (), "reserved for local workers"),
    ],
)
async def test_bad_hello_is_refused(
    bare_gateway: GatewayProcess,
    start_fake_worker: StartWorker,
    worker_id: str,
    extra: tuple[str, ...],
    reason: str,
) -> None:
    worker = start_fake_worker(bare_gateway.ipc_endpoint, worker_id, *extra)
    await wait_until(lambda: worker.process.poll() is not None, 10, "refused worker to exit")
    assert reason in worker.output()


async def test_graceful_stop_closes_rooms_and_refuses_new_sessions(
    start_gateway: StartGateway, start_fake_worker: StartWorker, http: aiohttp.ClientSession
) -> None:
    gateway, worker = await gateway_with_worker(start_gateway, start_fake_worker, http)
    assert (await publish(http, gateway, "r")).status == 201
    assert gateway.stop() == 0
    assert "closed room r" in worker.output()
