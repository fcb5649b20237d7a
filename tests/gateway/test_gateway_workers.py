"""The gateway with real workers: session flow, failure mapping, placement, registration and
death detection.

Every worker here is a real `python -m sfu` process, spawned by the gateway (--workers N) or
started by hand against it as a remote worker (--connect); every offer is a real aiortc offer.
Worker behaviour is produced from the outside only: offers the worker cannot use, SIGSTOP for
a hung worker, SIGKILL for a dead one, a wrong token or id for a refused one. The one thing a
real worker cannot be made to do, say Hello with another protocol version, uses a raw ZeroMQ
DEALER in that test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import aiohttp
import pytest
from aiortc import RTCPeerConnection
from multidict import CIMultiDict

from ipc import messages as m
from ipc.channel import RemoteFailure, dealer_channel
from testkit.client import new_pc, publisher_offer, viewer_offer
from testkit.processes import (
    GatewayProcess,
    RemoteWorker,
    pick_free_port,
    process_gone,
    start_gateway,
    udp_port_owner,
    wait_sync,
    wait_until,
    worker_id_of,
    worker_pids,
)
from tests.support.clients import spawn_peer
from tests.support.sdp import candidate_ports, only_codec

SDP = {"Content-Type": "application/sdp"}
SDPFRAG = "application/trickle-ice-sdpfrag"
CANDIDATES = (
    "a=mid:0\r\n"
    "a=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host\r\n"
    "a=candidate:2 1 udp 2122194687 198.51.100.2 61765 typ host\r\n"
    "a=end-of-candidates\r\n"
)
REGISTERED = "registered with gateway"  # what a real worker logs once Welcome arrives

StartGateway = Callable[..., GatewayProcess]
StartWorker = Callable[..., RemoteWorker]


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: str

    @property
    def location(self) -> str:
        return self.headers["Location"]

    def code(self) -> str:
        return str(json.loads(self.body)["code"])


class Client:
    """WHIP/WHEP with real aiortc offers; deletes its sessions and closes its peers at the end."""

    def __init__(self, http: aiohttp.ClientSession, gateway: GatewayProcess) -> None:
        self.http = http
        self.gateway = gateway
        self.pcs: list[RTCPeerConnection] = []
        self.locations: list[str] = []

    async def publisher_offer(self, audio: bool = True) -> str:
        pc = new_pc()
        self.pcs.append(pc)
        return await publisher_offer(pc, audio=audio)

    async def viewer_offer(self) -> str:
        pc = new_pc()
        self.pcs.append(pc)
        return await viewer_offer(pc)

    async def post(self, path: str, offer: str) -> Reply:
        async with self.http.post(self.gateway.url + path, data=offer, headers=SDP) as r:
            reply = Reply(r.status, r.headers.copy(), await r.text())
        if reply.status == 201:
            self.locations.append(reply.location)
        return reply

    async def publish(self, room: str, offer: str | None = None) -> Reply:
        return await self.post(f"/api/whip/publish/{room}", offer or await self.publisher_offer())

    async def play(self, room: str, offer: str | None = None) -> Reply:
        return await self.post(f"/api/whep/play/{room}", offer or await self.viewer_offer())

    async def close(self) -> None:
        if self.gateway.process.poll() is None:
            for location in self.locations:
                try:
                    async with self.http.delete(self.gateway.url + location) as r:
                        await r.read()
                except aiohttp.ClientError:
                    pass
        for pc in self.pcs:
            await pc.close()


@pytest.fixture
async def clients(http: aiohttp.ClientSession) -> AsyncIterator[Callable[[GatewayProcess], Client]]:
    made: list[Client] = []

    def make(gateway: GatewayProcess) -> Client:
        made.append(Client(http, gateway))
        return made[-1]

    yield make
    for client in made:
        await client.close()


def registered_count(gateway: GatewayProcess, worker_id: str) -> int:
    return gateway.log().count(f"worker {worker_id} registered")


def start_local_gateway(
    tmp: Path, workers: int, env: dict[str, str] | None = None
) -> GatewayProcess:
    args = ["--bind-addresses", "127.0.0.1"]
    gateway = start_gateway(tmp, workers=workers, args=args, env=env)
    for slot in range(workers):
        worker_id = f"local-{slot}"
        wait_sync(partial(registered_count, gateway, worker_id), 20, f"{worker_id} to register")
    return gateway


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """One gateway with two local workers, shared by the tests that leave nothing behind."""
    gateway = start_local_gateway(tmp_path_factory.mktemp("two"), 2, env={"MAX_SUBS_PER_ROOM": "2"})
    yield gateway
    gateway.stop()


def owner(answer: str, pids: set[int]) -> int:
    """The worker process that holds the UDP sockets of an SDP answer's candidates."""
    ports = candidate_ports(answer)
    assert ports, answer
    owners = {udp_port_owner(port, pids) for port in ports}
    assert len(owners) == 1 and None not in owners, (ports, owners, pids)
    (found,) = owners
    assert found is not None
    return found


