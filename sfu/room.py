"""A room on one worker (mediasoup's Router): the parent of its sessions and forwarders.

A room is made by its worker and makes its sessions (`open_session`): at most one
publisher, any number of viewers, and one TrackForwarder per media kind that outlives
publishers. A session closed by its user or by itself tells its room, which forgets it and
closes itself once nobody is left (`session_closed`); closing the room (`close`, from its
worker) closes every session as their parent. Either way the worker learns of each closed
session and of the room's end through its RoomEvents.

Other local workers may follow a room (sfu/plane/): its *followers* (one per edge worker)
keep it open while it has no session of its own, so that their viewers wait for the next
publisher here. On an edge, the room has viewers only, and its forwarders' source is the
home's ring.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from ipc.messages import FailureCode
from sfu.media import ForwardingStats, InstantStart, TrackForwarder
from sfu.session import PublisherSession, Session, SessionKind, SessionSettings, SubscriberSession

log = logging.getLogger(__name__)


class RoomEvents(Protocol):
    """What a room tells its worker."""

    def session_connected(self, session: Session) -> None: ...

    def session_first_packet(self, session: Session) -> None: ...

    def session_closed(self, session: Session, reason: str) -> None: ...

    def room_closed(self, room: Room) -> None: ...

    def codecs_changed(self, room: Room) -> None: ...


class Unobserved:
    """The events of a room that no worker watches (tests and tools build such rooms)."""

    def session_connected(self, session: Session) -> None:
        pass

    def session_first_packet(self, session: Session) -> None:
        pass

    def session_closed(self, session: Session, reason: str) -> None:
        pass

    def room_closed(self, room: Room) -> None:
        pass

    def codecs_changed(self, room: Room) -> None:
        pass


class RoomRefusal(Exception):
    """The room cannot take this session; `code` is the ipc failure code."""

    def __init__(self, code: FailureCode, message: str) -> None:
        super().__init__(message)
        self.code: FailureCode = code


class Room:
    def __init__(
        self,
        name: str,
        settings: SessionSettings,
        events: RoomEvents | None = None,
        instant_start: InstantStart | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.stats = ForwardingStats()
        self.instant_start = instant_start
        self._events: RoomEvents = events if events is not None else Unobserved()
        self.forwarders: dict[str, TrackForwarder] = {}
        # The codecs of the latest publisher; viewers negotiate these, and a later publisher
        # is steered to them so that connected viewers keep playing across a republish.
        self.codecs: dict[str, RTCRtpCodecParameters] = {}
        self.sessions: dict[str, Session] = {}
        self.publisher: PublisherSession | None = None
        # Edge workers reading this room's rings (sfu.plane.home.Follower), one per worker.
        self.followers: set[object] = set()
        self.closed = False

    # --- children ---------------------------------------------------------------------

    def open_session(self, kind: SessionKind, session_id: str) -> Session:
        """A new session of this room (its offer still to be answered); RoomRefusal when the
        room has a publisher already, or a viewer comes before any publisher."""
        if self.closed:
            raise RoomRefusal("no_room", f"room {self.name!r} is closing")
        session: Session
        if kind == "publisher":
            if self.publisher is not None:
                raise RoomRefusal("publisher_exists", f"room {self.name!r} already has a publisher")
            session = self.publisher = PublisherSession(self, session_id, self.settings)
        else:
            if not self.codecs:
                raise RoomRefusal("no_room", f"room {self.name!r} has no publisher")
            session = SubscriberSession(self, session_id, self.settings)
        self.sessions[session_id] = session
        return session

    async def discard(self, session: Session) -> None:
        """A session whose opening failed: forgotten first (so that nothing aiortc raises
        can leave it squatting the room), released, and reported to nobody."""
        self._forget(session)
        await session.abort()
        self._close_if_empty()

    def session_connected(self, session: Session) -> None:
        self._events.session_connected(session)

    def session_first_packet(self, session: Session) -> None:
        self._events.session_first_packet(session)

    def session_closed(self, session: Session, reason: str) -> None:
        """A session closed by its user or by itself."""
        self._forget(session)
        self._events.session_closed(session, reason)
        self._close_if_empty()

    def report_closed(self, session: Session, reason: str) -> None:
        """A session this room closed (it was forgotten already)."""
        self._events.session_closed(session, reason)

    def _forget(self, session: Session) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
        if self.publisher is session:
            self.publisher = None

    def _close_if_empty(self) -> None:
        if not self.sessions and not self.followers and not self.closed:
            self._finish()

    def add_follower(self, follower: object) -> None:
        self.followers.add(follower)

    def remove_follower(self, follower: object) -> None:
        """An edge stopped following (or died): the room closes if nobody else is left."""
        self.followers.discard(follower)
        self._close_if_empty()

    # --- forwarders ----------------------------------------------------------------------

    def forwarder(self, kind: str) -> TrackForwarder:
        forwarder = self.forwarders.get(kind)
        if forwarder is None:
            forwarder = self.forwarders[kind] = TrackForwarder(kind, self.stats, self.instant_start)
        return forwarder

    def publisher_codecs_changed(self, codecs: dict[str, RTCRtpCodecParameters]) -> None:
        self.codecs.update(codecs)
        self._events.codecs_changed(self)

    @property
    def subscribers(self) -> int:
        return sum(1 for session in self.sessions.values() if session.kind == "subscriber")

    @property
    def is_empty(self) -> bool:
        return not self.sessions and not self.followers

    async def close_if_empty(self, reason: str) -> None:
        """Close a room nobody uses (an edge room whose follow failed)."""
        if self.is_empty:
            await self.close(reason)

    # --- closing -----------------------------------------------------------------------

    async def close(self, reason: str) -> None:
        """Close every session as their parent, then the forwarders; idempotent."""
        if self.closed:
            return
        sessions = list(self.sessions.values())
        self.sessions.clear()
        self.followers.clear()
        self.publisher = None
        self.closed = True  # no session may join while the others close
        results = await asyncio.gather(
            *(session.parent_closed(reason) for session in sessions), return_exceptions=True
        )
        for session, result in zip(sessions, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("closing session %s failed: %r", session.id[:8], result)
        self._finish()

    def _finish(self) -> None:
        self.closed = True
        for forwarder in self.forwarders.values():
            forwarder.close()
        self.forwarders.clear()
        self._events.room_closed(self)
