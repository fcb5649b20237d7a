"""The worker protocol, gateway side: registration, liveness, and session requests.

Workers connect a DEALER whose routing id is their worker id (utf-8) to the gateway's ROUTER.
A worker that stops heartbeating for WORKER_DEAD_TIMEOUT, or whose local process exits, is
declared dead: its sessions vanish from the directory (their URLs answer 404), and so do its
rooms, except those with viewers left on other workers (they wait, homeless, for a new
publisher); requests pending on it fail at once (the HTTP client gets a 503), and the
supervisor replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping

from common import tracing
from gateway.config import GatewayConfig
from gateway.placement.directory import Directory, SessionEntry, WorkerInfo
from gateway.sdpfrag import SdpFragment
from ipc.channel import Channel, IpcError, PeerGone, RemoteFailure
from ipc.messages import (
    PROTOCOL_VERSION,
    TIMELINE_MARKS,
    AddCandidates,
    CloseRoom,
    CloseSession,
    Done,
    Failure,
    FollowRoom,
    Heartbeat,
    HeartbeatAck,
    Hello,
    IceRestarted,
    Message,
    OpenSession,
    Reregister,
    RestartIce,
    SessionAnswer,
    SessionState,
    SetLogLevel,
    Welcome,
)

log = logging.getLogger(__name__)

LIVENESS_CHECK_INTERVAL = 0.1
MAX_WORKER_ID_LENGTH = 64
LOCAL_PREFIX = "local-"


def _no_local_pid(_worker_id: str) -> int | None:
    return None


def _ignore(_worker_id: str) -> None:
    return None


def _ignore_heartbeat(_worker: WorkerInfo, _heartbeat: Heartbeat) -> None:
    return None


def _ignore_session(_session: SessionEntry, _timeline: Mapping[str, float]) -> None:
    return None


# The longest set-up a timeline mark may report (a worker's clock gone wrong says more).
MAX_TIMELINE_S = 3600.0


def _timeline(reported: Mapping[str, float]) -> dict[str, float]:
    """A worker's timeline marks, only those of TIMELINE_MARKS, each a finite number of
    seconds between 0 and MAX_TIMELINE_S."""
    return {
        mark: float(seconds)
        for mark, seconds in reported.items()
        if mark in TIMELINE_MARKS and 0.0 <= seconds <= MAX_TIMELINE_S
    }


class UnexpectedAnswer(IpcError):
    """The worker answered with a message type the request does not allow."""


class WorkerUnresponsive(PeerGone):
    """The worker's heartbeats are late: requests fail at once instead of waiting for it."""


