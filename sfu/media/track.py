"""TrackForwarder: one media kind of one room, composed of the per-packet stages.

Per inbound packet, in this order:

    PacketSource ─RtpView─▶ SourceState ─▶ PacketCache ─▶ GopCache ─▶ Fanout ─▶ ViewerStage…
                            SSRC, RTX,     NACKs          instant     audio      (Output)
                            epochs                        start       level
                                                          (CatchUp)
    then the taps (recordings).

One call per inbound packet (`receive`): no coroutine, queue hop, logging or second parse
on the way; each stage is a plain method call on values the view already holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sfu.codecs import CodecKey
from sfu.media.cache import CachedPacket, PacketCache
from sfu.media.clock import RUNNING_LOOP, Clock, Scheduler
from sfu.media.fanout import Fanout, ViewerStage
from sfu.media.instant_start import CatchUp, GopCache, InstantStart
from sfu.media.keyframes import KeyframeRequests, keyframe_test
from sfu.media.packet import PADDING_BIT, RtpView, find_extension
from sfu.media.source import (
    REJECTED,
    RTX_STALE,
    PacketSource,
    SourceInfo,
    SourceState,
)
from sfu.media.stats import ForwardingStats

KeyframeRequester = Callable[[], None]
# A synchronous observer of every forwarded packet (a recorder): (seq, ts, marker, payload,
# epoch). It must not block or do I/O: it runs on the per-packet path.
PacketTap = Callable[[int, int, int, bytes, int], None]


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
        self.taps: list[PacketTap] = []
        self._clock = clock
        self._audio_level_id = 0

    # --- the source side ----------------------------------------------------------------

    def connect(self, source: PacketSource) -> None:
        """`source` feeds this track from now on (a new epoch)."""
        self.source = source
        codec = self.codec = source.codec
        self.keyframes.requester = source.request_keyframe
        self._audio_level_id = source.audio_level_id
        if self.kind == "video" and self.instant_start.enabled:
            self.gop_cache = GopCache(keyframe_test(codec.mime_type), self.instant_start.max_bytes)
        else:
            self.gop_cache = None
        self.state.restart()
        self.cache.clear()

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
        self.keyframes.requester = None
        self.state.forget()

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
        if len(data) - packet.padding <= offset:
            return  # padding-only packet: nothing a viewer needs
        stats.packets_in += 1
        stats.bytes_in += len(data)
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
        fanout = self.fanout
        if fanout.level_slots:
            level_id = self._audio_level_id
            position = find_extension(data, packet.extension_offset, level_id) if level_id else -1
            fanout.set_audio_level(data[position] if position >= 0 else -1)
        if keyed and fanout.outputs:
            fanout.forward(seq, ts, flags, marker, payload, now, epoch)
        for tap in self.taps:
            tap(seq, ts, marker, payload, epoch)

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
        gop_cache = self.gop_cache
        backlog = gop_cache.packets if gop_cache is not None and gop_cache.keyed else None
        if backlog is not None:
            self.fanout.attach(viewer, live=False)
            self.catch_up.join(viewer, list(backlog))
        else:
            self.fanout.attach(viewer)
        self.request_keyframe()

    def detach(self, viewer: ViewerStage) -> None:
        self.fanout.detach(viewer)
        self.catch_up.leave(viewer)

    def retransmit(self, viewer: ViewerStage, lost: list[int]) -> None:
        """Answer a viewer's NACK (its own sequence numbers) from the cache."""
        self.cache.answer_nack(viewer, lost)

    @property
    def nack_hits(self) -> int:
        return self.cache.hits

    @property
    def nack_misses(self) -> int:
        return self.cache.misses

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
        self.keyframes.close()
        self.catch_up.close()
        self.fanout.clear()
        self.gop_cache = None
        self.taps.clear()
        self.source = None
