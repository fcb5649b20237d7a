"""TrackForwarder: one media kind of one room, composed of the per-packet stages.

Per inbound packet, in this order:

    PacketSource ─RtpView─▶ SourceState ─▶ PacketCache ─▶ GopCache ─▶ Mirror ─▶ Fanout ─▶ …
                            SSRC, RTX,     NACKs          instant     shared    audio     Viewer-
                            epochs                        start       memory    level     Stage
                                                          (CatchUp)   ring                (Output)
    then the taps (recordings).

One call per inbound packet (`receive`): no coroutine, queue hop, logging or second parse
on the way; each stage is a plain method call on values the view already holds.

On an *edge* worker (the room's publisher is on another worker of the host, sfu/plane/) the
track's source is a reader of the home's ring, which hands on packets the home already
switched, unwrapped and keyed: `deliver` runs the fan-out part only, and the track's
`History` (the ring) answers NACKs and gives joiners their backlog.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from ipc.shm.ring import FLAG_KEYFRAME, FLAG_LEVEL
from sfu.codecs import CodecKey
from sfu.media.cache import CachedPacket, PacketCache, Retransmitter
from sfu.media.clock import RUNNING_LOOP, Clock, Scheduler
from sfu.media.fanout import Fanout, ViewerStage
from sfu.media.instant_start import CatchUp, GopCache, InstantStart
from sfu.media.keyframes import KEYFRAME_TESTS, KeyframeRequests, KeyframeTest, keyframe_test
from sfu.media.packet import PADDING_BIT, RtpView, find_extension
from sfu.media.resolution import SizeReader, size_reader
from sfu.media.source import (
    REJECTED,
    RTX_STALE,
    PacketSource,
    SourceInfo,
    SourceState,
)
from sfu.media.stats import ForwardingStats, TrackStats

KeyframeRequester = Callable[[], None]
# A synchronous observer of every forwarded packet (a recorder): (seq, ts, marker, payload,
# epoch). It must not block or do I/O: it runs on the per-packet path.
PacketTap = Callable[[int, int, int, bytes, int], None]


class Mirror(Protocol):
    """A copy of a track's forwarded packets for other workers (sfu/plane/home.py: a
    shared-memory ring). `write` runs per packet: it must not block, log or await."""

    def write(
        self, seq: int, timestamp: int, flags: int, epoch: int, level: int, payload: bytes
    ) -> None:
        """flags: the packet's padding and marker bits, FLAG_KEYFRAME, FLAG_LEVEL."""

    def new_generation(self) -> None:
        """A new source feeds the track."""

    def close(self) -> None: ...


class History(Protocol):
    """Where NACK answers and joiners' backlog come from when a track does not keep them
    itself: an edge reads both from its home's ring (sfu/plane/edge.py)."""

    hits: int
    misses: int

    def answer_nack(self, viewer: Retransmitter, lost: list[int]) -> None: ...

    def backlog(self) -> list[CachedPacket] | None:
        """The packets from the latest keyframe on, for a joining viewer; None if none."""
        ...