class Registry:
    def __init__(
        self,
        config: GatewayConfig,
        channel: Channel,
        directory: Directory,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.channel = channel
        self.directory = directory
        self._clock = clock
        self._monitor: asyncio.Task[None] | None = None
        self.shutting_down = False  # workers exiting now are expected to, not failures
        self.ever_registered = False  # a worker has registered since the gateway started
        # Hooks the supervisor fills in; the defaults suit a gateway with remote workers only.
        self.local_pid_of: Callable[[str], int | None] = _no_local_pid
        self.on_worker_registered: Callable[[str], None] = _ignore
        self.on_worker_lost: Callable[[str], None] = _ignore
        # Metrics (gateway/metrics.py) read every heartbeat's counters.
        self.on_heartbeat: Callable[[WorkerInfo, Heartbeat], None] = _ignore_heartbeat
        # ...and each session's first "connected" report (live_session_connect_seconds),
        # with its set-up timeline so far (live_session_phase_seconds)...
        self.on_connected: Callable[[SessionEntry, Mapping[str, float]], None] = _ignore_session
        # ...and its first packet (live_session_first_packet_seconds), once per session.
        self.on_first_packet: Callable[[SessionEntry, Mapping[str, float]], None] = _ignore_session
        # Sessions deleted while their worker was unresponsive: closed when it is back.
        self._deferred_closes: dict[str, set[str]] = {}
        self._background: set[asyncio.Task[None]] = set()

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.channel.on_request = self._on_request
        self.channel.on_notification = self._on_notification
        self.channel.start()
        self._monitor = asyncio.get_running_loop().create_task(self._watch_liveness())

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self.channel.close()

    def live_worker_count(self) -> int:
        """Workers that are registered and responsive."""
        return sum(1 for worker in self.directory.workers.values() if worker.responsive)

    # --- worker -> gateway ----------------------------------------------------------------

    async def _on_request(self, peer: bytes, body: Message) -> Message:
        if isinstance(body, Hello):
            return self._hello(peer, body)
        if isinstance(body, Heartbeat):
            return self._heartbeat(peer, body)
        return Failure("internal", f"the gateway does not serve {type(body).__name__}")

    def _refusal(self, peer: bytes, hello: Hello) -> str | None:
        """Why this Hello must be refused, or None to accept it."""
        if hello.protocol != PROTOCOL_VERSION:
            return f"protocol {hello.protocol} is not the gateway's {PROTOCOL_VERSION}"
        if not hello.worker_id or len(hello.worker_id) > MAX_WORKER_ID_LENGTH:
            return f"worker_id must be 1 to {MAX_WORKER_ID_LENGTH} characters"
        if peer != hello.worker_id.encode():
            return "the socket routing id must equal worker_id"
        if hello.local:
            # Local workers carry no token; they prove themselves by the pid we spawned.
            if self.local_pid_of(hello.worker_id) != hello.pid:
                return f"no local worker {hello.worker_id!r} with pid {hello.pid} was spawned"
            return None
        if hello.worker_id.startswith(LOCAL_PREFIX):
            return f"ids starting with {LOCAL_PREFIX!r} are reserved for local workers"
        token = self.config.workers.worker_token
        if token and not hmac.compare_digest(hello.token.encode(), token.encode()):
            return "bad worker token"
        return None

    def _hello(self, peer: bytes, hello: Hello) -> Message:
        reason = self._refusal(peer, hello)
        if reason is not None:
            log.warning("refused worker %r (pid %d): %s", hello.worker_id, hello.pid, reason)
            return Failure("refused", reason)
        if hello.worker_id in self.directory.workers:
            # Same id again: the worker restarted (or re-registered) and lost its sessions.
            self._forget(hello.worker_id, "worker registered again")
        self.directory.add_worker(
            WorkerInfo(
                worker_id=hello.worker_id,
                local=hello.local,
                pid=hello.pid,
                hostname=hello.hostname,
                last_heartbeat=self._clock(),
            )
        )
        log.info(
            "worker %s registered (pid %d on %s, version %s, %s)",
            hello.worker_id,
            hello.pid,
            hello.hostname,
            hello.version,
            "local" if hello.local else "remote",
        )
        self.ever_registered = True
        self.on_worker_registered(hello.worker_id)
        return Welcome(self.config.workers.heartbeat_interval)

    def _heartbeat(self, peer: bytes, heartbeat: Heartbeat) -> Message:
        worker = self.directory.workers.get(peer.decode(errors="replace"))
        if worker is None:
            return Reregister()
        worker.last_heartbeat = self._clock()
        if not worker.responsive:
            worker.responsive = True
            log.warning("worker %s is responsive again", worker.worker_id)
            self._flush_deferred_closes(worker.worker_id)
        worker.session_capacity = heartbeat.session_capacity
        worker.asyncio_tasks = heartbeat.asyncio_tasks
        worker.reported_rooms = len(heartbeat.rooms)
        worker.reported_sessions = heartbeat.sessions
        worker.forwarded_packets_per_s = heartbeat.forwarded_packets_per_s
        worker.cpu = heartbeat.cpu
        self.on_heartbeat(worker, heartbeat)
        return HeartbeatAck()

    def _on_notification(self, peer: bytes, body: Message) -> None:
        if not isinstance(body, SessionState):
            log.debug("ignored notification %s from %r", type(body).__name__, peer)
            return
        session = self.directory.get_session(body.session_id)
        if session is None or session.worker_id.encode() != peer:
            return  # already closed here, or not that worker's to report
        if body.state == "closed":
            self.directory.remove_session(body.session_id)
            log.info(
                "session %s in room %s closed by worker: %s",
                _short(body.session_id),
                session.room,
                body.reason or "no reason given",
                extra={
                    "room": session.room,
                    "session": _short(body.session_id),
                    "worker": session.worker_id,
                },
            )
        elif body.state == "connected":
            first = not session.connected
            self.directory.mark_connected(body.session_id)
            if first:
                self.on_connected(session, _timeline(body.timeline))
        elif body.state == "first_packet":
            self.on_first_packet(session, _timeline(body.timeline))

    # --- death ----------------------------------------------------------------------------

    async def _watch_liveness(self) -> None:
        previous_tick = self._clock()
        while True:
            await asyncio.sleep(LIVENESS_CHECK_INTERVAL)
            now = self._clock()
            stalled = now - previous_tick > self.config.workers.worker_timeout
            previous_tick = now
            if stalled:
                # Our own loop was blocked: the heartbeats are late on our side, not theirs.
                for worker in self.directory.workers.values():
                    worker.last_heartbeat = now
                continue
            for worker in list(self.directory.workers.values()):
                silence = now - worker.last_heartbeat
                if silence > self.config.workers.worker_dead_timeout:
                    self.declare_dead(worker.worker_id, f"no heartbeat for {silence:.1f} s")
                elif silence > self.config.workers.worker_timeout and worker.responsive:
                    self._mark_unresponsive(worker, silence)

    def _mark_unresponsive(self, worker: WorkerInfo, silence: float) -> None:
        """Late heartbeats: a stall (a loaded host, a long GC) or the start of death. Its
        rooms stay; new sessions go elsewhere and requests to it fail fast until it is back
        or WORKER_DEAD_TIMEOUT passes."""
        worker.responsive = False
        log.warning(
            "worker %s unresponsive: no heartbeat for %.1f s (dead after %g s)",
            worker.worker_id,
            silence,
            self.config.workers.worker_dead_timeout,
        )
        self.channel.fail_peer(
            worker.worker_id.encode(), f"worker {worker.worker_id} is not responding"
        )

    def declare_dead(self, worker_id: str, reason: str) -> None:
        if worker_id not in self.directory.workers:
            return
        self._forget(worker_id, reason)
        level = logging.INFO if self.shutting_down else logging.ERROR
        log.log(level, "worker %s declared dead: %s", worker_id, reason)
        self.on_worker_lost(worker_id)

    def worker_exited(self, worker_id: str, pid: int) -> None:
        """Called by the supervisor when a local worker process has exited."""
        worker = self.directory.workers.get(worker_id)
        if worker is not None and worker.pid == pid:
            self.declare_dead(worker_id, f"process {pid} exited")

    def _forget(self, worker_id: str, reason: str) -> None:
        self._deferred_closes.pop(worker_id, None)
        homed = [name for name, room in self.directory.rooms.items() if room.home == worker_id]
        dropped = self.directory.remove_worker(worker_id)
        self.channel.fail_peer(worker_id.encode(), f"worker {worker_id} is gone: {reason}")
        if dropped:
            log.warning("dropped %d sessions of worker %s", len(dropped), worker_id)
        for name in homed:
            room = self.directory.rooms.get(name)
            if room is not None:
                log.warning(
                    "room %s lost its home %s; its %d viewers on other workers wait for a "
                    "new publisher",
                    name,
                    worker_id,
                    len(room.subscribers),
                )

    # --- gateway -> worker ----------------------------------------------------------------

    async def _request(self, worker_id: str, body: Message) -> Message:
        worker = self.directory.workers.get(worker_id)
        if worker is None:
            raise PeerGone(f"worker {worker_id} is gone")
        if not worker.responsive:
            raise WorkerUnresponsive(f"worker {worker_id} is not responding")
        return await self.channel.request(
            body, peer=worker_id.encode(), timeout=self.config.workers.ipc_timeout
        )

    async def open_session(self, session: SessionEntry, offer: str) -> SessionAnswer:
        attributes: dict[str, tracing.AttributeValue] = {
            "sfu.worker.id": session.worker_id,
            "sfu.session.kind": session.kind,
            "sfu.session.id_prefix": tracing.short_id(session.session_id),
            "sfu.room": session.room,
        }
        if session.home:
            attributes["sfu.home"] = session.home
        with tracing.span("ipc OpenSession", kind="client", attributes=attributes) as span:
            request = OpenSession(
                session.kind,
                session.room,
                session.session_id,
                offer,
                home=session.home,
                trace=tracing.inject(),  # the worker's spans join this trace
            )
            try:
                answer = await self._request(session.worker_id, request)
            except RemoteFailure as exc:
                span.fail(exc.code)
                raise
            if not isinstance(answer, SessionAnswer):
                raise UnexpectedAnswer(f"worker answered {type(answer).__name__} to an open")
            return answer

    async def restart_ice(self, session: SessionEntry, fragment: SdpFragment) -> str:
        """RFC 9725 §4.3 ICE restart on the session's worker; returns our sdpfrag. The
        client's candidates go with it (those of the bundle's tag, or all when untagged)."""
        mids = [mid for mid, _ in fragment.candidates]
        mid = mids[0] if mids else None
        candidates = [value for value_mid, value in fragment.candidates if value_mid == mid]
        answer = await self._request(
            session.worker_id,
            RestartIce(
                session.session_id,
                fragment.ice_ufrag or "",
                fragment.ice_pwd or "",
                candidates,
                mid,
                fragment.end_of_candidates,
            ),
        )
        if not isinstance(answer, IceRestarted):
            raise UnexpectedAnswer(f"worker answered {type(answer).__name__} to an ICE restart")
        return answer.fragment

    async def add_candidates(self, session: SessionEntry, fragment: SdpFragment) -> None:
        """One AddCandidates per media section; with BUNDLE that is nearly always one."""
        by_mid: dict[str | None, list[str]] = {}
        for mid, candidate in fragment.candidates:
            by_mid.setdefault(mid, []).append(candidate)
        if not by_mid:
            by_mid[None] = []  # end-of-candidates alone
        groups = list(by_mid.items())
        for index, (mid, candidates) in enumerate(groups):
            last = index == len(groups) - 1
            end = fragment.end_of_candidates and last
            if not candidates and not end:
                continue
            answer = await self._request(
                session.worker_id,
                AddCandidates(session.session_id, candidates, mid, end),
            )
            _expect_done(answer)

    async def close_session(self, session: SessionEntry) -> None:
        """Close it on its worker; on an unresponsive worker, as soon as that is back."""
        worker = self.directory.workers.get(session.worker_id)
        if worker is not None and not worker.responsive:
            self._deferred_closes.setdefault(session.worker_id, set()).add(session.session_id)
            return
        _expect_done(await self._request(session.worker_id, CloseSession(session.session_id)))

    def _flush_deferred_closes(self, worker_id: str) -> None:
        session_ids = self._deferred_closes.pop(worker_id, set())
        for session_id in session_ids:
            task = asyncio.get_running_loop().create_task(
                self._close_deferred(worker_id, session_id)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _close_deferred(self, worker_id: str, session_id: str) -> None:
        try:
            await self._request(worker_id, CloseSession(session_id))
        except IpcError as exc:  # unknown_session included: the worker's reaper was first
            log.info("deferred close of %s on %s: %s", _short(session_id), worker_id, exc)

    async def follow_room(self, room: str) -> None:
        """Tell every other live worker with sessions of `room` (its edges) that the room's
        home is now where its publisher just opened. Failures are only logged and never reach
        the publisher's client: that edge's viewers miss the new publisher until they
        reconnect."""
        entry = self.directory.rooms.get(room)
        if entry is None or entry.home is None:
            return
        home = entry.home
        edges = sorted(
            worker_id
            for worker_id in self.directory.workers_of_room(room) - {home}
            if (worker := self.directory.workers.get(worker_id)) is not None and worker.responsive
        )
        await self._fan_out(edges, FollowRoom(room, home), f"following room {room} at {home}")

    async def set_log_level(self, level: str) -> None:
        """A reload changed LOG_LEVEL: every live worker logs at it from now on."""
        workers = sorted(w.worker_id for w in self.directory.workers.values() if w.responsive)
        await self._fan_out(workers, SetLogLevel(level), f"setting log level {level}")

    async def close_room(self, room: str) -> None:
        """Close `room` on its home and on every worker with sessions of it. Failures are
        only logged: a dead worker took the room along, a hung one is declared dead by its
        heartbeats."""
        entry = self.directory.rooms.get(room)
        workers = self.directory.workers_of_room(room)
        if entry is not None and entry.home is not None:
            workers.add(entry.home)
        await self._fan_out(sorted(workers), CloseRoom(room), f"closing room {room}")

    async def _fan_out(self, worker_ids: list[str], request: Message, what: str) -> None:
        """One request to each worker at once, each expecting Done; failures logged."""
        if not worker_ids:
            return
        results = await asyncio.gather(
            *(self._request(worker_id, request) for worker_id in worker_ids),
            return_exceptions=True,
        )
        for worker_id, result in zip(worker_ids, results, strict=True):
            if isinstance(result, IpcError):
                log.info("%s: worker %s: %s", what, worker_id, result)
            elif isinstance(result, Exception):
                log.error("%s: worker %s", what, worker_id, exc_info=result)
            elif isinstance(result, BaseException):
                raise result  # cancelled
            elif not isinstance(result, Done):
                log.info("%s: worker %s answered %s", what, worker_id, type(result).__name__)


def _expect_done(answer: Message) -> None:
    if not isinstance(answer, Done):
        raise UnexpectedAnswer(f"worker answered {type(answer).__name__} instead of Done")


def _short(session_id: str) -> str:
    """Session ids are capabilities (their URL is the only credential): log a prefix only."""
    return session_id[:8]
