"""The home side of the plane: rings written for the edges that follow this worker's rooms.

Per followed track, a `RingMirror` is the TrackForwarder's Mirror stage: it writes each
forwarded packet once into the track's ring (ipc/shm/ring.py). The first packet a mirror
writes in a loop turn rings its edges' doorbells at once, before this worker fans the
packet out to its own viewers, so that the edges fan out on their cores meanwhile (ringing
only at the end of the turn made edge viewers wait for the home's whole fan-out of a
burst: about 1 ms more at p50 with 25 viewers per worker, bench/README.md); one flush at the
end of the turn (`loop.call_soon`) rings again the doorbells of rings written to since. So
a burst costs each edge one or two wake-ups, and the writer never waits for a reader
(bench/shm_hop.py measured the alternatives; ARCHITECTURE.md has the figures).

A ring is made when the first edge follows the room (prefilled with the track's current
group of pictures, so that an edge's first viewer starts at once, like a home viewer) and
closed when the last edge leaves or the room closes. A room with followers stays open
while it has no session of its own: its edges' viewers wait for the next publisher there.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ipc.shm import messages as pm
from ipc.shm.link import Doorbell, Link, Listener
from ipc.shm.ring import FLAG_KEYFRAME, RingWriter
from sfu.media.track import TrackForwarder
from sfu.plane.codecs import describe

if TYPE_CHECKING:
    from sfu.room import Room

log = logging.getLogger(__name__)


class Bells:
    """The doorbells to ring at the end of this loop turn (one flush per turn)."""

    __slots__ = ("pending", "scheduled", "_loop", "rung")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.pending: list[RingMirror] = []
        self.scheduled = False
        self._loop = loop
        self.rung = 0  # doorbell writes, for the benchmarks

    def schedule(self) -> None:
        self.scheduled = True
        self._loop.call_soon(self.flush)

    def ring_now(self, doorbells: list[Doorbell]) -> None:
        for bell in doorbells:
            bell.ring()
        self.rung += len(doorbells)

    def flush(self) -> None:
        """End of the loop turn: ring the edges of every ring written to since its first
        packet of the turn rang them."""
        self.scheduled = False
        bells: dict[int, Doorbell] = {}
        for mirror in self.pending:
            mirror.dirty = False
            if mirror.ring.write_seq != mirror.rung_at:
                for bell in mirror.doorbells:
                    bells[bell.fd] = bell
        self.pending.clear()
        for bell in bells.values():
            bell.ring()
        self.rung += len(bells)


class RingMirror:
    """A TrackForwarder's Mirror: its forwarded packets, in a ring the edges read."""

    __slots__ = ("ring", "bells", "dirty", "rung_at", "doorbells")

    def __init__(self, kind: str, bells: Bells) -> None:
        self.ring = RingWriter(kind)
        self.bells = bells
        self.dirty = False  # written to in this loop turn
        self.rung_at = 0  # the ring's write_seq when its doorbells were last rung
        self.doorbells: list[Doorbell] = []

    def write(
        self, seq: int, timestamp: int, flags: int, epoch: int, level: int, payload: bytes
    ) -> None:
        ring = self.ring
        ring.write(seq, timestamp, flags, epoch, level, payload)
        if not self.dirty:
            self.dirty = True
            bells = self.bells
            bells.ring_now(self.doorbells)  # the edges start while this worker fans out
            self.rung_at = ring.write_seq
            bells.pending.append(self)
            if not bells.scheduled:
                bells.schedule()

    def new_generation(self) -> None:
        self.ring.new_generation()

    def close(self) -> None:
        self.doorbells.clear()
        self.ring.close()


class Follower:
    """One edge worker, over one link, and the rooms of this home it follows."""

    __slots__ = ("link", "worker_id", "doorbell", "rooms")

    def __init__(self, link: Link) -> None:
        self.link = link
        self.worker_id = ""
        self.doorbell: Doorbell | None = None
        self.rooms: set[str] = set()


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


