"""Spreading a big room's viewers over local workers (the shared-memory media plane, gateway
side): the placement policy of the Directory, the home and edges the registry tells the
workers about (OpenSession.home, FollowRoom, CloseRoom), what /api/rooms and /metrics show,
and the two settings.

The registry and HTTP tests run the gateway's real Registry and aiohttp app in this process,
against fake workers that speak the real protocol over real ZeroMQ sockets (ipc:// in a
temp dir): a fake worker is the only way to see exactly which request reached which worker,
independently of the media workers' own progress.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import GatewayConfig, load_config
from gateway.http.app import make_app
from gateway.metrics import REGISTRY_KEY, TrafficTotals, setup_metrics
from gateway.placement.directory import (
    Directory,
    NoLiveWorker,
    SessionEntry,
    WorkerFull,
    WorkerInfo,
)
from gateway.placement.registry import Registry
from ipc import messages as m
from ipc.channel import Channel, dealer_channel, router_channel
from testkit.processes import run_gateway_cli

OFFER = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ice-ufrag:uf\r\na=ice-pwd:pw\r\n"
SDP = {"Content-Type": "application/sdp"}
ADMIN_TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# --- the placement policy ---------------------------------------------------------------------


def _directory(
    *workers: str, spread: bool = True, threshold: int = 100, remote: tuple[str, ...] = ()
) -> Directory:
    directory = Directory(spread_rooms=spread, spread_threshold=threshold)
    for worker_id in workers:
        _add(directory, worker_id)
    for worker_id in remote:
        _add(directory, worker_id, local=False)
    return directory


def _add(directory: Directory, worker_id: str, local: bool = True) -> WorkerInfo:
    worker = WorkerInfo(worker_id, local, 1, "host", 0.0)
    directory.add_worker(worker)
    return worker


def _publish(directory: Directory, room: str, session_id: str) -> SessionEntry:
    return directory.reserve_publisher(room, session_id, '"e"', "u", "p")


def _view(directory: Directory, room: str, session_id: str) -> SessionEntry:
    return directory.reserve_subscriber(room, session_id, '"e"', "u", "p", 0)


def _placed(session: SessionEntry) -> tuple[str, str]:
    return session.worker_id, session.home


def test_viewers_stay_home_below_the_threshold_then_go_to_the_least_loaded_local_worker() -> None:
    directory = _directory("local-0", "local-1", "local-2", threshold=3)
    assert _publish(directory, "r", "pub").worker_id == "local-0"
    assert directory.rooms["r"].home == "local-0"
    # The home holds 1, then 2 sessions: below 3, viewers go home (home="" for them).
    assert _placed(_view(directory, "r", "v1")) == ("local-0", "")
    assert _placed(_view(directory, "r", "v2")) == ("local-0", "")
    # 3 sessions on the home: the next viewers go to the least loaded local worker, and are
    # told the home they read from.
    predicted = directory.worker_for_room("r", "subscriber")
    assert _placed(_view(directory, "r", "v3")) == ("local-1", "local-0")
    assert predicted == "local-1"  # what the per-worker cap check counts is where it goes
    assert _placed(_view(directory, "r", "v4")) == ("local-2", "local-0")
    assert _placed(_view(directory, "r", "v5")) == ("local-1", "local-0")
    assert directory.workers_of_room("r") == {"local-0", "local-1", "local-2"}
    # The publisher's place is its home, whatever the threshold.
    assert directory.worker_for_room("r", "publisher") == "local-0"


def test_the_threshold_counts_the_sessions_of_every_room_on_the_home() -> None:
    directory = _directory("local-0", threshold=2)
    _publish(directory, "a", "pub-a")
    _publish(directory, "b", "pub-b")  # the only worker: both rooms are homed on local-0
    _add(directory, "local-1")
    # Room a has one session on its home, but the home holds two (a's and b's).
    assert _placed(_view(directory, "a", "v")) == ("local-1", "local-0")


def test_ties_go_to_the_home() -> None:
    directory = _directory("local-1", threshold=0)
    _publish(directory, "r", "pub")
    _add(directory, "local-0")  # sorts first: it would win a tie decided by id
    assert _placed(_view(directory, "r", "v1")) == ("local-0", "local-1")
    # One session each, same cpu: the home.
    assert _placed(_view(directory, "r", "v2")) == ("local-1", "")
    assert _placed(_view(directory, "r", "v3")) == ("local-0", "local-1")


def test_cpu_breaks_ties_between_edges() -> None:
    directory = _directory("local-0", "local-1", "local-2", threshold=1)
    _publish(directory, "r", "pub")
    directory.workers["local-1"].cpu = 0.9
    directory.workers["local-2"].cpu = 0.1
    assert _placed(_view(directory, "r", "v")) == ("local-2", "local-0")


def test_a_remote_home_never_spreads() -> None:
    directory = _directory(remote=("remote-a",), threshold=0)
    _publish(directory, "r", "pub")
    _add(directory, "local-0")
    assert directory.rooms["r"].home == "remote-a"
    viewers = [_view(directory, "r", f"v{i}") for i in range(3)]
    assert {_placed(v) for v in viewers} == {("remote-a", "")}


def test_remote_workers_are_never_edges() -> None:
    directory = _directory("local-0", threshold=0)
    _publish(directory, "r", "pub")
    _add(directory, "remote-a", local=False)  # idle, but on another host
    viewers = [_view(directory, "r", f"v{i}") for i in range(3)]
    assert {_placed(v) for v in viewers} == {("local-0", "")}


def test_spread_rooms_off_keeps_every_viewer_on_the_home() -> None:
    directory = _directory("local-0", "local-1", spread=False, threshold=0)
    _publish(directory, "r", "pub")
    viewers = [_view(directory, "r", f"v{i}") for i in range(4)]
    assert {_placed(v) for v in viewers} == {("local-0", "")}


def test_unresponsive_workers_are_not_edges() -> None:
    directory = _directory("local-0", "local-1", "local-2", threshold=0)
    _publish(directory, "r", "pub")
    directory.workers["local-1"].responsive = False
    assert _placed(_view(directory, "r", "v1")) == ("local-2", "local-0")
    assert _placed(_view(directory, "r", "v2")) == ("local-0", "")
    assert "local-1" not in directory.workers_of_room("r")


def test_a_full_home_spills_over_below_the_threshold_and_full_edges_are_refused() -> None:
    directory = _directory("local-0", "local-1", threshold=100)
    _publish(directory, "r", "pub")
    directory.workers["local-0"].session_capacity = 2
    directory.workers["local-1"].session_capacity = 1
    assert _placed(_view(directory, "r", "v1")) == ("local-0", "")
    # The home has no port left: a viewer goes elsewhere rather than being refused.
    assert _placed(_view(directory, "r", "v2")) == ("local-1", "local-0")
    with pytest.raises(WorkerFull):
        _view(directory, "r", "v3")
    assert directory.worker_for_room("r", "subscriber") is None
    assert "v3" not in directory.sessions and "v3" not in directory.rooms["r"].subscribers


def test_without_spreading_a_full_home_refuses() -> None:
    directory = _directory("local-0", "local-1", spread=False)
    _publish(directory, "r", "pub")
    directory.workers["local-0"].session_capacity = 1
    with pytest.raises(WorkerFull):
        _view(directory, "r", "v")


def test_no_responsive_local_worker_means_no_live_worker() -> None:
    directory = _directory("local-0", "local-1", threshold=0)
    _publish(directory, "r", "pub")
    for worker in directory.workers.values():
        worker.responsive = False
    with pytest.raises(NoLiveWorker):
        _view(directory, "r", "v")


def _room_with_an_edge() -> Directory:
    """Room r homed on local-0 (publisher and one viewer there), one viewer on edge local-1;
    room solo only on local-0."""
    directory = _directory("local-0", "local-1", threshold=2)
    _publish(directory, "r", "pub")
    _publish(directory, "solo", "pub-solo")  # local-1: the least loaded
    assert directory.rooms["solo"].home == "local-1"
    assert _placed(_view(directory, "r", "home-viewer")) == ("local-0", "")
    assert _placed(_view(directory, "r", "edge-viewer")) == ("local-1", "local-0")
    return directory


def test_the_death_of_a_home_keeps_its_rooms_that_have_viewers_elsewhere() -> None:
    directory = _room_with_an_edge()
    _publish(directory, "gone", "pub-gone")  # local-0: it holds 2 + 1 rooms, local-1 2 + 1
    assert directory.rooms["gone"].home == "local-0"
    dropped = directory.remove_worker("local-0")
    assert sorted(s.session_id for s in dropped) == ["home-viewer", "pub", "pub-gone"]
    room = directory.rooms["r"]
    assert room.home is None and room.publisher is None
    assert room.subscribers == {"edge-viewer"}
    assert "gone" not in directory.rooms  # no session left anywhere
    assert directory.rooms["solo"].home == "local-1"  # another worker's room: untouched
    assert set(directory.sessions) == {"edge-viewer", "pub-solo"}
    # Its last viewer gone, the homeless room goes as any other.
    directory.remove_session("edge-viewer")
    assert "r" not in directory.rooms


def test_a_viewer_of_a_homeless_room_goes_to_a_worker_that_has_the_room() -> None:
    directory = _directory("local-0", "local-1", "local-2", threshold=1)
    _publish(directory, "r", "pub")
    assert _placed(_view(directory, "r", "v1")) == ("local-1", "local-0")
    assert _placed(_view(directory, "r", "v2")) == ("local-2", "local-0")
    assert _placed(_view(directory, "r", "v3")) == ("local-0", "")  # a tie: the home
    assert _placed(_view(directory, "r", "v4")) == ("local-1", "local-0")
    directory.remove_worker("local-0")
    _add(directory, "local-3")  # idle, but without the room
    # The least loaded worker that has the room (local-2 holds 1, local-1 2), told no home.
    assert _placed(_view(directory, "r", "v5")) == ("local-2", "")
    assert _placed(_view(directory, "r", "v6")) == ("local-1", "")  # 2 each: by id
    directory.workers["local-1"].responsive = False
    assert _placed(_view(directory, "r", "v7")) == ("local-2", "")
    directory.workers["local-2"].session_capacity = 3
    with pytest.raises(WorkerFull):
        _view(directory, "r", "v8")
    assert "local-3" not in directory.workers_of_room("r")


def test_a_publisher_of_a_homeless_room_makes_a_new_local_home() -> None:
    directory = _room_with_an_edge()
    directory.remove_worker("local-0")
    # Idle, and first by id, but its rings are on another host: the edge could not read them.
    _add(directory, "a-remote", local=False)
    _add(directory, "local-2")  # idle and local
    publisher = _publish(directory, "r", "pub2")
    assert _placed(publisher) == ("local-2", "")
    assert directory.rooms["r"].home == "local-2" and directory.rooms["r"].publisher == "pub2"
    assert directory.workers_of_room("r") == {"local-1", "local-2"}
    # Viewers follow the new home: home below the threshold (2) and on a tie, then edges that
    # are told of it.
    assert _placed(_view(directory, "r", "v1")) == ("local-2", "")
    assert _placed(_view(directory, "r", "v2")) == ("local-2", "")  # 2 sessions each
    assert _placed(_view(directory, "r", "v3")) == ("local-1", "local-2")


def test_a_homeless_room_without_a_local_worker_refuses_a_publisher() -> None:
    directory = _room_with_an_edge()
    directory.remove_worker("local-0")
    directory.workers["local-1"].responsive = False
    _add(directory, "remote-a", local=False)
    with pytest.raises(NoLiveWorker):
        _publish(directory, "r", "pub2")
    assert directory.rooms["r"].home is None and directory.rooms["r"].publisher is None


# --- the registry, against fake workers over real ZeroMQ ------------------------------------


@dataclass
class FakeWorker:
    """A worker as the gateway sees it: registers over its own DEALER, records every request,
    answers OpenSession with an SDP answer and the rest with Done, or all with `failure`."""

    worker_id: str
    channel: Channel
    requests: list[m.Message] = field(default_factory=list)
    failure: m.Failure | None = None

    async def serve(self, peer: bytes, body: m.Message) -> m.Message:
        self.requests.append(body)
        if self.failure is not None:
            return self.failure
        if isinstance(body, m.OpenSession):
            return m.SessionAnswer(f"v=0\r\no=- {self.worker_id}\r\n", "wu", "wp")
        return m.Done()

    def received(self, kind: type[m.Message]) -> list[Any]:
        return [r for r in self.requests if isinstance(r, kind)]


@dataclass
class Plane:
    """A real Registry (and its Directory) with fake workers registered over ZeroMQ."""

    endpoint: str
    config: GatewayConfig
    registry: Registry
    workers: dict[str, FakeWorker] = field(default_factory=dict)

    @property
    def directory(self) -> Directory:
        return self.registry.directory

    async def add(self, worker_id: str, local: bool = True) -> FakeWorker:
        channel = dealer_channel(self.endpoint, worker_id.encode())
        worker = FakeWorker(worker_id, channel)
        channel.on_request = worker.serve
        channel.start()
        pid = _local_pid(worker_id) or 1
        hello = m.Hello(worker_id, pid, m.PROTOCOL_VERSION, "test", "host", local=local)
        welcome = await channel.request(hello, timeout=5)
        assert isinstance(welcome, m.Welcome)
        self.workers[worker_id] = worker
        return worker


def _local_pid(worker_id: str) -> int | None:
    """The pid the fake local worker `local-N` says Hello with, and the registry expects."""
    prefix, _, index = worker_id.partition("-")
    return 1000 + int(index) if prefix == "local" and index.isdigit() else None


def _config(threshold: int) -> GatewayConfig:
    return load_config(
        ["--workers", "0"],
        environ={
            # Fake workers do not heartbeat: nothing here may depend on liveness timing.
            "WORKER_TIMEOUT": "600",
            "WORKER_DEAD_TIMEOUT": "600",
            "IPC_TIMEOUT": "5",
            "RATE_LIMIT_RPS": "0",
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "SPREAD_THRESHOLD": str(threshold),
        },
    )


@pytest.fixture
async def make_plane(tmp_path: Path) -> AsyncIterator[Callable[[int], Plane]]:
    made: list[Plane] = []

    def make(threshold: int) -> Plane:
        config = _config(threshold)
        endpoint = f"ipc://{tmp_path}/gateway-{len(made)}.sock"
        directory = Directory(config.workers.spread_rooms, config.workers.spread_threshold)
        registry = Registry(config, router_channel([endpoint]), directory)
        plane = Plane(endpoint, config, registry)
        registry.local_pid_of = _local_pid
        registry.start()
        made.append(plane)
        return plane

    yield make
    for plane in made:
        for worker in plane.workers.values():
            await worker.channel.close()
        await plane.registry.stop()


async def _open(plane: Plane, kind: m.SessionKind, room: str, session_id: str) -> SessionEntry:
    directory = plane.directory
    if kind == "publisher":
        session = directory.reserve_publisher(room, session_id, '"e"', "u", "p")
    else:
        session = directory.reserve_subscriber(room, session_id, '"e"', "u", "p", 0)
    await plane.registry.open_session(session, OFFER)
    return session


async def test_an_edge_viewer_is_opened_with_its_home(
    make_plane: Callable[[int], Plane],
) -> None:
    plane = make_plane(1)
    home, edge = await plane.add("local-0"), await plane.add("local-1")
    await _open(plane, "publisher", "r", "pub")
    viewer = await _open(plane, "subscriber", "r", "v1")
    assert viewer.worker_id == "local-1"
    (opened_home,) = home.received(m.OpenSession)
    assert (opened_home.kind, opened_home.home) == ("publisher", "")
    (opened_edge,) = edge.received(m.OpenSession)
    assert (opened_edge.kind, opened_edge.room, opened_edge.home) == ("subscriber", "r", "local-0")
    # Tie: the next one goes to the home, without a home of its own.
    await _open(plane, "subscriber", "r", "v2")
    assert [o.home for o in home.received(m.OpenSession)] == ["", ""]


async def test_follow_room_reaches_every_live_edge_and_never_the_home(
    make_plane: Callable[[int], Plane], caplog: pytest.LogCaptureFixture
) -> None:
    plane = make_plane(1)
    home = await plane.add("local-0")
    edges = [await plane.add(f"local-{n}") for n in (1, 2, 3)]
    bystander = await plane.add("local-4")
    await _open(plane, "publisher", "r", "pub")
    for n in range(3):
        assert (await _open(plane, "subscriber", "r", f"v{n}")).worker_id == f"local-{n + 1}"
    await _open(plane, "publisher", "other", "pub-other")
    assert plane.directory.rooms["other"].home == "local-4"
    # A new publisher of r (its home again) after the first one left.
    plane.directory.remove_session("pub")
    await _open(plane, "publisher", "r", "pub2")
    assert plane.directory.rooms["r"].home == "local-0"
    edges[1].failure = m.Failure("internal", "edge broke")
    plane.directory.workers["local-3"].responsive = False
    with caplog.at_level(logging.INFO, logger="gateway.placement.registry"):
        await plane.registry.follow_room("r")  # a failing edge raises nothing
    assert edges[0].received(m.FollowRoom) == [m.FollowRoom("r", "local-0")]
    assert edges[1].received(m.FollowRoom) == [m.FollowRoom("r", "local-0")]
    assert edges[2].received(m.FollowRoom) == []  # unresponsive: not asked
    assert home.received(m.FollowRoom) == [] and bystander.received(m.FollowRoom) == []
    assert "following room r at local-0: worker local-2: internal: edge broke" in caplog.text
    assert "local-3" not in caplog.text  # not even tried


async def test_after_the_home_died_the_new_publisher_is_followed_from_the_new_home(
    make_plane: Callable[[int], Plane],
) -> None:
    plane = make_plane(1)
    await plane.add("local-0")
    edge_a, edge_b = await plane.add("local-1"), await plane.add("local-2")
    await _open(plane, "publisher", "r", "pub")
    await _open(plane, "subscriber", "r", "v1")  # local-1
    await _open(plane, "subscriber", "r", "v2")  # local-2
    plane.registry.declare_dead("local-0", "test")
    room = plane.directory.rooms["r"]
    assert room.home is None and room.subscribers == {"v1", "v2"}
    # The least loaded local worker (one session each: by id) becomes the home.
    assert (await _open(plane, "publisher", "r", "pub2")).worker_id == "local-1"
    assert room.home == "local-1"
    await plane.registry.follow_room("r")
    assert edge_b.received(m.FollowRoom) == [m.FollowRoom("r", "local-1")]
    assert edge_a.received(m.FollowRoom) == []


async def test_close_room_reaches_its_home_and_every_edge(
    make_plane: Callable[[int], Plane], caplog: pytest.LogCaptureFixture
) -> None:
    plane = make_plane(1)
    home = await plane.add("local-0")
    edge_a, edge_b = await plane.add("local-1"), await plane.add("local-2")
    bystander = await plane.add("local-3")
    await _open(plane, "publisher", "r", "pub")
    for n in range(2):
        await _open(plane, "subscriber", "r", f"v{n}")  # local-1, local-2
    await _open(plane, "publisher", "other", "pub-other")  # local-3
    # The publisher left: the home holds no session of r, and is still told to close it.
    plane.directory.remove_session("pub")
    assert plane.directory.workers_of_room("r") == {"local-1", "local-2"}
    edge_a.failure = m.Failure("internal", "cannot close")
    with caplog.at_level(logging.INFO, logger="gateway.placement.registry"):
        await plane.registry.close_room("r")
    for worker in (home, edge_a, edge_b):
        assert worker.received(m.CloseRoom) == [m.CloseRoom("r")], worker.worker_id
    assert bystander.received(m.CloseRoom) == []
    assert "closing room r: worker local-1: internal: cannot close" in caplog.text


# --- the HTTP surface, in process, over the same fake workers ---------------------------------


async def _until(check: Callable[[], bool], what: str, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_http_spreads_viewers_and_shows_them_per_worker(
    make_plane: Callable[[int], Plane],
) -> None:
    plane = make_plane(1)
    home, edge = await plane.add("local-0"), await plane.add("local-1")
    async with TestClient(TestServer(make_app(plane.config, plane.registry))) as http:

        async def post(path: str) -> str:
            async with http.post(path, data=OFFER, headers=SDP) as r:
                assert r.status == 201, await r.text()
                return r.headers["Location"]

        publisher = await post("/api/whip/publish/big")
        for _ in range(3):
            await post("/api/whep/play/big")  # local-1 (edge), local-0 (tie), local-1
        assert [o.home for o in edge.received(m.OpenSession)] == ["local-0", "local-0"]
        assert [o.home for o in home.received(m.OpenSession)] == ["", ""]

        async with http.get("/api/rooms") as r:
            (room,) = await r.json()
        assert room["worker"] == room["home"] == "local-0"
        assert room["subscribers"] == 3
        assert room["viewersPerWorker"] == {"local-0": 1, "local-1": 2}
        async with http.get("/api/admin/workers", headers=ADMIN) as r:
            listed = {w["id"]: w for w in await r.json()}
        assert listed["local-1"]["rooms"] == ["big"] and listed["local-1"]["sessions"] == 2

        # A new publisher of the room: its edge is told, the home is not.
        async with http.delete(publisher) as r:
            assert r.status == 200
        await post("/api/whip/publish/big")
        await _until(lambda: bool(edge.received(m.FollowRoom)), "FollowRoom")
        assert edge.received(m.FollowRoom) == [m.FollowRoom("big", "local-0")]
        assert home.received(m.FollowRoom) == []

        async with http.post("/api/admin/rooms/big/close", headers=ADMIN) as r:
            assert r.status == 200
            assert await r.json() == {"closed": "big", "sessions": 4}
        assert home.received(m.CloseRoom) == edge.received(m.CloseRoom) == [m.CloseRoom("big")]
        assert plane.directory.rooms == {} and plane.directory.sessions == {}


async def test_http_rooms_of_a_homeless_room(make_plane: Callable[[int], Plane]) -> None:
    plane = make_plane(0)
    await plane.add("local-0")
    await plane.add("local-1")
    await _open(plane, "publisher", "r", "pub")
    await _open(plane, "subscriber", "r", "v1")  # threshold 0: local-1, the least loaded
    plane.registry.declare_dead("local-0", "test")
    async with TestClient(TestServer(make_app(plane.config, plane.registry))) as http:
        async with http.get("/api/rooms") as r:
            (room,) = await r.json()
    assert room["worker"] is None and room["home"] is None
    assert room["hasPublisher"] is False and room["viewersPerWorker"] == {"local-1": 1}


# --- metrics ------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _heartbeat(rooms: list[m.RoomStats], **fields: Any) -> m.Heartbeat:
    return m.Heartbeat(
        rooms=[r.name for r in rooms if not r.closed],
        sessions=1,
        forwarded_packets_per_s=0.0,
        cpu=0.0,
        room_stats=rooms,
        **fields,
    )


def _room(name: str, packets_out: int, tracks: list[tuple[str, str]] | None = None) -> m.RoomStats:
    return m.RoomStats(name, "connected", tracks or [], 1, packets_out=packets_out)


def _worker(worker_id: str, pid: int) -> WorkerInfo:
    return WorkerInfo(worker_id, True, pid, "host", 0.0)


def test_room_counters_sum_over_the_home_and_its_edges() -> None:
    totals = TrafficTotals(clock=FakeClock())
    totals.observe(_worker("local-0", 1), _heartbeat([_room("big", 100)]))
    totals.observe(_worker("local-1", 2), _heartbeat([_room("big", 40)]))
    totals.observe(_worker("local-0", 1), _heartbeat([_room("big", 150)]))
    totals.observe(_worker("local-1", 2), _heartbeat([_room("big", 70)]))
    packets_out = m.Counters.__struct_fields__.index("packets_out")
    assert totals.rooms["big"].values[packets_out] == 150 + 70
    # The edge restarts: its room counts from zero again, the sum never goes back.
    totals.observe(_worker("local-1", 3), _heartbeat([_room("big", 5)]))
    assert totals.rooms["big"].values[packets_out] == 150 + 70 + 5


def test_room_report_comes_from_the_home_or_any_worker_without_one() -> None:
    totals = TrafficTotals(clock=FakeClock())
    video = [("video", "VP8")]
    totals.observe(_worker("local-0", 1), _heartbeat([_room("r", 1)]))
    totals.observe(_worker("local-1", 2), _heartbeat([_room("r", 1, video)]))
    report = totals.room_report("r", "local-0")
    assert report is not None and report.tracks == []
    homeless = totals.room_report("r", None)
    assert homeless is not None and homeless.tracks == video
    assert totals.room_report("nowhere", None) is None


def _scrape(registry: Any) -> dict[tuple[str, str], float]:
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples[(sample.name, sample.labels.get("worker", ""))] = sample.value
    return samples


async def test_plane_metrics_per_worker_never_go_backwards() -> None:
    # async: the collector counts the running loop's tasks.
    directory = Directory()
    directory.add_worker(_worker("local-1", 2))
    app = web.Application()
    totals = setup_metrics(app, directory)
    plane = {"plane_packets_read": 500, "plane_packets_lost": 3, "edge_rooms": 2, "followers": 0}
    totals.observe(_worker("local-1", 2), _heartbeat([], **plane))
    restarted = {"plane_packets_read": 20, "plane_packets_lost": 1, "edge_rooms": 1}
    totals.observe(_worker("local-1", 9), _heartbeat([], followers=4, **restarted))
    samples = _scrape(app[REGISTRY_KEY])
    assert samples[("live_worker_plane_packets_read_total", "local-1")] == 520
    assert samples[("live_worker_plane_packets_lost_total", "local-1")] == 4
    assert samples[("live_worker_edge_rooms", "local-1")] == 1
    assert samples[("live_worker_plane_followers", "local-1")] == 4
    # The shared counters' positions did not move.
    assert samples[("live_worker_received_packets_total", "local-1")] == 0


# --- settings ------------------------------------------------------------------------------------


def test_spread_settings() -> None:
    default = load_config(["--workers", "0"], environ={}).workers
    assert default.spread_rooms is True and default.spread_threshold == 100
    workers = load_config(
        ["--workers", "0", "--spread-threshold", "0"], environ={"SPREAD_ROOMS": "false"}
    ).workers
    assert workers.spread_rooms is False and workers.spread_threshold == 0


@pytest.mark.parametrize(
    ("env", "named"),
    [({"SPREAD_THRESHOLD": "-1"}, "SPREAD_THRESHOLD"), ({"SPREAD_ROOMS": "maybe"}, "SPREAD_ROOMS")],
)
def test_invalid_spread_setting_exits_2_with_one_line(env: dict[str, str], named: str) -> None:
    result = run_gateway_cli("--workers", "0", env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr


def test_help_explains_spreading() -> None:
    result = run_gateway_cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "[SPREAD_ROOMS] (default: true)" in text and "shared memory" in text
    assert "[SPREAD_THRESHOLD] (default: 100)" in text
    assert "least loaded local worker" in text