class TrackForwarder:
    """Fans one media kind of one room out to every attached viewer; outlives publishers."""

    def __init__(
        self,
        kind: str,
        stats: ForwardingStats,
        instant_start: InstantStart | None = None,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        scheduler: Scheduler = RUNNING_LOOP,
    ) -> None:
        """clock: wall-clock seconds (sender reports, the source-switch silence, the
        keyframe wait); monotonic: the keyframe-request interval; scheduler: the timers of
        keyframe requests and catch-up pacing."""
        self.kind = kind
        self.stats = stats
        self.instant_start = instant_start if instant_start is not None else InstantStart()
        self.source: PacketSource | None = None
        self.codec: CodecKey | None = None  # the latest source's; kept when it goes
        self.state = SourceState()
        self.cache = PacketCache()
        self.fanout = Fanout(stats)
        self.keyframes = KeyframeRequests(clock=monotonic, scheduler=scheduler)
        self.catch_up = CatchUp(self.fanout, clock=clock, scheduler=scheduler)
        # Video with instant start: the group of pictures for joiners, and the gate that
        # holds a new epoch back until its first keyframe. None otherwise (always keyed).
        self.gop_cache: GopCache | None = None
        self.history: History | None = None  # set by a source that keeps the history
        self.mirror: Mirror | None = None  # set while other workers read this track
        self.taps: list[PacketTap] = []
        # The room stats' measurements (sfu.roomstats): per frame and keyframe; the
        # per-packet counters are the source stage's (`state`).
        self.track_stats = TrackStats()
        self._frame_is_key: KeyframeTest | None = None  # video only
        self._frame_size: SizeReader | None = None
        self._clock = clock
        self._audio_level_id = 0

    # --- the source side ----------------------------------------------------------------

    def connect(self, source: PacketSource, history: History | None = None) -> None:
        """`source` feeds this track from now on (a new epoch).

        history: what answers NACKs and gives joiners their backlog when the source keeps
        its packets itself (a ring reader, which then calls `deliver`); None: this track
        keeps them (the NACK cache, and the group of pictures with instant start)."""
        self.source = source
        codec = self.codec = source.codec
        self.keyframes.requester = source.request_keyframe
        self._audio_level_id = source.audio_level_id
        self.history = history
        video = self.kind == "video"
        self.track_stats = TrackStats()  # a new source's figures (keyframes, size, rates)
        self._frame_is_key = KEYFRAME_TESTS.get(codec.mime_type.lower()) if video else None
        self._frame_size = size_reader(codec.mime_type) if video else None
        if history is None and video and self.instant_start.enabled:
            self.gop_cache = GopCache(keyframe_test(codec.mime_type), self.instant_start.max_bytes)
        else:
            self.gop_cache = None
        self.state.restart()
        self.cache.clear()
        if self.mirror is not None:
            self.mirror.new_generation()

    def disconnect(self, source: PacketSource) -> None:
        if self.source is source:
            self._disconnect()

    def set_source(
        self,
        codec: CodecKey,
        keyframe_requester: KeyframeRequester,
        audio_level_id: int | None = None,
    ) -> None:
        """A new publisher feeds this track from now on (`connect` with plain values).

        audio_level_id: the ssrc-audio-level extension id the publisher negotiated, if any.
        """
        self.connect(SourceInfo(codec, keyframe_requester, audio_level_id or 0))

    def clear_source(self, keyframe_requester: KeyframeRequester) -> None:
        """The publisher that `set_source` connected with this requester went away."""
        source = self.source
        if source is not None and source.request_keyframe == keyframe_requester:
            self._disconnect()

    def _disconnect(self) -> None:
        self.source = None
        self.history = None
        self.keyframes.requester = None
        self.state.forget()

    def new_epoch(self) -> None:
        """The source's packets start a new stream (a ring reader saw its home's source
        change): viewers re-base on the next packet."""
        self.state.restart()

    @property
    def source_ssrc(self) -> int | None:
        return self.state.ssrc

    @property
    def epoch(self) -> int:
        return self.state.epoch

    def receive(self, packet: RtpView, rtx: bool) -> None:
        """One packet from the source (media, or RTX to unwrap), parsed once by the caller."""
        stats = self.stats
        state = self.state
        now = self._clock()
        data = packet.data
        offset = packet.payload_offset
        if rtx:
            seq = state.unwrap_rtx(packet)
            if seq < 0:
                if seq == RTX_STALE:
                    stats.dropped += 1
                return
            offset += 2
        else:
            seq = packet.seq
            verdict = state.accept(packet.ssrc, seq, now)
            if verdict:
                if verdict == REJECTED:
                    stats.dropped += 1
                    return
                # A new epoch: viewers wait for its first keyframe; ask for it now.
                if self.gop_cache is not None:
                    self.gop_cache.restart()
                self.request_keyframe()
        size = len(data)
        if size - packet.padding <= offset:
            return  # padding-only packet: nothing a viewer needs
        stats.packets_in += 1
        stats.bytes_in += size
        state.bytes += size
        ts = packet.timestamp
        flags = data[0] & PADDING_BIT
        marker = packet.marker
        payload = data[offset:]
        epoch = state.epoch
        cached: CachedPacket = (seq, ts, flags, marker, payload, epoch)
        self.cache.put(cached)
        gop_cache = self.gop_cache
        keyed = True
        if gop_cache is not None:
            keyed = gop_cache.add(cached, now)
            if keyed and self.catch_up.joining:
                self.catch_up.add(cached)
        if marker:  # the end of a frame: the room stats' per-frame measurements
            track_stats = self.track_stats
            track_stats.frames += 1
            if gop_cache is not None:  # it tested each packet: a new group is a new keyframe
                group = gop_cache.packets
                if group is not None and group[0] is not track_stats.key_packet:
                    self._keyframe_seen(group[0], now)
            elif self._frame_is_key is not None:
                self._frame_end(seq, ts, now)
        fanout = self.fanout
        mirror = self.mirror
        level = -1
        if fanout.level_slots or mirror is not None:
            level_id = self._audio_level_id
            position = find_extension(data, packet.extension_offset, level_id) if level_id else -1
            level = data[position] if position >= 0 else -1
            if fanout.level_slots:
                fanout.set_audio_level(level)
        if keyed:
            if mirror is not None:
                mirror_flags = flags | marker
                if gop_cache is not None and gop_cache.packets and gop_cache.packets[0] is cached:
                    mirror_flags |= FLAG_KEYFRAME
                if level >= 0:
                    mirror_flags |= FLAG_LEVEL
                mirror.write(seq, ts, mirror_flags, epoch, max(level, 0), payload)
            if fanout.outputs:
                fanout.forward(seq, ts, flags, marker, payload, now, epoch)
        for tap in self.taps:
            tap(seq, ts, marker, payload, epoch)

    def _frame_end(self, seq: int, ts: int, now: float) -> None:
        """The end of a video frame on a track without a group-of-pictures cache (instant
        start off): when the frame's first packet (the one after the previous marker, still
        cached with the same timestamp) starts a keyframe, `_keyframe_seen`."""
        stats = self.track_stats
        first_seq = (stats.frame_end_seq + 1) & 0xFFFF
        stats.frame_end_seq = seq
        is_key = self._frame_is_key
        first = self.cache.get(first_seq)
        if first is not None and first[1] == ts and is_key is not None and is_key(first[4]):
            self._keyframe_seen(first, now)

    def _keyframe_seen(self, first: CachedPacket, now: float) -> None:
        """Once per keyframe, at its end: `first` is its first packet (the picture size)."""
        read_size = self._frame_size
        self.track_stats.key_packet = first
        self.track_stats.keyframe(now, read_size(first[4]) if read_size is not None else None)

    def deliver(
        self, seq: int, ts: int, flags: int, marker: int, payload: bytes, level: int, now: float
    ) -> None:
        """One packet from a ring reader (its home already switched, unwrapped and keyed
        it): the fan-out part of `receive`. level: the audio level byte, or -1."""
        epoch = self.state.epoch
        if self.catch_up.joining:
            self.catch_up.add((seq, ts, flags, marker, payload, epoch))
        fanout = self.fanout
        if fanout.level_slots:
            fanout.set_audio_level(level)
        if fanout.outputs:
            fanout.forward(seq, ts, flags, marker, payload, now, epoch)

    def on_rtp(self, data: bytes, rtx: bool) -> None:
        """`receive` for raw bytes (tests, tools): parse, count a malformed packet as
        dropped. The publisher's ingress parses itself and calls `receive`."""
        try:
            packet = RtpView(data)
        except ValueError:
            self.stats.dropped += 1
            return
        self.receive(packet, rtx)

    # --- the viewer side ------------------------------------------------------------------

    @property
    def outputs(self) -> list[ViewerStage]:
        """The viewers receiving live packets (not those still catching up)."""
        return self.fanout.outputs

    def attach(self, viewer: ViewerStage) -> None:
        """Start feeding a viewer; with instant start, replay the latest keyframe on first."""
        if viewer in self.fanout.outputs or viewer in self.catch_up:
            return
        history = self.history
        backlog: list[CachedPacket] | None
        if history is not None:
            backlog = history.backlog()
        else:
            gop_cache = self.gop_cache
            backlog = gop_cache.packets if gop_cache is not None and gop_cache.keyed else None
        if backlog:
            self.fanout.attach(viewer, live=False)
            self.catch_up.join(viewer, list(backlog))
        else:
            self.fanout.attach(viewer)
        self.request_keyframe()

    def detach(self, viewer: ViewerStage) -> None:
        self.fanout.detach(viewer)
        self.catch_up.leave(viewer)

    def retransmit(self, viewer: ViewerStage, lost: list[int]) -> None:
        """Answer a viewer's NACK (its own sequence numbers) from the cache (or the ring)."""
        history = self.history
        if history is not None:
            history.answer_nack(viewer, lost)
        else:
            self.cache.answer_nack(viewer, lost)

    @property
    def nack_hits(self) -> int:
        history = self.history
        return self.cache.hits + (history.hits if history is not None else 0)

    @property
    def nack_misses(self) -> int:
        history = self.history
        return self.cache.misses + (history.misses if history is not None else 0)

    def request_keyframe(self) -> None:
        """Ask the source for a keyframe, at most once per interval; never lose a request."""
        if self.kind == "video":
            self.keyframes.request()

    def add_tap(self, tap: PacketTap) -> None:
        self.taps.append(tap)

    def remove_tap(self, tap: PacketTap) -> None:
        if tap in self.taps:
            self.taps.remove(tap)

    def close(self) -> None:
        if self.mirror is not None:
            self.mirror.close()
            self.mirror = None
        self.history = None
        self.keyframes.close()
        self.catch_up.close()
        self.fanout.clear()
        self.gop_cache = None
        self.taps.clear()
        self.source = None