class PlaneHome:
    """This worker's listener on the plane, and the rings of its followed rooms."""

    def __init__(self, plane: str, worker_id: str, rooms: Mapping[str, Room]) -> None:
        self.rooms = rooms
        self.bells = Bells(asyncio.get_running_loop())
        self.followers: dict[Link, Follower] = {}
        self.listener = Listener(plane, worker_id, self._on_message, self._on_close)

    @property
    def follow_count(self) -> int:
        """(room, edge) pairs: what the heartbeat reports as followers."""
        return sum(len(f.rooms) for f in self.followers.values())

    # --- link events ------------------------------------------------------------------------

    def _on_message(self, link: Link, message: pm.PlaneMessage, fds: list[int]) -> None:
        follower = self.followers.get(link)
        if follower is None:
            follower = self.followers[link] = Follower(link)
        if isinstance(message, pm.Join):
            if follower.doorbell is not None or len(fds) != 1:
                _close_fds(fds)
                log.warning("plane: a Join from pid %d without one doorbell", link.peer_pid)
                link.close()
                return
            follower.worker_id = link.peer_id = message.worker_id[:64]
            follower.doorbell = Doorbell(fds[0])
            return
        _close_fds(fds)  # nothing else an edge sends carries descriptors
        if isinstance(message, pm.Follow):
            self._follow(follower, message)
        elif isinstance(message, pm.Unfollow):
            self._unfollow(follower, message.room)
        elif isinstance(message, pm.KeyframeRequest):
            room = self.rooms.get(message.room)
            forwarder = room.forwarders.get(message.kind) if room is not None else None
            if forwarder is not None and message.room in follower.rooms:
                forwarder.request_keyframe()  # rate-limited there, as a home viewer's PLI

    def _on_close(self, link: Link) -> None:
        follower = self.followers.pop(link, None)
        if follower is None:
            return
        for name in list(follower.rooms):
            self._unfollow(follower, name)
        if follower.doorbell is not None:
            follower.doorbell.close()
            follower.doorbell = None

    # --- following ----------------------------------------------------------------------------

    def _follow(self, follower: Follower, request: pm.Follow) -> None:
        room = self.rooms.get(request.room)
        reason = ""
        if follower.doorbell is None:
            reason = "join first"
        elif room is None or room.closed:
            reason = f"room {request.room!r} is not on this worker"
        elif not room.codecs:
            reason = f"room {request.room!r} has no publisher"
        if reason or room is None:
            follower.link.send(pm.Refused(request.request_id, request.room, reason))
            return
        follower.rooms.add(room.name)
        room.add_follower(follower)
        self._send_rings(follower, room, request.request_id)

    def _send_rings(self, follower: Follower, room: Room, request_id: int) -> None:
        tracks: list[pm.TrackRing] = []
        fds: list[int] = []
        for kind, forwarder in room.forwarders.items():
            mirror = self._mirror(forwarder)
            doorbell = follower.doorbell
            if doorbell is not None and doorbell not in mirror.doorbells:
                mirror.doorbells.append(doorbell)
            ring = mirror.ring
            tracks.append(pm.TrackRing(kind, ring.ring_id, ring.slots, ring.stride))
            fds.append(ring.fd)
        codecs = [describe(kind, codec) for kind, codec in room.codecs.items()]
        follower.link.send(pm.Rings(request_id, room.name, codecs, tracks), fds)

    def _mirror(self, forwarder: TrackForwarder) -> RingMirror:
        mirror = forwarder.mirror
        if isinstance(mirror, RingMirror) and not mirror.ring.closed:
            return mirror
        mirror = RingMirror(forwarder.kind, self.bells)
        gop_cache = forwarder.gop_cache
        if gop_cache is not None and gop_cache.keyed and gop_cache.packets:
            # The group of pictures so far: an edge's first viewer starts from it at once.
            for position, (seq, ts, flags, marker, payload, epoch) in enumerate(gop_cache.packets):
                keyframe = FLAG_KEYFRAME if position == 0 else 0
                mirror.ring.write(seq, ts, flags | marker | keyframe, epoch, 0, payload)
        forwarder.mirror = mirror
        return mirror

    def _unfollow(self, follower: Follower, name: str) -> None:
        follower.rooms.discard(name)
        room = self.rooms.get(name)
        if room is None:
            return
        for forwarder in room.forwarders.values():
            mirror = forwarder.mirror
            if not isinstance(mirror, RingMirror):
                continue
            if follower.doorbell in mirror.doorbells:
                mirror.doorbells.remove(follower.doorbell)
            if not mirror.doorbells:
                forwarder.mirror = None
                mirror.close()
        room.remove_follower(follower)

    # --- what the worker tells us ---------------------------------------------------------

    def codecs_changed(self, room: Room) -> None:
        """A new publisher (or track): followers get the rings and codecs again."""
        for follower in self.followers.values():
            if room.name in follower.rooms:
                self._send_rings(follower, room, 0)

    def room_closed(self, room: Room) -> None:
        """The room closed here (its forwarders closed their rings)."""
        for follower in self.followers.values():
            if room.name in follower.rooms:
                follower.rooms.discard(room.name)
                follower.link.send(pm.RoomGone(room.name))

    def close(self) -> None:
        self.listener.close()