async def ready(http: aiohttp.ClientSession, gateway: GatewayProcess, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while True:
        async with http.get(gateway.url + "/readyz") as response:
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway not ready:\n{gateway.log()}")
        await asyncio.sleep(0.05)


async def wait_status(
    http: aiohttp.ClientSession, method: str, url: str, status: int, within: float
) -> float:
    """Repeat a request until it answers `status`; returns how long that took."""
    started = time.monotonic()
    while True:
        async with http.request(method, url) as r:
            if r.status == status:
                return time.monotonic() - started
        assert time.monotonic() - started < within, f"{method} {url} not {status} in {within} s"
        await asyncio.sleep(0.05)


def ice_credentials(offer: str) -> str:
    lines = [
        line for line in offer.split("\r\n") if line.startswith(("a=ice-ufrag:", "a=ice-pwd:"))
    ]
    return "\r\n".join(lines[:2]) + "\r\n"


# --- one gateway, two local workers -------------------------------------------------------


async def test_two_rooms_land_on_two_workers(
    two_workers: GatewayProcess, clients: Callable[[GatewayProcess], Client]
) -> None:
    client = clients(two_workers)
    pids = worker_pids(two_workers)
    assert len(pids) == 2, pids
    first = await client.publish("spread-1")
    second = await client.publish("spread-2")
    assert first.status == second.status == 201, two_workers.log()
    first_owner, second_owner = owner(first.body, pids), owner(second.body, pids)
    assert first_owner != second_owner
    # A room's viewers go to the room's worker.
    viewer = await client.play("spread-1")
    assert viewer.status == 201
    assert owner(viewer.body, pids) == first_owner


async def test_publish_play_trickle_and_delete(
    two_workers: GatewayProcess, clients: Callable[[GatewayProcess], Client]
) -> None:
    gateway, client = two_workers, clients(two_workers)
    http = client.http
    offer = await client.publisher_offer()
    response = await client.publish("live", offer)
    assert response.status == 201, gateway.log()
    assert response.headers["Content-Type"] == "application/sdp"
    assert response.body.startswith("v=0")
    location = response.location
    assert location.startswith("/api/whip/session/") and len(location) > 40
    etag = response.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    assert response.headers.getall("Link") == ['<stun:stun.l.google.com:19302>; rel="ice-server"']

    assert (await client.publish("live")).status == 409

    viewer = await client.play("live")
    assert viewer.status == 201, viewer.body
    assert viewer.location.startswith("/api/whep/session/")

    session_url = gateway.url + location
    frag = {"Content-Type": SDPFRAG, "If-Match": etag}
    async with http.patch(session_url, data=CANDIDATES, headers={"If-Match": etag}) as r:
        assert r.status == 415
    async with http.patch(session_url, data=CANDIDATES, headers={"Content-Type": SDPFRAG}) as r:
        assert r.status == 428
    async with http.patch(session_url, data=CANDIDATES, headers={**frag, "If-Match": '"x"'}) as r:
        assert r.status == 412
    restart = "a=ice-ufrag:new1\r\na=ice-pwd:newpasswordnewpassword\r\n" + CANDIDATES
    # An ICE restart needs an ICE session to restart: this publisher never connected.
    async with http.patch(session_url, data=restart, headers=frag) as r:
        assert r.status == 409
        assert "not connected" in (await r.json())["error"]
    async with http.patch(session_url, data=CANDIDATES, headers={**frag, "If-Match": "*"}) as r:
        assert r.status == 400
        assert "ice-ufrag" in (await r.json())["error"]
    async with http.patch(session_url, data="garbage", headers=frag) as r:
        assert r.status == 400
    # The offer's own credentials are no restart: the worker's peer takes the candidates.
    same_creds = ice_credentials(offer) + CANDIDATES
    async with http.patch(session_url, data=same_creds, headers=frag) as r:
        assert r.status == 204, await r.text()
        assert "ETag" not in r.headers
        assert await r.read() == b""
    # Garbage the gateway can see is its own 400; a candidate that only the worker's ICE
    # parser rejects (rport is not a number) comes back from the worker as bad_candidate.
    for line, code in [
        ("a=candidate:1 1 udp notanumber 192.0.2.1 61764 typ host", "bad_fragment"),
        ("a=candidate:1 1 udp 5 192.0.2.1 61764 typ host raddr 0.0.0.0 rport x", "bad_candidate"),
    ]:
        async with http.patch(session_url, data=f"a=mid:0\r\n{line}\r\n", headers=frag) as r:
            assert r.status == 400
            assert (await r.json())["code"] == code

    async with http.get(session_url) as r:
        assert r.status == 204
    # If-Match is ignored on DELETE (simple-whip-client sends it everywhere).
    async with http.delete(session_url, headers={"If-Match": '"stale"'}) as r:
        assert r.status == 200
    async with http.delete(session_url) as r:
        assert r.status == 404
    # A WHIP session id is not a WHEP session.
    async with http.delete(gateway.url + location.replace("whip", "whep")) as r:
        assert r.status == 404

    # The room lives on while the viewer is there; a new publisher may take it, which the
    # worker allows only if it really closed the first one.
    assert (await client.publish("live")).status == 201


async def test_unusable_offers_are_400_and_leak_nothing(
    two_workers: GatewayProcess, clients: Callable[[GatewayProcess], Client]
) -> None:
    client = clients(two_workers)
    # Valid SDP, but its only video codec is one the worker cannot forward.
    h266 = only_codec(await client.publisher_offer(audio=False), "video", "100 H266/90000")
    response = await client.publish("unusable", h266)
    assert response.status == 400, response.body
    assert response.code() == "bad_offer"
    # Nothing was leaked on either side: the room is free, WHEP finds no room.
    assert (await client.play("unusable")).status == 404
    assert (await client.publish("unusable")).status == 201
    # A WHEP offer that only sends cannot view anything.
    sendonly = await client.play("unusable", await client.publisher_offer())
    assert sendonly.status == 400, sendonly.body
    assert sendonly.code() == "bad_offer"
    assert (await client.play("unusable")).status == 201


async def test_subscriber_limit(
    two_workers: GatewayProcess, clients: Callable[[GatewayProcess], Client]
) -> None:
    client = clients(two_workers)  # MAX_SUBS_PER_ROOM=2
    assert (await client.publish("limited")).status == 201
    assert (await client.play("limited")).status == 201
    assert (await client.play("limited")).status == 201
    third = await client.play("limited")
    assert third.status == 403
    assert third.code() == "subscriber_limit"


# --- a remote worker that hangs or dies -----------------------------------------------------


async def remote_worker_gateway(
    gateway_factory: StartGateway,
    start_worker: StartWorker,
    http: aiohttp.ClientSession,
    *args: str,
) -> tuple[GatewayProcess, RemoteWorker]:
    gateway = gateway_factory(workers=0, args=args, wait=None, own_ipc_dir=True)
    await gateway.wait_healthy()
    worker = start_worker(gateway.ipc_endpoint, "remote-1")
    await worker.wait_output(REGISTERED)
    await ready(http, gateway)
    return gateway, worker


async def test_stalled_worker_keeps_its_rooms_then_dies_after_the_dead_timeout(
    gateway_factory: StartGateway,
    start_worker: StartWorker,
    http: aiohttp.ClientSession,
    clients: Callable[[GatewayProcess], Client],
) -> None:
    gateway, worker = await remote_worker_gateway(
        gateway_factory, start_worker, http, "--ipc-timeout", "0.5", "--worker-dead-timeout", "5"
    )
    client = clients(gateway)
    held = await client.publish("held")
    assert held.status == 201
    offer = await client.publisher_offer()

    os.kill(worker.process.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    hung = await client.publish("hung", offer)
    # The IPC timeout (0.5 s) answers, well before the heartbeat check (1.5 s) would.
    assert hung.status == 503 and hung.code() == "worker_timeout", hung.body
    assert hung.headers["Retry-After"] == "2"
    assert time.monotonic() - stopped < 1.4

    # Late heartbeats make it unresponsive, not dead: its rooms and sessions stay, requests to
    # it fail at once, and no new session is placed on it.
    await wait_until(lambda: "unresponsive" in gateway.log(), 2.5, "the worker to be unresponsive")
    async with http.get(gateway.url + held.location) as r:
        assert r.status == 204
    async with http.get(gateway.url + "/readyz") as r:
        assert r.status == 503
    asked = time.monotonic()
    refused = await client.publish("other")
    assert refused.status == 503 and refused.code() == "no_worker", refused.body
    assert time.monotonic() - asked < 0.4  # at once, not after the IPC timeout

    # A stall shorter than WORKER_DEAD_TIMEOUT costs nothing: the room is still there.
    os.kill(worker.process.pid, signal.SIGCONT)
    await wait_until(lambda: "responsive again" in gateway.log(), 3, "the worker to be back")
    async with http.get(gateway.url + held.location) as r:
        assert r.status == 204
    assert "gateway forgot this worker" not in worker.output()
    # The timed-out publisher was closed once the worker was back: the room is free again.
    again = await client.publish("hung")
    assert again.status == 201, again.body

    # Silent past WORKER_DEAD_TIMEOUT, it is dead: its sessions answer 404.
    os.kill(worker.process.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    await wait_status(http, "GET", gateway.url + held.location, 404, 7.0)
    assert time.monotonic() - stopped > 4.5
    retry = await client.publish("held")
    assert retry.status == 503 and retry.code() == "no_worker"

    # Woken up, it is told to register again, drops its stale sessions and serves again.
    os.kill(worker.process.pid, signal.SIGCONT)
    await worker.wait_output("gateway forgot this worker")
    await ready(http, gateway)
    assert (await client.publish("hung")).status == 201
    assert (await client.publish("held")).status == 201


async def test_killed_remote_worker_is_unresponsive_at_once_and_dropped_when_dead(
    gateway_factory: StartGateway,
    start_worker: StartWorker,
    http: aiohttp.ClientSession,
    clients: Callable[[GatewayProcess], Client],
) -> None:
    gateway, worker = await remote_worker_gateway(
        gateway_factory, start_worker, http, "--worker-dead-timeout", "3"
    )
    client = clients(gateway)
    held = await client.publish("r")
    assert held.status == 201
    os.kill(worker.process.pid, signal.SIGKILL)
    killed = time.monotonic()
    await wait_until(lambda: "unresponsive" in gateway.log(), 2.0, "the worker to be unresponsive")
    async with http.get(gateway.url + "/readyz") as r:
        assert r.status == 503
    retry = await client.publish("r2")
    assert retry.status == 503 and retry.headers["Retry-After"] == "2"
    await wait_status(http, "GET", gateway.url + held.location, 404, 4.0)
    assert time.monotonic() - killed > 2.5


# --- a local worker killed under load -------------------------------------------------------


async def test_killed_worker_loses_only_its_rooms_and_is_replaced(
    tmp_path: Path, http: aiohttp.ClientSession, clients: Callable[[GatewayProcess], Client]
) -> None:
    fps = 15
    gateway = await asyncio.to_thread(start_local_gateway, tmp_path, 2)
    client = clients(gateway)
    publisher_b = viewer_b = None
    try:
        publisher_b = spawn_peer(
            "publish", gateway.url, "b", "--seconds", "12", "--fps", str(fps),
            "--width", "320", "--height", "240", "--audio", "none",
        )  # fmt: skip
        # Room B exists once a WHEP offer to it is no longer 404 (a sendonly one is refused
        # by the worker, so the probe leaves nothing behind).
        probe = await client.publisher_offer()
        deadline = time.monotonic() + 20
        while (await client.play("b", probe)).status == 404:
            assert time.monotonic() < deadline, "publisher B never showed up"
            await asyncio.sleep(0.2)
        viewer_b = spawn_peer("view", gateway.url, "b", "--seconds", "6", "--min-audio-frames", "0")
        viewing_since = time.monotonic()

        # Room A goes to the other, idle worker; its viewer follows it there.
        pids = worker_pids(gateway)
        publisher_a = await client.publish("a")
        viewer_a = await client.play("a")
        assert publisher_a.status == viewer_a.status == 201, gateway.log()
        worker_a = owner(publisher_a.body, pids)
        assert owner(viewer_a.body, pids) == worker_a
        (worker_b,) = pids - {worker_a}
        slot = worker_id_of(worker_a)

        await asyncio.sleep(max(0.0, viewing_since + 3.0 - time.monotonic()))
        os.kill(worker_a, signal.SIGKILL)
        killed = time.monotonic()
        await wait_status(http, "DELETE", gateway.url + publisher_a.location, 404, 2.0)
        await wait_status(
            http, "GET", gateway.url + viewer_a.location, 404, 2.0 - (time.monotonic() - killed)
        )
        async with http.get(gateway.url + "/readyz") as r:
            assert r.status == 200  # the other worker still serves

        # A replacement registers and takes room A (it is the least loaded worker).
        await wait_until(lambda: len(worker_pids(gateway) - {worker_b}) == 1, 10, "a new worker")
        (replacement,) = worker_pids(gateway) - {worker_b}
        assert replacement != worker_a
        await wait_until(lambda: registered_count(gateway, slot) == 2, 10, "its registration")
        await ready(http, gateway)
        again = await client.publish("a")
        assert again.status == 201, again.body
        assert owner(again.body, worker_pids(gateway)) == replacement

        # Room B never stopped: its viewer got frames after the kill, more than the publisher
        # could possibly have sent before it.
        view = await asyncio.to_thread(viewer_b.result, 40)
        published = await asyncio.to_thread(publisher_b.result, 40)
        most_before_kill = fps * (killed - viewing_since)
        assert view["ok"], view
        assert int(view["video_frames"]) > most_before_kill + fps, (view, most_before_kill)
        assert view["delete_status"] == 200
        assert published["ok"] and published["delete_status"] == 200, published
        assert worker_b in worker_pids(gateway)
    finally:
        for process in (publisher_b, viewer_b):
            if process is not None:
                process.kill()
        await client.close()
        gateway.stop()


async def test_graceful_stop_closes_rooms_on_the_worker(
    gateway_factory: StartGateway,
    http: aiohttp.ClientSession,
    clients: Callable[[GatewayProcess], Client],
) -> None:
    gateway = gateway_factory(workers=1, args=["--bind-addresses", "127.0.0.1"], wait=None)
    await gateway.wait_healthy()
    await ready(http, gateway, within=20)
    client = clients(gateway)
    assert (await client.publish("r")).status == 201
    (pid,) = worker_pids(gateway)
    assert gateway.stop() == 0
    log = gateway.log()
    assert "closing 1 rooms" in log
    assert "closing room r:" not in log  # the worker answered Done to CloseRoom
    assert "in room r closed by worker: room closed" in log, log
    await wait_until(lambda: process_gone(pid), 5, "the worker to exit with the gateway")


# --- remote workers over TCP, with a token --------------------------------------------------


@dataclass
class Secured:
    gateway: GatewayProcess
    endpoint: str
    token: str


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    endpoint = f"tcp://127.0.0.1:{pick_free_port()}"
    token = "s3cret"
    gateway = start_gateway(
        tmp_path_factory.mktemp("secured"),
        workers=0,
        env={"WORKER_LISTEN": endpoint, "WORKER_TOKEN": token},
        wait=None,
    )
    up = lambda: "listening on" in gateway.log() or gateway.process.poll() is not None  # noqa: E731
    wait_sync(up, 15, "the gateway to listen")
    assert gateway.process.poll() is None, gateway.log()
    yield Secured(gateway, endpoint, token)
    gateway.stop()


async def test_worker_token_is_required_when_set(
    secured: Secured, start_worker: StartWorker, http: aiohttp.ClientSession
) -> None:
    intruder = start_worker(secured.endpoint, "intruder", "--worker-token", "wrong")
    assert await intruder.wait_exit() == 1
    assert "gateway refused this worker: bad worker token" in intruder.output()
    good = start_worker(secured.endpoint, "good", "--worker-token", secured.token)
    await good.wait_output(REGISTERED)
    await ready(http, secured.gateway)


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ((), "reserved for local workers"),
        # Claims to be a local worker, but the gateway spawned no such process.
        (("--parent-pid", str(os.getpid())), "no local worker 'local-0' with pid"),
    ],
)
async def test_local_worker_ids_are_refused_to_others(
    secured: Secured, start_worker: StartWorker, extra: tuple[str, ...], reason: str
) -> None:
    worker = start_worker(secured.endpoint, "local-0", "--worker-token", secured.token, *extra)
    assert await worker.wait_exit() == 1
    assert reason in worker.output()


async def test_other_protocol_version_is_refused(secured: Secured) -> None:
    # The real worker always says Hello with its own PROTOCOL_VERSION, so an old or future
    # worker cannot be made from it: this one Hello comes from a bare ZeroMQ DEALER instead.
    channel = dealer_channel(secured.endpoint, b"old")
    channel.start()
    hello = m.Hello(
        worker_id="old",
        pid=os.getpid(),
        protocol=999,
        version="old",
        hostname="test",
        token=secured.token,
    )
    try:
        with pytest.raises(RemoteFailure) as refused:
            await channel.request(hello, timeout=5)
    finally:
        await channel.close()
    assert refused.value.code == "refused"
    assert "protocol 999" in refused.value.message
