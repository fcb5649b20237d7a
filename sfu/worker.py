"""The worker process: serves the gateway's requests, owns the rooms (which own their
sessions and forwarders, sfu/room.py), reports to the gateway, heartbeats.

Liveness is proven from the event loop itself: a heartbeat that is late means the loop is
busy or hung, which is exactly what the gateway must notice. A worker whose gateway has
been unreachable for `gateway_timeout` seconds, or whose parent process changed, exits:
it must never outlive its controller.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from common import tracing
from ipc import messages as m
from ipc.channel import Channel, IpcError, RemoteFailure, dealer_channel
from ipc.shm import ring
from sfu import __version__
from sfu import aiortc_adapter as adapter
from sfu.aiortc_adapter.mux import IceMux
from sfu.media.instant_start import InstantStart
from sfu.media.stats import ForwardingStats
from sfu.plane import FollowRefused, PlaneEdge, PlaneHome
from sfu.recording.recorder import Recorder, RecordingSettings, publisher_track_ids
from sfu.room import Room, RoomRefusal
from sfu.roomstats import add_into, room_stats, with_counters, worker_totals
from sfu.sdp import ice_credentials
from sfu.session import CapacityError, OfferError, PublisherSession, Session, SessionSettings

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 2.0


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class WorkerConfig:
    connect: str
    worker_id: str
    token: str
    local: bool
    parent_pid: int | None
    gateway_timeout: float
    session: SessionSettings
    instant_start: InstantStart = InstantStart()
    recording: RecordingSettings = RecordingSettings()
    # Sessions this worker can hold at once: each binds one UDP port per host address, so a
    # UDP_PORTS range allows (ports // addresses) of them. None: the OS picks ports.
    session_capacity: int | None = None
    # The host's shared-memory plane (sfu/plane/): empty for none (a remote worker).
    plane: str = ""


class Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        # Each room counts its own traffic; this holds what closed rooms counted.
        self.retired_stats = ForwardingStats()
        self._closed_rooms: list[m.RoomStats] = []  # reported once, in the next heartbeat
        self.rooms: dict[str, Room] = {}
        self.channel: Channel = dealer_channel(config.connect, config.worker_id.encode())
        self.channel.on_request = self._serve
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.exit_reason = ""
        self.recorder = Recorder(config.recording, config.worker_id)
        self.plane_home: PlaneHome | None = None
        self.plane_edge: PlaneEdge | None = None
        # The worker's shared ICE sockets (sfu/__main__.py sets it when a mux port is set).
        self.ice_mux: IceMux | None = None
        # Hook: called after each successful registration (sfu/__main__.py tells systemd).
        self.on_registered: Callable[[], None] = _nothing

    # --- main loop --------------------------------------------------------------------------

    async def run(self) -> int:
        self.channel.start()
        self.recorder.start()
        self._join_plane()
        try:
            interval = await self._register()
            if interval is None:
                return 1
            await self._heartbeat_loop(interval)
        finally:
            await self._close_all("worker stopping")
            if self.plane_edge is not None:
                self.plane_edge.close()
            if self.plane_home is not None:
                self.plane_home.close()
            await self.recorder.close()
            await self.channel.close()
        return 0

    def _join_plane(self) -> None:
        """Listen on the host's plane (as a home) and be ready to follow rooms (as an edge)."""
        plane = self.config.plane
        if not plane:
            return
        if not ring.supported():
            log.warning("no shared-memory plane: its rings need x86-64 store ordering")
            return
        try:
            self.plane_home = PlaneHome(plane, self.config.worker_id, self.rooms)
        except (OSError, ValueError) as exc:
            log.error("no shared-memory plane: cannot listen on %r: %s", plane, exc)
            return
        self.plane_edge = PlaneEdge(plane, self.config.worker_id)

    def stop(self, reason: str) -> None:
        self.exit_reason = reason
        self._stopping.set()

    async def _register(self) -> float | None:
        """Say Hello until the gateway answers; give up after gateway_timeout."""
        deadline = time.monotonic() + self.config.gateway_timeout
        hello = m.Hello(
            worker_id=self.config.worker_id,
            pid=os.getpid(),
            protocol=m.PROTOCOL_VERSION,
            version=__version__,
            hostname=socket.gethostname(),
            token=self.config.token,
            local=self.config.local,
        )
        while not self._stopping.is_set():
            try:
                answer = await self.channel.request(hello, timeout=HELLO_TIMEOUT)
            except RemoteFailure as exc:
                log.error("gateway refused this worker: %s", exc.message)
                self.exit_reason = f"refused: {exc.message}"
                return None
            except IpcError:
                if time.monotonic() > deadline:
                    self.exit_reason = "gateway unreachable"
                    log.error(
                        "no gateway at %s for %gs; exiting",
                        self.config.connect,
                        self.config.gateway_timeout,
                    )
                    return None
                continue
            if isinstance(answer, m.Welcome):
                log.info("registered with gateway as %s", self.config.worker_id)
                self.on_registered()
                return answer.heartbeat_interval
        return None

    async def _heartbeat_loop(self, interval: float) -> None:
        last_ack = time.monotonic()
        cpu_before = time.process_time()
        wall_before = time.monotonic()
        packets_before = self.totals().packets_out
        round_trip = 0.0
        while not self._stopping.is_set():
            scheduled = time.monotonic() + interval
            try:
                await asyncio.wait_for(self._stopping.wait(), interval)
                return
            except TimeoutError:
                pass
            now = time.monotonic()
            if not self._parent_alive():
                log.error("parent process is gone; exiting")
                self.exit_reason = "parent gone"
                return
            wall = max(now - wall_before, 1e-6)
            totals = self.totals()
            closed_rooms = list(self._closed_rooms)
            heartbeat = m.Heartbeat(
                rooms=sorted(self.rooms),
                sessions=self.session_count,
                forwarded_packets_per_s=(totals.packets_out - packets_before) / wall,
                cpu=(time.process_time() - cpu_before) / wall,
                rss_bytes=_rss_bytes(),
                loop_lag_s=max(now - scheduled, 0.0),
                ipc_round_trip_s=round_trip,
                room_stats=[self._room_stats(room) for room in self.rooms.values()] + closed_rooms,
                session_capacity=self.config.session_capacity or 0,
                asyncio_tasks=len(asyncio.all_tasks()),
                recordings_active=self.recorder.stats.active,
                recording_bytes=self.recorder.stats.bytes_written,
                recording_write_errors=self.recorder.stats.write_errors,
                **self._plane_counters(),
                ice_mux_counters=self.ice_mux.counters() if self.ice_mux is not None else {},
                ice_mux_routes=self.ice_mux.route_count if self.ice_mux is not None else 0,
            )
            with_counters(heartbeat, totals)
            cpu_before, wall_before = time.process_time(), now
            packets_before = totals.packets_out
            try:
                sent_at = time.monotonic()
                answer = await self.channel.request(heartbeat, timeout=max(interval * 4, 1.0))
                round_trip = time.monotonic() - sent_at
                del self._closed_rooms[: len(closed_rooms)]
            except IpcError:
                if time.monotonic() - last_ack > self.config.gateway_timeout:
                    log.error("gateway silent for %gs; exiting", self.config.gateway_timeout)
                    self.exit_reason = "gateway gone"
                    return
                continue
            last_ack = time.monotonic()
            if isinstance(answer, m.Reregister):
                log.warning("gateway forgot this worker; closing sessions and registering again")
                await self._close_all("gateway lost this worker")
                new_interval = await self._register()
                if new_interval is None:
                    return
                interval = new_interval

    async def _restart_ice(self, body: m.RestartIce) -> m.Message:
        session = self.find_session(body.session_id)
        if session is None:
            return m.Failure("unknown_session", "no such session")
        try:
            fragment = await session.restart_ice(
                body.ice_ufrag, body.ice_pwd, body.candidates, body.mid, body.end_of_candidates
            )
        except OfferError as exc:
            return m.Failure("bad_candidate", str(exc))
        except ConnectionError as exc:
            return m.Failure("ice_not_connected", f"{exc}; start a new session")
        return m.IceRestarted(fragment)

    def path_changed(self, connection: object) -> None:
        """The ICE mux moved a session to its client's new address (IceMux.on_rebinding)."""
        for room in self.rooms.values():
            for session in room.sessions.values():
                try:
                    found = adapter.ice_connection(session.pc) is connection
                except adapter.AdapterError:  # a session without transceivers yet
                    continue
                if found:
                    session.on_path_changed()
                    return

    def _plane_counters(self) -> dict[str, int]:
        edge, home = self.plane_edge, self.plane_home
        return {
            "plane_packets_read": edge.packets_read if edge is not None else 0,
            "plane_packets_lost": edge.packets_lost if edge is not None else 0,
            "edge_rooms": len(edge.followed) if edge is not None else 0,
            "followers": home.follow_count if home is not None else 0,
        }

    def totals(self) -> ForwardingStats:
        return worker_totals(self.retired_stats, self.rooms.values())

    def _room_stats(self, room: Room, closed: bool = False) -> m.RoomStats:
        return room_stats(room, closed)

    @property
    def session_count(self) -> int:
        return sum(len(room.sessions) for room in self.rooms.values())

    def find_session(self, session_id: str) -> Session | None:
        for room in self.rooms.values():
            session = room.sessions.get(session_id)
            if session is not None:
                return session
        return None

    def _parent_alive(self) -> bool:
        parent = self.config.parent_pid
        return parent is None or os.getppid() == parent

    # --- requests from the gateway ------------------------------------------------------------

    async def _serve(self, peer: bytes, body: m.Message) -> m.Message:
        if isinstance(body, m.OpenSession):
            return await self._open(body)
        if isinstance(body, m.AddCandidates):
            session = self.find_session(body.session_id)
            if session is None:
                return m.Failure("unknown_session", "no such session")
            try:
                await session.add_candidates(body.candidates, body.mid, body.end_of_candidates)
            except OfferError as exc:
                return m.Failure("bad_candidate", str(exc))
            return m.Done()
        if isinstance(body, m.RestartIce):
            return await self._restart_ice(body)
        if isinstance(body, m.CloseSession):
            session = self.find_session(body.session_id)
            if session is None:
                return m.Failure("unknown_session", "no such session")
            await session.close("deleted")
            return m.Done()
        if isinstance(body, m.CloseRoom):
            room = self.rooms.get(body.room)
            if room is not None:
                await room.close("room closed")
            return m.Done()
        if isinstance(body, m.FollowRoom):
            await self._follow(body.room, body.home)
            return m.Done()
        if isinstance(body, m.SetLogLevel):
            return _set_log_level(body.level)
        return m.Failure("internal", f"a worker does not serve {type(body).__name__}")

    async def _open(self, request: m.OpenSession) -> m.Message:
        """Open a session, in a span that joins the gateway's trace (`request.trace`)."""
        attributes = {
            "sfu.session.kind": request.kind,
            "sfu.session.id_prefix": tracing.short_id(request.session_id),
            "sfu.room": request.room,
        }
        with tracing.span(
            "sfu.session.open", kind="server", attributes=attributes, parent=request.trace
        ) as span:
            answer = await self._open_session(request)
            if isinstance(answer, m.Failure):
                span.fail(answer.code)
            return answer

    async def _open_session(self, request: m.OpenSession) -> m.Message:
        if self.find_session(request.session_id) is not None:
            return m.Failure("internal", "session id already in use")
        capacity = self.config.session_capacity
        if capacity is not None and self.session_count >= capacity:
            return m.Failure(
                "overloaded", f"all UDP ports of this worker are in use ({capacity} sessions)"
            )
        room = self.rooms.get(request.room)
        edge = request.kind == "subscriber" and request.home not in ("", self.config.worker_id)
        if room is None:
            if request.kind == "subscriber" and not edge:
                return m.Failure("no_room", f"room {request.room!r} has no publisher")
            room = self.rooms[request.room] = self._new_room(request.room)
        if edge and room.publisher is None:
            refusal = await self._follow_for_viewer(room, request.home)
            if refusal is not None:
                return refusal
        elif request.kind == "publisher" and self.plane_edge is not None:
            self.plane_edge.forget(room.name)  # this worker becomes the room's home
        try:
            session = room.open_session(request.kind, request.session_id)
        except RoomRefusal as exc:
            return m.Failure(exc.code, str(exc))
        session.trace_connection()  # a span from here to connected, when tracing is on
        try:
            answer = await session.open(request.offer)
            ufrag, pwd = ice_credentials(session.pc.localDescription.sdp)
        except BaseException as exc:
            await room.discard(session)
            if not isinstance(exc, Exception):
                raise  # cancelled: the session is released all the same
            return _open_failure(session, exc)
        return m.SessionAnswer(answer=answer, ice_ufrag=ufrag, ice_pwd=pwd)

    def _new_room(self, name: str) -> Room:
        return Room(name, self.config.session, self, self.config.instant_start)

    async def _follow_for_viewer(self, room: Room, home: str) -> m.Failure | None:
        """A viewer placed here while the room's publisher is on `home`: read its rings."""
        if self.plane_edge is None:
            await room.close_if_empty("no shared-memory plane")
            return m.Failure("internal", "this worker has no shared-memory plane")
        try:
            await self.plane_edge.follow(room, home)
        except FollowRefused as exc:
            await room.close_if_empty("its home cannot be followed")
            if room.codecs and not room.closed:
                return None  # the room is known here: the viewer waits for a publisher
            log.info("room %s: cannot follow it on %s: %s", room.name, home, exc)
            return m.Failure("no_room", f"room {room.name!r} is not available: {exc}")
        return None

    async def _follow(self, name: str, home: str) -> None:
        """The gateway named a new home for a room: its viewers here read from there."""
        room = self.rooms.get(name)
        if room is None or room.publisher is not None or self.plane_edge is None:
            return
        if home == self.config.worker_id:
            return
        try:
            await self.plane_edge.follow(room, home)
        except FollowRefused as exc:
            log.warning("room %s: cannot follow its new home %s: %s", name, home, exc)

    # --- what rooms report (RoomEvents) --------------------------------------------------

    def session_connected(self, session: Session) -> None:
        if isinstance(session, PublisherSession):
            track_ids = publisher_track_ids(session.pc.getTransceivers(), session.codecs)
            self.recorder.publisher_connected(session.room, track_ids)
        # With the set-up timeline so far (live_session_phase_seconds), and again complete
        # with the first packet.
        self._notify(
            m.SessionState(
                session.id, session.room.name, "connected", timeline=dict(session.timeline)
            )
        )

    def session_first_packet(self, session: Session) -> None:
        self._notify(
            m.SessionState(
                session.id, session.room.name, "first_packet", timeline=dict(session.timeline)
            )
        )

    def session_closed(self, session: Session, reason: str) -> None:
        if isinstance(session, PublisherSession):
            self.recorder.publisher_gone(session.room.name)
        self._notify(m.SessionState(session.id, session.room.name, "closed", reason))

    def room_closed(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        if self.plane_edge is not None:
            self.plane_edge.forget(room.name)
        if self.plane_home is not None:
            self.plane_home.room_closed(room)
        add_into(self.retired_stats, room.stats)
        self._closed_rooms.append(self._room_stats(room, closed=True))

    def codecs_changed(self, room: Room) -> None:
        if self.plane_home is not None and room.publisher is not None:
            self.plane_home.codecs_changed(room)

    def _notify(self, body: m.Message) -> None:
        if self.channel.closed:
            return
        task = asyncio.get_running_loop().create_task(self._send_notification(body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_notification(self, body: m.Message) -> None:
        try:
            await self.channel.notify(body)
        except IpcError as exc:
            log.info("could not notify the gateway: %s", exc)

    async def _close_all(self, reason: str) -> None:
        rooms = list(self.rooms.values())
        await asyncio.gather(*(room.close(reason) for room in rooms), return_exceptions=True)


def _open_failure(session: Session, exc: Exception) -> m.Failure:
    """The one mapping from a failed open to the answer: 400 for what the client sent, 503 only
    for capacity and for our own faults (those alone get a traceback in the log)."""
    where = f"{session.kind} {session.id[:8]} in room {session.room.name}"
    if isinstance(exc, OfferError):
        log.info("%s: offer refused: %s", where, exc)
        return m.Failure("bad_offer", str(exc))
    if isinstance(exc, CapacityError):
        log.warning("%s: %s", where, exc)
        return m.Failure("overloaded", str(exc))
    log.exception("%s: opening failed", where)
    return m.Failure("internal", f"{type(exc).__name__}: {exc}")


def _set_log_level(name: str) -> m.Message:
    """LOG_LEVEL changed by the gateway's reload (aioice stays at WARNING at least)."""
    level = logging.getLevelNamesMapping().get(name.upper())
    if level is None:
        return m.Failure("internal", f"unknown log level {name!r}")
    logging.getLogger().setLevel(level)
    logging.getLogger("aioice").setLevel(max(level, logging.WARNING))
    log.info("log level set to %s", name)
    return m.Done()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
