"""Webhooks against real gateways and a real receiver (an aiohttp server in the test on
127.0.0.1): the events of a room in order, signed; retries after the receiver's 500s; and
a queue that survives a gateway killed with SIGKILL and one stopped with SIGTERM while the
receiver is down.

Sessions are created with real offers (aiortc peers in the test) and never connect: the
events come from the 201s and the DELETEs, so no media is needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection

from common.sidecar import RecordingInfo, write_sidecar
from gateway.webhooks import verify
from testkit.client import new_pc, publisher_offer, viewer_offer
from testkit.processes import GatewayProcess, pick_free_port, start_gateway, wait_until

SECRET = "whsec-test-secret"
SDP = {"Content-Type": "application/sdp"}


def verified_by_the_docs_snippet(secret: str, header: str, body: bytes) -> bool:
    """docs/auth-and-webhooks.md's five lines, as a receiver would write them."""
    t, v1 = (part.split("=", 1)[1] for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, v1) and abs(time.time() - int(t)) < 300


class Receiver:
    """The operator's webhook endpoint: checks each signature, records each attempt."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []  # accepted, in arrival order
        self.attempts: list[str] = []  # Live-Sfu-Delivery of every request
        self.fail_next = 0  # answer 500 to this many requests first
        self.runner: web.AppRunner | None = None

    async def start(self, port: int) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        signature = request.headers["Live-Sfu-Signature"]
        assert verify(SECRET, raw, signature), signature
        assert verified_by_the_docs_snippet(SECRET, signature, raw)
        assert not verify("another secret", raw, signature)
        assert not verify(SECRET, raw + b" ", signature)
        event = json.loads(raw)
        assert request.headers["Live-Sfu-Event"] == event["event"]
        assert request.headers["Live-Sfu-Delivery"] == event["id"]
        assert request.content_type == "application/json"
        self.attempts.append(event["id"])
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=500)
        self.events.append(event)
        return web.Response(status=204)

    def names(self, room: str) -> list[str]:
        return [e["event"] for e in self.events if e["room"] == room]


def webhook_env(port: int, queue: Path) -> dict[str, str]:
    return {
        "WEBHOOK_URLS": f"http://127.0.0.1:{port}/hook",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_QUEUE": str(queue),
        "RECORD_DIR": str(queue.parent / "records"),  # watched for recording events
    }


@pytest.fixture(scope="module")
def receiver_port() -> int:
    return pick_free_port()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, receiver_port: int
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("webhooks")
    env = webhook_env(receiver_port, directory / "queue.sqlite3")
    process = start_gateway(directory, workers=1, env=env)
    yield process
    process.stop()


@pytest.fixture
async def receiver(receiver_port: int) -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start(receiver_port)
    yield server
    await server.stop()


@pytest.fixture
async def pcs() -> AsyncIterator[list[RTCPeerConnection]]:
    made: list[RTCPeerConnection] = []
    yield made
    for pc in made:
        await pc.close()


async def open_session(
    http: aiohttp.ClientSession,
    gateway: GatewayProcess,
    kind: str,
    room: str,
    pcs: list[RTCPeerConnection],
) -> str:
    pc = new_pc()
    pcs.append(pc)
    if kind == "whip":
        offer, path = await publisher_offer(pc), f"/api/whip/publish/{room}"
    else:
        offer, path = await viewer_offer(pc), f"/api/whep/play/{room}"
    async with http.post(gateway.url + path, data=offer, headers=SDP) as response:
        assert response.status == 201, await response.text()
        return gateway.url + response.headers["Location"]


async def delete(http: aiohttp.ClientSession, url: str) -> None:
    async with http.delete(url) as response:
        assert response.status == 200


async def metric(http: aiohttp.ClientSession, gateway: GatewayProcess, sample: str) -> float:
    async with http.get(gateway.url + "/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[-1])
    raise AssertionError(f"no {sample} in /metrics")


async def wait_metric(
    http: aiohttp.ClientSession, gateway: GatewayProcess, sample: str, value: float
) -> None:
    for _ in range(100):
        if await metric(http, gateway, sample) == value:
            return
        await asyncio.sleep(0.05)
    assert await metric(http, gateway, sample) == value


ROOM_LIFE = ["room_started", "publisher_joined", "publisher_left", "room_finished"]


async def test_events_of_a_room_arrive_signed_and_in_order(
    gateway: GatewayProcess,
    receiver: Receiver,
    http: aiohttp.ClientSession,
    pcs: list[RTCPeerConnection],
) -> None:
    publisher = await open_session(http, gateway, "whip", "w1", pcs)
    viewer = await open_session(http, gateway, "whep", "w1", pcs)
    await delete(http, viewer)
    await delete(http, publisher)
    await wait_until(lambda: len(receiver.events) >= 6, 10, "six webhook events")
    assert receiver.names("w1") == [
        "room_started",
        "publisher_joined",
        "viewer_joined",
        "viewer_left",
        "publisher_left",
        "room_finished",
    ]
    started, joined, viewer_joined, viewer_left, left, finished = receiver.events
    assert len({e["id"] for e in receiver.events}) == 6
    assert all(e["created_at"].endswith("Z") for e in receiver.events)
    # The session id is the short one of the logs, never the session URL's secret.
    assert len(joined["session_id"]) == 8 and joined["session_id"] in publisher
    assert publisher.rsplit("/", 1)[1] not in json.dumps(receiver.events)
    assert left["session_id"] == joined["session_id"] and left["connected"] is False
    assert viewer_joined["viewers"] == 1 and viewer_left["viewers"] == 0
    assert finished["duration"] >= 0 and "session_id" not in started
    await wait_metric(http, gateway, "live_webhook_queue_depth", 0)
    delivered = 'live_webhook_deliveries_total{outcome="delivered"}'
    assert await metric(http, gateway, delivered) == 6
    assert await metric(http, gateway, "live_webhook_delivery_seconds_count") == 6


async def test_retried_after_the_receiver_fails(
    gateway: GatewayProcess,
    receiver: Receiver,
    http: aiohttp.ClientSession,
    pcs: list[RTCPeerConnection],
) -> None:
    receiver.fail_next = 2
    await delete(http, await open_session(http, gateway, "whip", "w2", pcs))
    await wait_until(lambda: len(receiver.events) >= 4, 15, "four webhook events")
    assert receiver.names("w2") == ROOM_LIFE
    first = receiver.events[0]["id"]
    # The head of the room's line was tried three times (1 s, then 2 s later); nothing of
    # the room overtook it.
    assert receiver.attempts[:3] == [first, first, first]
    assert len(receiver.attempts) == 6
    failed = 'live_webhook_deliveries_total{outcome="failed"}'
    assert await metric(http, gateway, failed) == 2


async def test_queue_survives_sigkill_and_sigterm(
    http: aiohttp.ClientSession, pcs: list[RTCPeerConnection], tmp_path: Path
) -> None:
    port = pick_free_port()  # the receiver is down until the third gateway
    env = webhook_env(port, tmp_path / "queue.sqlite3")
    depth = "live_webhook_queue_depth"

    # 1. p1 lives and ends, p2 is live when the gateway is killed: 6 events, none sent.
    first = start_gateway(tmp_path, workers=1, env=env)
    try:
        await delete(http, await open_session(http, first, "whip", "p1", pcs))
        await open_session(http, first, "whip", "p2", pcs)
        await wait_metric(http, first, depth, 6)
        await asyncio.sleep(0.3)  # the writer thread commits within milliseconds
        os.killpg(first.process.pid, signal.SIGKILL)
        assert first.process.wait(5) == -signal.SIGKILL
    finally:
        first.stop()

    # 2. The next start ends what the killed one had announced, then stops (SIGTERM) with
    # everything still queued.
    second = start_gateway(tmp_path, workers=0, env=env, wait="/healthz")
    try:
        assert await metric(http, second, depth) == 8
    finally:
        assert second.stop() == 0

    # 3. With the receiver back, the third start delivers all of it, in order per room.
    receiver = Receiver()
    await receiver.start(port)
    third = start_gateway(tmp_path, workers=0, env=env, wait="/healthz")
    try:
        await wait_until(lambda: len(receiver.events) >= 8, 10, "eight webhook events")
        assert receiver.names("p1") == ROOM_LIFE
        assert receiver.names("p2") == ROOM_LIFE
        p2_left, p2_finished = [e for e in receiver.events if e["room"] == "p2"][2:]
        assert p2_left["reason"] == p2_finished["reason"] == "gateway_restart"
        assert len({e["id"] for e in receiver.events}) == 8
        await wait_metric(http, third, depth, 0)
    finally:
        third.stop()
        await receiver.stop()


def recording(name: str, state: str, upload: str = "local", error: str = "") -> RecordingInfo:
    info = RecordingInfo(name, "rr", name.split("_")[1], "video", "video/vp8", state=state)
    info.started_at, info.duration, info.bytes, info.error = 1.0e9, 4.2, 1234, error
    info.upload.state, info.upload.key = upload, ("live/" + name if upload == "uploaded" else "")
    return info


async def test_recording_events_from_the_sidecars(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    write_sidecar(str(records), recording("rr_old_1000.ivf", "complete"))  # there before
    port = pick_free_port()
    receiver = Receiver()
    await receiver.start(port)
    env = webhook_env(port, tmp_path / "queue.sqlite3")
    gateway = start_gateway(tmp_path, workers=0, env=env, wait="/healthz")
    try:
        write_sidecar(str(records), recording("rr_v_1001.ivf", "recording"))
        await asyncio.sleep(0.5)
        write_sidecar(str(records), recording("rr_v_1001.ivf", "complete"))
        await wait_until(lambda: receiver.events, 6, "recording_finished")
        write_sidecar(str(records), recording("rr_v_1001.ivf", "complete", "uploaded"))
        write_sidecar(str(records), recording("rr_b_1002.ivf", "failed", error="disk full"))
        await wait_until(lambda: len(receiver.events) >= 3, 6, "three recording events")
    finally:
        gateway.stop()
    finished, *others = receiver.events
    assert (finished["event"], finished["name"]) == ("recording_finished", "rr_v_1001.ivf")
    assert finished["duration"] == 4.2 and finished["size"] == 1234 and finished["room"] == "rr"
    by_event = {e["event"]: e for e in others}
    assert by_event["recording_uploaded"]["key"] == "live/rr_v_1001.ivf"
    assert by_event["recording_failed"]["error"] == "disk full"
    # A restart neither repeats what was announced nor announces what was there before.
    gateway = start_gateway(tmp_path, workers=0, env=env, wait="/healthz")
    try:
        await asyncio.sleep(1.0)  # the first scan runs at start
    finally:
        gateway.stop()
        await receiver.stop()
    assert len(receiver.events) == 3
    assert "rr_old_1000.ivf" not in json.dumps(receiver.events)
