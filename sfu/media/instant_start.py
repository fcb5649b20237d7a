"""Instant start: the latest group of pictures of a video track, replayed to joining viewers.

`GopCache` keeps the packets from the latest keyframe on (at most `max_bytes`; a group
that outgrows it is dropped until the next keyframe). It also gates a new source epoch:
nothing of an epoch is forwarded before its first keyframe (so that every viewer, old or
new, starts decoding at one), unless none is recognised within KEYFRAME_WAIT_LIMIT (a
codec variant the detector does not know must not stop the media for good).

`CatchUp` sends a joining viewer that group first, rewritten for it and paced
(CATCH_UP_PACKETS per turn, then CATCH_UP_PAUSE), plus the live packets that arrive
meanwhile; the viewer joins the live fan-out in the step that sends its last backlog
packet, so its sequence numbers run on without a gap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sfu.media.cache import CachedPacket
from sfu.media.clock import RUNNING_LOOP, Clock, Scheduler, Timer
from sfu.media.fanout import Fanout, ViewerStage
from sfu.media.keyframes import KeyframeTest

# A joining viewer's catch-up burst is paced: this many packets per loop turn, then a pause,
# so that neither its socket buffer nor the worker's event loop is flooded (~8000 packets/s).
CATCH_UP_PACKETS = 16
CATCH_UP_PAUSE = 0.002
# After a source change, packets wait for a keyframe at most this long (seconds): should
# keyframe detection miss one (a codec variant it does not know), viewers still get media.
KEYFRAME_WAIT_LIMIT = 3.0


@dataclass(frozen=True)
class InstantStart:
    """Keep each video track's packets from its latest keyframe on, for viewers who join.

    A joining viewer gets them (rewritten for it, paced) before the live packets, so its
    decoder starts at once instead of waiting for the publisher's next keyframe. A group of
    pictures that outgrows `max_bytes` is dropped until the next keyframe.
    """

    enabled: bool = True
    max_bytes: int = 4 * 1024 * 1024


class GopCache:
    """The packets from the latest keyframe on, and whether the epoch has had a keyframe."""

    __slots__ = (
        "is_keyframe",
        "max_bytes",
        "wait_limit",
        "packets",
        "size",
        "keyed",
        "_timestamp",
        "_unkeyed_since",
    )

    def __init__(
        self,
        is_keyframe: KeyframeTest,
        max_bytes: int,
        wait_limit: float = KEYFRAME_WAIT_LIMIT,
    ) -> None:
        self.is_keyframe = is_keyframe
        self.max_bytes = max_bytes
        self.wait_limit = wait_limit
        self.packets: list[CachedPacket] | None = None
        self.size = 0
        self.keyed = False
        self._timestamp = -1
        self._unkeyed_since: float | None = None

    def restart(self) -> None:
        """A new epoch: forget the group, and wait for the epoch's first keyframe."""
        self.packets = None
        self.size = 0
        self.keyed = False
        self._timestamp = -1
        self._unkeyed_since = None

    def add(self, packet: CachedPacket, now: float) -> bool:
        """Per packet of the track: keep it if it belongs to the group; True when the epoch
        has had its keyframe (or waited long enough) and the packet may be forwarded."""
        ts = packet[1]
        payload = packet[4]
        if ts != self._timestamp and self.is_keyframe(payload):
            # A new keyframe (not one more packet of the current one, e.g. H264 SPS + IDR).
            self._timestamp = ts
            self.packets = [packet]
            self.size = len(payload)
            self.keyed = True
        elif self.packets is not None:
            self.packets.append(packet)
            self.size += len(payload)
            if self.size > self.max_bytes:
                self.packets = None  # too long to replay: wait for the next keyframe
        elif not self.keyed:
            if self._unkeyed_since is None:
                self._unkeyed_since = now
            elif now - self._unkeyed_since > self.wait_limit:
                self.keyed = True
        return self.keyed


class CatchUp:
    """Paced replay of a backlog to joining viewers, who then join `fanout` live."""

    __slots__ = ("fanout", "packets_per_turn", "pause", "_clock", "_scheduler", "joining", "_timer")

    def __init__(
        self,
        fanout: Fanout,
        clock: Clock = time.time,
        scheduler: Scheduler = RUNNING_LOOP,
        packets_per_turn: int = CATCH_UP_PACKETS,
        pause: float = CATCH_UP_PAUSE,
    ) -> None:
        self.fanout = fanout
        self.packets_per_turn = packets_per_turn
        self.pause = pause
        self._clock = clock
        self._scheduler = scheduler
        self.joining: list[_Joiner] = []
        self._timer: Timer | None = None

    def __contains__(self, viewer: object) -> bool:
        return any(joiner.viewer is viewer for joiner in self.joining)

    def join(self, viewer: ViewerStage, backlog: list[CachedPacket]) -> None:
        """Send `viewer` the backlog (paced), then make it live in the fan-out."""
        self.joining.append(_Joiner(viewer, backlog))
        if self._timer is None:
            self._timer = self._scheduler.call_later(0, self._run)

    def add(self, packet: CachedPacket) -> None:
        """A live packet: every joining viewer gets it after its backlog."""
        for joiner in self.joining:
            joiner.pending.append(packet)

    def leave(self, viewer: ViewerStage) -> None:
        self.joining = [j for j in self.joining if j.viewer is not viewer]

    def _run(self) -> None:
        """Send each joining viewer its next slice; a viewer that has caught up joins the
        live fan-out in the same step, so no packet is missed."""
        self._timer = None
        now = self._clock()
        stats = self.fanout.stats
        still_joining: list[_Joiner] = []
        for joiner in self.joining:
            viewer = joiner.viewer
            pending = joiner.pending
            end = min(joiner.sent + self.packets_per_turn, len(pending))
            for index in range(joiner.sent, end):
                seq, ts, flags, marker, payload, epoch = pending[index]
                viewer.forward(seq, ts, flags, marker, payload, now, epoch)
                stats.bytes_out += len(payload)
            stats.packets_out += end - joiner.sent
            joiner.sent = end
            if end == len(pending):
                self.fanout.go_live(viewer)
            else:
                still_joining.append(joiner)
        self.joining = still_joining
        if still_joining:
            self._timer = self._scheduler.call_later(self.pause, self._run)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.joining.clear()


class _Joiner:
    """A viewer catching up: the packets it still has to receive, and how many it got."""

    __slots__ = ("viewer", "pending", "sent")

    def __init__(self, viewer: ViewerStage, pending: list[CachedPacket]) -> None:
        self.viewer = viewer
        self.pending = pending
        self.sent = 0
