"""Placement bookkeeping: which workers are alive, which worker is a room's home (its
publisher's worker) and which other workers hold its viewers, which sessions exist.

`SessionDirectory` is what the HTTP layer needs of it; `Directory` is the in-memory
implementation the registry keeps up to date from the workers. Pure in-memory state, no I/O,
so it is safe to mutate from one event loop without locks: every check-and-reserve below
runs without an `await`, which is what makes "one publisher per room" and the subscriber
limit race-free. A shared implementation (Redis, for several gateways) must keep each
reservation atomic in the same way.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
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
    # The worker of the room's publisher, whose shared-memory rings the room's edges read;
    # None once that worker died while viewers of the room remain on other workers.
    home: str | None
    publisher: str | None = None
    subscribers: set[str] = field(default_factory=set)

    @property
    def empty(self) -> bool:
        return self.publisher is None and not self.subscribers

    @property
    def session_ids(self) -> list[str]:
        return [s for s in (self.publisher, *sorted(self.subscribers)) if s is not None]


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
    # OpenSession.home: the room's home when this session is on an edge, else "".
    home: str = ""


@dataclass(frozen=True)
class Placement:
    """Where a new session goes: its worker, and the home it reads from when that worker is
    an edge of the room ("" when it is the home, or the room has none)."""

    worker_id: str
    home: str = ""


class SessionDirectory(Protocol):
    """The rooms, sessions and workers as the HTTP layer reads and reserves them."""

    @property
    def workers(self) -> Mapping[str, WorkerInfo]: ...

    @property
    def rooms(self) -> Mapping[str, RoomEntry]: ...

    @property
    def sessions(self) -> Mapping[str, SessionEntry]: ...

    def worker_for_room(self, room: str, kind: SessionKind) -> str | None:
        """The worker a `kind` session of `room` would go to now; None when it cannot be
        placed."""
        ...

    def workers_of_room(self, room: str) -> set[str]:
        """The workers that hold sessions of `room` now."""
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


def _ignore_room(_room: str) -> None:
    return None


def _ignore_session(_session: SessionEntry) -> None:
    return None


class Directory:
    """The in-memory SessionDirectory of one gateway, plus the worker bookkeeping the
    registry does.

    Placement (`place`): a new room goes to the least loaded worker, its *home*, where its
    publisher always is. With `spread_rooms`, once the home holds `spread_threshold`
    sessions (of all rooms, as bookkept here) or has no free port, a new viewer of a room
    whose home is a local worker goes to the least loaded local worker (the home included,
    and preferred on a tie): an *edge*, which reads the home's packets from shared memory.
    """

    def __init__(self, spread_rooms: bool = True, spread_threshold: int = 100) -> None:
        self.workers: dict[str, WorkerInfo] = {}
        self.rooms: dict[str, RoomEntry] = {}
        self.sessions: dict[str, SessionEntry] = {}
        self.spread_rooms = spread_rooms
        self.spread_threshold = spread_threshold
        # Called with the room's name after one of its sessions was reserved, connected or
        # removed (the WHEP events extension watches rooms through it).
        self.on_room_change: Callable[[str], None] = _ignore_room
        # Called with each session removed, after its room was updated (or dropped): the
        # webhooks' *_left and room_finished (gateway/webhooks/).
        self.on_session_removed: Callable[[SessionEntry], None] = _ignore_session

    # --- workers ------------------------------------------------------------------------

    def add_worker(self, worker: WorkerInfo) -> None:
        self.workers[worker.worker_id] = worker

    def remove_worker(self, worker_id: str) -> list[SessionEntry]:
        """Forget a worker and its sessions; returns the dropped sessions.

        A room left without a session goes too. A room this worker was the home of that still
        has sessions on other workers (viewers on its edges) stays, without a home and without
        a publisher (the publisher was here): its next publisher picks a new home.
        """
        self.workers.pop(worker_id, None)
        dropped = [s for s in self.sessions.values() if s.worker_id == worker_id]
        for session in dropped:
            self.remove_session(session.session_id)
        for room in self.rooms.values():
            if room.home == worker_id:
                room.home = None
        return dropped

    def session_counts(self) -> Counter[str]:
        """Sessions per worker, as bookkept here (never stale, unlike heartbeats)."""
        return Counter(s.worker_id for s in self.sessions.values())

    def has_room_for_session(self, worker: WorkerInfo, held: int | None = None) -> bool:
        """It has a UDP port left for one more session (`held`: its sessions, if counted)."""
        if not worker.session_capacity:
            return True
        if held is None:
            held = sum(1 for s in self.sessions.values() if s.worker_id == worker.worker_id)
        return held < worker.session_capacity

    def least_loaded_worker(self, local_only: bool = False) -> str | None:
        """The responsive worker with spare ports that carries the least; None if none."""
        counts = self.session_counts()
        homed = Counter(r.home for r in self.rooms.values() if r.home is not None)
        candidates = [
            w
            for w in self.workers.values()
            if w.responsive
            and (w.local or not local_only)
            and self.has_room_for_session(w, counts[w.worker_id])
        ]
        if not candidates:
            return None
        best = min(
            candidates,
            key=lambda w: (counts[w.worker_id] + homed[w.worker_id], w.cpu, w.worker_id),
        )
        return best.worker_id

    def workers_of_room(self, room: str) -> set[str]:
        entry = self.rooms.get(room)
        if entry is None:
            return set()
        return {self.sessions[s].worker_id for s in entry.session_ids if s in self.sessions}

    def _check_worker(self, worker_id: str) -> None:
        """A session may go to `worker_id` now (it is alive, responsive and has a port)."""
        worker = self.workers.get(worker_id)
        if worker is None or not worker.responsive:
            raise NoLiveWorker("the room's media worker is not available")
        if not self.has_room_for_session(worker):
            raise WorkerFull(
                f"the room's media worker has no free UDP port ({worker.session_capacity} sessions)"
            )

    def _least_loaded_of(
        self, candidates: Iterable[str], counts: Counter[str], prefer: str | None = None
    ) -> str:
        """Of `candidates`, the one that can take a session now with the fewest bookkept
        sessions, then `prefer` (a tie keeps the room on its home), then the lowest cpu; or
        raise WorkerFull or NoLiveWorker."""
        usable: list[WorkerInfo] = []
        alive = False
        for worker_id in candidates:
            worker = self.workers.get(worker_id)
            if worker is None or not worker.responsive:
                continue
            alive = True
            if self.has_room_for_session(worker, counts[worker_id]):
                usable.append(worker)
        if not usable:
            if alive:
                raise WorkerFull("every media worker that could take the session is full")
            raise NoLiveWorker("no media worker that could take the session is available")
        best = min(
            usable,
            key=lambda w: (counts[w.worker_id], w.worker_id != prefer, w.cpu, w.worker_id),
        )
        return best.worker_id

    def _new_home(self, local_only: bool = False) -> str:
        worker_id = self.least_loaded_worker(local_only)
        if worker_id is None:
            pool = [w for w in self.workers.values() if w.local or not local_only]
            if any(w.responsive for w in pool):
                raise WorkerFull("every media worker's UDP ports are in use")
            raise NoLiveWorker("no media worker is available")
        return worker_id

    def place(self, room: str, kind: SessionKind) -> Placement:
        """Where a new `kind` session of `room` goes now, or raise a PlacementError. The one
        placement policy: reserve_* and the per-worker cap check both use it.

        * A publisher: to the room's home; to the least loaded worker for a new room (it
          becomes the home), and for a room whose home died (to the least loaded *local*
          worker, since the viewers left on its edges must read the new home's rings).
        * A viewer: to the home, unless spreading applies (SPREAD_ROOMS, a local home holding
          SPREAD_THRESHOLD sessions or full): then to the least loaded local worker, the home
          preferred on a tie, with home=<the home> when that is another worker. A viewer of a
          room without a home goes to the least loaded worker that already has the room.
        """
        entry = self.rooms.get(room)
        if kind == "publisher":
            if entry is None:
                return Placement(self._new_home())
            if entry.home is None:
                return Placement(self._new_home(local_only=True))
            self._check_worker(entry.home)
            return Placement(entry.home)
        if entry is None:
            raise RoomNotFound(f"room {room!r} does not exist (no active publisher)")
        counts = self.session_counts()
        if entry.home is None:
            return Placement(self._least_loaded_of(sorted(self.workers_of_room(room)), counts))
        home = self.workers.get(entry.home)
        if home is None or not self._spreads(home, counts[home.worker_id]):
            self._check_worker(entry.home)
            return Placement(entry.home)
        local = sorted(w.worker_id for w in self.workers.values() if w.local)
        worker_id = self._least_loaded_of(local, counts, prefer=home.worker_id)
        return Placement(worker_id, "" if worker_id == home.worker_id else home.worker_id)

    def _spreads(self, home: WorkerInfo, held: int) -> bool:
        """New viewers of rooms homed on `home` may go to other local workers."""
        if not (self.spread_rooms and home.local):
            return False
        return held >= self.spread_threshold or not self.has_room_for_session(home, held)

    def worker_for_room(self, room: str, kind: SessionKind) -> str | None:
        try:
            return self.place(room, kind).worker_id
        except PlacementError:
            return None

    # --- sessions -----------------------------------------------------------------------

    def reserve_publisher(
        self, room: str, session_id: str, etag: str, ice_ufrag: str, ice_pwd: str
    ) -> SessionEntry:
        entry = self.rooms.get(room)
        if entry is not None and entry.publisher is not None:
            raise PublisherExists(f"room {room!r} already has a publisher")
        placement = self.place(room, "publisher")
        if entry is None:
            entry = self.rooms[room] = RoomEntry(room, placement.worker_id)
        entry.home = placement.worker_id
        entry.publisher = session_id
        return self._add_session(
            SessionEntry(
                session_id, room, "publisher", placement.worker_id, etag, ice_ufrag, ice_pwd
            )
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
        placement = self.place(room, "subscriber")
        entry.subscribers.add(session_id)
        return self._add_session(
            SessionEntry(
                session_id,
                room,
                "subscriber",
                placement.worker_id,
                etag,
                ice_ufrag,
                ice_pwd,
                home=placement.home,
            )
        )

    def _add_session(self, session: SessionEntry) -> SessionEntry:
        self.sessions[session.session_id] = session
        self.on_room_change(session.room)
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
        self.on_room_change(session.room)
        self.on_session_removed(session)
        return session

    def mark_connected(self, session_id: str) -> bool:
        session = self.sessions.get(session_id)
        if session is None:
            return False
        session.connected = True
        self.on_room_change(session.room)
        return True

    def sessions_of_worker(self, worker_id: str) -> Iterable[SessionEntry]:
        return [s for s in self.sessions.values() if s.worker_id == worker_id]


# --- nodes (issue 13): which gateway serves a room -------------------------------------------


class NodeDirectory(Protocol):
    """Which node (gateway) serves a room or a session, above the per-node SessionDirectory.

    `SingleNode` (the default: one gateway, no shared state) serves everything here;
    gateway/cluster/ implements it over Redis for several nodes. The WHIP/WHEP handlers ask
    it before placing a session on a local worker: None means "serve it here", a URL means
    "307 there". Its refusals (the shared directory unreachable, a room that moved while a
    redirect was on its way) are raised as gateway.http.errors.HttpError.
    """

    @property
    def node_id(self) -> str: ...

    def new_session_id(self) -> str:
        """A new session id: 192 random bits (the URL is the session's credential), prefixed
        by the node's id when there are several, so that any node can tell the holder."""
        ...

    def location(self, path: str) -> str:
        """The Location of a resource at `path` on this node (absolute with several nodes)."""
        ...

    async def route_endpoint(self, kind: SessionKind, room: str, target: str) -> str | None:
        """For a WHIP/WHEP POST of `room` (`target`: its path and query): None to serve it
        here, or the absolute URL of the node to redirect it to (307)."""
        ...

    async def route_session(self, session_id: str, target: str) -> str | None:
        """For a request on a session this node does not hold: the URL of the node that holds
        it (307), or None (404 here)."""
        ...

    def not_ready(self) -> str | None:
        """Why this node cannot take new rooms now (/readyz says it), or None."""
        ...


class SingleNode:
    """The NodeDirectory of a gateway alone: everything is served here, Locations relative."""

    node_id = ""

    def new_session_id(self) -> str:
        return secrets.token_urlsafe(24)

    def location(self, path: str) -> str:
        return path

    async def route_endpoint(self, kind: SessionKind, room: str, target: str) -> str | None:
        return None

    async def route_session(self, session_id: str, target: str) -> str | None:
        return None

    def not_ready(self) -> str | None:
        return None
