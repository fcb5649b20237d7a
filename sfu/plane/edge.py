"""The edge side of the plane: viewers of a room whose home is another local worker.

The edge links once to each home it follows rooms of (ipc/shm/link.py), handing it a
doorbell (an eventfd this worker's loop watches). Following a room brings its codecs (what
the edge's viewers negotiate) and one ring per track; each ring becomes a `RingSource`, the
PacketSource and History of the room's TrackForwarder here:

* on every doorbell, and on a SAFETY_DRAIN_INTERVAL timer (a lost wake-up, a closed
  ring), it drains the ring into `TrackForwarder.deliver`: the same per-viewer path
  as on the home (rewrite, SRTP protect, sendto);
* the home's source epochs become epochs of this track, so each viewer's sequence numbers
  and timestamps stay continuous across publisher changes, and across a change of home;
* NACKs are answered from the ring, and a joining viewer's backlog (instant start) is the
  ring from its latest keyframe on;
* keyframe requests (viewers' PLI/FIR, rate-limited by the track) go to the home over
  the link; a lapped reader asks for one too.

When the home dies (its link ends) or closes the room, the room stays here with its
viewers and no source: the gateway names a new home when a publisher comes back
(FollowRoom), and the viewers continue without renegotiating.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ipc.shm import messages as pm
from ipc.shm.link import Doorbell, Link, connect
from ipc.shm.ring import FLAG_LEVEL, FLAG_MARKER, FLAG_PADDING, RingReader
from sfu.codecs import CodecKey
from sfu.media.cache import CACHE_SIZE, CachedPacket, Retransmitter
from sfu.media.clock import Clock
from sfu.media.track import TrackForwarder
from sfu.plane.codecs import parameters
from sfu.sdp import codec_key

if TYPE_CHECKING:
    from sfu.room import Room

log = logging.getLogger(__name__)

FOLLOW_TIMEOUT = 2.0  # seconds for a home to answer a Follow (it answers within a loop turn)
SAFETY_DRAIN_INTERVAL = 0.025
NACK_SEARCH = 16  # records either side of the expected index (RTX recoveries reorder)


class FollowRefused(Exception):
    """The home cannot be followed for this room (gone, no such room, no publisher)."""


class RingSource:
    """One track of a followed room: the home's ring, as this track's source and history."""

    __slots__ = (
        "forwarder",
        "reader",
        "_codec",
        "_request",
        "_clock",
        "_deliver_packet",
        "_home_epoch",
        "_now",
        "hits",
        "misses",
    )

    def __init__(
        self,
        forwarder: TrackForwarder,
        reader: RingReader,
        codec: CodecKey,
        request_keyframe: Callable[[], None],
        clock: Clock = time.time,
    ) -> None:
        self.forwarder = forwarder
        self.reader = reader
        self._codec = codec
        self._request = request_keyframe
        self._clock = clock
        self._deliver_packet = forwarder.deliver
        self._home_epoch = -1
        self._now = 0.0
        self.hits = 0
        self.misses = 0

    # --- PacketSource -----------------------------------------------------------------------

    @property
    def codec(self) -> CodecKey:
        return self._codec

    @property
    def audio_level_id(self) -> int:
        return 0  # levels come in the ring's records, already read by the home

    def request_keyframe(self) -> None:
        self._request()

    # --- the per-packet path ----------------------------------------------------------------

    def drain(self) -> None:
        if self.forwarder.source is not self:
            return
        self._now = self._clock()
        if self.reader.drain(self._deliver):
            self.forwarder.request_keyframe()  # lapped: resume decoding at a keyframe

    def _deliver(
        self, seq: int, ts: int, flags: int, epoch: int, level: int, payload: bytes
    ) -> None:
        if epoch != self._home_epoch:
            self._home_epoch = epoch
            self.forwarder.new_epoch()
        self._deliver_packet(
            seq,
            ts,
            flags & FLAG_PADDING,
            flags & FLAG_MARKER,
            payload,
            level if flags & FLAG_LEVEL else -1,
            self._now,
        )

    # --- History --------------------------------------------------------------------------------

    def answer_nack(self, viewer: Retransmitter, lost: list[int]) -> None:
        """Resend what `viewer` lost from the ring (records of the current home epoch)."""
        reader = self.reader
        last = reader.next - 1
        newest = reader.record(last)
        if newest is None:
            self.misses += len(lost)
            return
        newest_seq = newest[0]
        epoch = self.forwarder.epoch
        for out_seq in lost[:CACHE_SIZE]:
            seq = viewer.source_seq(out_seq)
            record = self._find(seq, last - ((newest_seq - seq) & 0xFFFF), last)
            if record is not None and record[3] == self._home_epoch:
                _, ts, flags, _, _, payload = record
                packet = (seq, ts, flags & FLAG_PADDING, flags & FLAG_MARKER, payload, epoch)
                if viewer.retransmit(packet):
                    self.hits += 1
                    continue
            self.misses += 1

    def _find(
        self, seq: int, index: int, last: int
    ) -> tuple[int, int, int, int, int, bytes] | None:
        reader = self.reader
        record = reader.record(index)
        if record is not None and record[0] == seq:
            return record
        low = max(index - NACK_SEARCH, last - reader.slots + 1)
        for candidate in range(low, min(index + NACK_SEARCH, last) + 1):
            record = reader.record(candidate)
            if record is not None and record[0] == seq:
                return record
        return None

    def backlog(self) -> list[CachedPacket] | None:
        """The ring from its latest keyframe to what was delivered live, for a joiner."""
        reader = self.reader
        start, end = reader.last_keyframe, reader.next
        if start < 0 or start >= end or end - start > reader.slots // 2:
            return None
        records = [reader.record(index) for index in range(start, end)]
        first = records[0]
        if first is None:
            return None
        home_epoch = first[3]
        if any(record is None or record[3] != home_epoch for record in records):
            return None
        if home_epoch != self._home_epoch:
            # Not delivered live yet (the ring was prefilled): this epoch starts here.
            self._home_epoch = home_epoch
            self.forwarder.new_epoch()
        epoch = self.forwarder.epoch
        return [
            (seq, ts, flags & FLAG_PADDING, flags & FLAG_MARKER, payload, epoch)
            for seq, ts, flags, _, _, payload in (r for r in records if r is not None)
        ]

    def close(self) -> None:
        """Stop feeding the track (the viewers stay attached) and unmap the ring."""
        self.forwarder.disconnect(self)
        self.reader.close()


class HomeLink:
    """The link to one home, its doorbell, and the rooms followed through it."""

    def __init__(self, home_id: str, link: Link, doorbell: Doorbell) -> None:
        self.home_id = home_id
        self.link = link
        self.doorbell = doorbell
        self.rooms: dict[str, Room] = {}
        self.sources: dict[str, dict[str, RingSource]] = {}  # room -> kind -> source
        self.pending: dict[int, tuple[Room, asyncio.Future[None]]] = {}

    def drain(self) -> None:
        for sources in self.sources.values():
            for source in sources.values():
                source.drain()


class PlaneEdge:
    """This worker's links to the homes of the rooms it has viewers of."""

    def __init__(self, plane: str, worker_id: str, clock: Clock = time.time) -> None:
        self.plane = plane
        self.worker_id = worker_id
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self.homes: dict[str, HomeLink] = {}
        self.followed: dict[str, HomeLink] = {}  # room name -> the home it is followed at
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        self._request_ids = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self.retired_read = 0
        self.retired_lost = 0

    # --- counters -----------------------------------------------------------------------------

    def _sources(self) -> list[RingSource]:
        return [
            s for home in self.homes.values() for k in home.sources.values() for s in k.values()
        ]

    @property
    def packets_read(self) -> int:
        return self.retired_read + sum(s.reader.read for s in self._sources())

    @property
    def packets_lost(self) -> int:
        return self.retired_lost + sum(s.reader.lost for s in self._sources())

    def home_of(self, room: str) -> str | None:
        home = self.followed.get(room)
        return home.home_id if home is not None else None

    # --- following ----------------------------------------------------------------------------

    async def follow(self, room: Room, home_id: str) -> None:
        """Read `room` from `home_id`'s rings from now on; FollowRefused if it cannot be."""
        while True:
            in_flight = self._in_flight.get(room.name)
            if in_flight is None:
                break
            await asyncio.shield(in_flight)  # one follow per room at a time
        if self.home_of(room.name) == home_id:
            return
        done: asyncio.Future[None] = self._loop.create_future()
        self._in_flight[room.name] = done
        try:
            self.forget(room.name)
            home = self._home(home_id)
            answered: asyncio.Future[None] = self._loop.create_future()
            request_id = next(self._request_ids)
            home.pending[request_id] = (room, answered)
            home.link.send(pm.Follow(request_id, room.name))
            try:
                await asyncio.wait_for(answered, FOLLOW_TIMEOUT)
            except TimeoutError:
                raise FollowRefused(f"worker {home_id} did not answer") from None
            finally:
                home.pending.pop(request_id, None)
        finally:
            del self._in_flight[room.name]
            done.set_result(None)

    def _home(self, home_id: str) -> HomeLink:
        home = self.homes.get(home_id)
        if home is not None and not home.link.closed:
            return home
        try:
            link = connect(self.plane, home_id, self._on_message, self._on_close)
        except OSError as exc:
            raise FollowRefused(f"worker {home_id} is not reachable: {exc}") from None
        link.peer_id = home_id
        doorbell = Doorbell()
        home = HomeLink(home_id, link, doorbell)
        self.homes[home_id] = home
        self._loop.add_reader(doorbell.fd, self._wake, home)
        link.send(pm.Join(self.worker_id), [doorbell.fd])
        return home

    def forget(self, room: str) -> None:
        """Stop following `room` (it closed here, or a publisher came here): its viewers
        stay attached to their tracks, without a source."""
        home = self.followed.pop(room, None)
        if home is None:
            return
        self._retire(home, room)
        home.link.send(pm.Unfollow(room))

    def _retire(self, home: HomeLink, room: str) -> None:
        home.rooms.pop(room, None)
        for source in home.sources.pop(room, {}).values():
            self.retired_read += source.reader.read
            self.retired_lost += source.reader.lost
            source.close()
        if self.followed.get(room) is home:
            del self.followed[room]

    # --- the home's messages ------------------------------------------------------------------

    def _home_of_link(self, link: Link) -> HomeLink | None:
        for home in self.homes.values():
            if home.link is link:
                return home
        return None

    def _on_message(self, link: Link, message: pm.PlaneMessage, fds: list[int]) -> None:
        home = self._home_of_link(link)
        try:
            if home is None:
                return
            if isinstance(message, pm.Rings):
                self._rings(home, message, fds)
            elif isinstance(message, pm.Refused):
                pending = home.pending.get(message.request_id)
                if pending is not None and not pending[1].done():
                    pending[1].set_exception(FollowRefused(message.reason))
            elif isinstance(message, pm.RoomGone):
                self._retire(home, message.room)
        finally:
            for fd in fds:
                os.close(fd)

    def _rings(self, home: HomeLink, message: pm.Rings, fds: list[int]) -> None:
        """Attach the rings of a followed room (an answer, or an update)."""
        if message.request_id:
            pending = home.pending.get(message.request_id)
            if pending is None or pending[1].done():
                return  # timed out meanwhile: the home will see our Unfollow
            room, answered = pending
        else:
            update = home.rooms.get(message.room)
            if update is None:
                return
            room, answered = update, None
        if room.closed or room.publisher is not None:
            if answered is not None:
                answered.set_exception(FollowRefused("the room changed while following"))
            home.link.send(pm.Unfollow(message.room))
            return
        codecs = {c.kind: parameters(c) for c in message.codecs}
        room.publisher_codecs_changed(codecs)
        sources = home.sources.setdefault(room.name, {})
        for track, fd in zip(message.tracks, fds, strict=False):
            current = sources.get(track.kind)
            if current is not None and current.reader.ring_id == track.ring_id:
                continue
            codec = room.codecs.get(track.kind)
            try:
                reader = RingReader(fd, track.ring_id)
                key = codec_key(codec) if codec is not None else None
            except (OSError, ValueError) as exc:
                log.warning("room %s: cannot map the %s ring: %s", room.name, track.kind, exc)
                continue
            if key is None:
                reader.close()
                continue
            if current is not None:
                self.retired_read += current.reader.read
                self.retired_lost += current.reader.lost
                current.close()
            forwarder = room.forwarder(track.kind)
            source = RingSource(
                forwarder,
                reader,
                key,
                self._keyframe_requester(home, room.name, track.kind),
                self._clock,
            )
            forwarder.connect(source, history=source)
            sources[track.kind] = source
        home.rooms[room.name] = room
        self.followed[room.name] = home
        if answered is not None:
            answered.set_result(None)
        self._start_timer()

    @staticmethod
    def _keyframe_requester(home: HomeLink, room: str, kind: str) -> Callable[[], None]:
        message = pm.KeyframeRequest(room, kind)

        def request() -> None:
            home.link.send(message)

        return request

    def _on_close(self, link: Link) -> None:
        """The home died (or closed the link): its rooms stay here, without a source."""
        home = self._home_of_link(link)
        if home is None:
            return
        del self.homes[home.home_id]
        self._loop.remove_reader(home.doorbell.fd)
        home.doorbell.close()
        for room in list(home.rooms):
            self._retire(home, room)
        for _room, answered in home.pending.values():
            if not answered.done():
                answered.set_exception(FollowRefused(f"worker {home.home_id} went away"))
        log.info("plane: link to %s closed; its rooms wait for a new home", home.home_id)

    # --- draining -------------------------------------------------------------------------------

    def _wake(self, home: HomeLink) -> None:
        home.doorbell.clear()
        home.drain()

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(SAFETY_DRAIN_INTERVAL, self._tick)

    def _tick(self) -> None:
        self._timer = None
        for home in list(self.homes.values()):
            for room, sources in list(home.sources.items()):
                if any(source.reader.writer_closed for source in sources.values()):
                    self._retire(home, room)  # the home closed the rings: nothing more comes
            home.drain()
        if self.followed:
            self._start_timer()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for home in list(self.homes.values()):
            home.link.close()
