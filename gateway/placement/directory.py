"""Placement bookkeeping: which workers are alive, which worker hosts a room, which sessions exist.

`SessionDirectory` is what the HTTP layer needs of it; `Directory` is the in-memory
implementation the registry keeps up to date from the workers. Pure in-memory state, no I/O,
so it is safe to mutate from one event loop without locks: every check-and-reserve below
runs without an `await`, which is what makes "one publisher per room" and the subscriber
limit race-free. A shared implementation (Redis, for several gateways) must keep each
reservation atomic in the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from ipc.messages import SessionKind


class PlacementError(Exception):
    """A session cannot be placed; errors.py maps each subclass to an HTTP status."""


class PublisherExists(PlacementError):
    pass


class RoomNotFound(PlacementError):
    pass


class SubscriberLimitReached(PlacementError):
    pass


class NoLiveWorker(PlacementError):
    pass


class WorkerFull(PlacementError):
    """The room's worker has no UDP port left for another session."""


@dataclass
class WorkerInfo:
    worker_id: str
    local: bool
    pid: int
    hostname: str
    last_heartbeat: float  # time.monotonic()
    reported_rooms: int = 0
    reported_sessions: int = 0
    forwarded_packets_per_s: float = 0.0
    cpu: float = 0.0
    # False while its heartbeats are late (WORKER_TIMEOUT): it keeps its rooms, but gets no
    # new session and requests to it fail at once, until it heartbeats again or is dead.
    responsive: bool = True
    session_capacity: int = 0  # from its heartbeats: its UDP port budget; 0 = no limit
    asyncio_tasks: int = 0


@dataclass
class RoomEntry:
    name: str
    worker_id: str
    publisher: str | None = None
    subscribers: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return self.publisher is None and not self.subscribers


@dataclass
class SessionEntry:
    session_id: str
    room: str
    kind: SessionKind
    worker_id: str
    etag: str
    ice_ufrag: str  # the client's, from its offer: a different one in a PATCH means restart
    ice_pwd: str
    connected: bool = False
    created: float = field(default_factory=time.monotonic)
    client: str = ""  # rate-limit key of the creator (IP, IPv6 /64), for per-client caps


class SessionDirectory(Protocol):
    """The rooms, sessions and workers as the HTTP layer reads and reserves them."""

    @property
    def workers(self) -> Mapping[str, WorkerInfo]: ...

    @property
    def rooms(self) -> Mapping[str, RoomEntry]: ...

    @property
    def sessions(self) -> Mapping[str, SessionEntry]: ...

    def worker_for_room(self, room: str) -> str | None:
        """The worker a session of `room` would go to now; None when no worker can take it."""
        ...

    def reserve_publisher(
        self, room: str, session_id: str, etag: str, ice_ufrag: str, ice_pwd: str
    ) -> SessionEntry:
        """Place a publisher session, or raise a PlacementError (e.g. PublisherExists)."""
        ...

    def reserve_subscriber(
        self,
        room: str,
        session_id: str,
        etag: str,
        ice_ufrag: str,
        ice_pwd: str,
        max_subscribers: int,
    ) -> SessionEntry:
        """Place a subscriber session in an existing room, or raise a PlacementError."""
        ...

    def get_session(self, session_id: str) -> SessionEntry | None: ...

    def remove_session(self, session_id: str) -> SessionEntry | None:
        """Forget a session (idempotent); a room goes with its last session."""
        ...


class Directory:
    """The in-memory SessionDirectory of one gateway, plus the worker bookkeeping the
    registry does."""

    def __init__(self) -> None:
        self.workers: dict[str, WorkerInfo] = {}
        self.rooms: dict[str, RoomEntry] = {}
        self.sessions: dict[str, SessionEntry] = {}

    # --- workers ------------------------------------------------------------------------

    def add_worker(self, worker: WorkerInfo) -> None:
        self.workers[worker.worker_id] = worker

    def remove_worker(self, worker_id: str) -> list[SessionEntry]:
        """Forget a worker together with its rooms and sessions; returns the dropped sessions."""
        self.workers.pop(worker_id, None)
        dropped = [s for s in self.sessions.values() if s.worker_id == worker_id]
        for session in dropped:
            del self.sessions[session.session_id]
        for name in [n for n, room in self.rooms.items() if room.worker_id == worker_id]:
            del self.rooms[name]
        return dropped

    def bookkept_load(self, worker_id: str) -> int:
        """Sessions plus rooms we placed there: unlike heartbeats, this is never stale."""
        sessions = sum(1 for s in self.sessions.values() if s.worker_id == worker_id)
        rooms = sum(1 for r in self.rooms.values() if r.worker_id == worker_id)
        return sessions + rooms

    def has_room_for_session(self, worker: WorkerInfo) -> bool:
        if not worker.session_capacity:
            return True
        held = sum(1 for s in self.sessions.values() if s.worker_id == worker.worker_id)
        return held < worker.session_capacity

    def least_loaded_worker(self) -> str | None:
        """The responsive worker with spare ports that carries the least; None if none."""
        candidates = [
            w for w in self.workers.values() if w.responsive and self.has_room_for_session(w)
        ]
        if not candidates:
            return None
        best = min(
            candidates,
            key=lambda w: (self.bookkept_load(w.worker_id), w.cpu, w.worker_id),
        )
        return best.worker_id

    def _check_worker(self, worker_id: str) -> None:
        """A session may go to `worker_id` now (it is alive, responsive and has a port)."""
        worker = self.workers.get(worker_id)
        if worker is None or not worker.responsive:
            raise NoLiveWorker("the room's media worker is not available")
        if not self.has_room_for_session(worker):
            raise WorkerFull(
                f"the room's media worker has no free UDP port "
                f"({worker.session_capacity} sessions)"
            )

    def worker_for_room(self, room: str) -> str | None:
        """Every session of a room goes to the room's worker; a new room to the least loaded.

        Kept as the single lookup so that spreading a big room over workers later only
        changes this function.
        """
        entry = self.rooms.get(room)
        if entry is not None:
            return entry.worker_id
        return self.least_loaded_worker()

    # --- sessions -----------------------------------------------------------------------

    def reserve_publisher(
        self, room: str, session_id: str, etag: str, ice_ufrag: str, ice_pwd: str
    ) -> SessionEntry:
        entry = self.rooms.get(room)
        if entry is not None and entry.publisher is not None:
            raise PublisherExists(f"room {room!r} already has a publisher")
        worker_id = self.worker_for_room(room)
        if worker_id is None:
            if any(w.responsive for w in self.workers.values()):
                raise WorkerFull("every media worker's UDP ports are in use")
            raise NoLiveWorker("no media worker is available")
        self._check_worker(worker_id)
        if entry is None:
            entry = self.rooms[room] = RoomEntry(room, worker_id)
        entry.publisher = session_id
        return self._add_session(
            SessionEntry(session_id, room, "publisher", worker_id, etag, ice_ufrag, ice_pwd)
        )

    def reserve_subscriber(
        self,
        room: str,
        session_id: str,
        etag: str,
        ice_ufrag: str,
        ice_pwd: str,
        max_subscribers: int,
    ) -> SessionEntry:
        entry = self.rooms.get(room)
        if entry is None:
            raise RoomNotFound(f"room {room!r} does not exist (no active publisher)")
        if max_subscribers > 0 and len(entry.subscribers) >= max_subscribers:
            raise SubscriberLimitReached(
                f"room {room!r} reached its limit of {max_subscribers} subscribers"
            )
        self._check_worker(entry.worker_id)
        entry.subscribers.add(session_id)
        return self._add_session(
            SessionEntry(session_id, room, "subscriber", entry.worker_id, etag, ice_ufrag, ice_pwd)
        )

    def _add_session(self, session: SessionEntry) -> SessionEntry:
        self.sessions[session.session_id] = session
        return session

    def get_session(self, session_id: str) -> SessionEntry | None:
        return self.sessions.get(session_id)

    def remove_session(self, session_id: str) -> SessionEntry | None:
        """Idempotent; drops the room once it has no session left."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return None
        entry = self.rooms.get(session.room)
        if entry is not None:
            if entry.publisher == session_id:
                entry.publisher = None
            entry.subscribers.discard(session_id)
            if entry.empty:
                del self.rooms[session.room]
        return session

    def mark_connected(self, session_id: str) -> bool:
        session = self.sessions.get(session_id)
        if session is None:
            return False
        session.connected = True
        return True

    def sessions_of_worker(self, worker_id: str) -> Iterable[SessionEntry]:
        return [s for s in self.sessions.values() if s.worker_id == worker_id]
