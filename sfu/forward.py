"""The per-packet path: one TrackForwarder per room and media kind, one Output per viewer.

A TrackForwarder outlives publishers: a new publish in the same room feeds the same
forwarder, which starts a new source epoch; each Output re-bases its sequence-number and
timestamp offsets on the first packet of a new epoch so that what a viewer receives stays
monotonic on its SSRC (no renegotiation, no SRTP replay trouble).

Instant start (video, InstantStart): the forwarder keeps the packets from the latest
keyframe on (bounded in bytes); a joining viewer is sent them first, rewritten for it and
paced, and joins the live fan-out right after the last of them, so its sequence numbers
run on without a gap. A new source epoch is forwarded from its first keyframe on, so every
viewer, old or new, starts decoding at a keyframe.

Per inbound packet: one header read, one payload slice, one cache tuple (and, for video
with instant start, one keyframe test and one list append). Per viewer: one header pack
into a preformatted template, one concatenation, SRTP protect, sendto. No coroutine, no
queue, no logging.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sfu.keyframe import KeyframeTest, keyframe_test
from sfu.rtp import (
    AUDIO_LEVEL_SLOT,
    BYTE1_SEQ_TS_SSRC,
    MARKER_BIT,
    PADDING_BIT,
    SEQ_TS,
    U16,
    extension_element,
    padding_length,
    payload_offset,
)

CACHE_SIZE = 1024  # a power of two, and <= the SRTP replay window of 1024
_CACHE_MASK = CACHE_SIZE - 1
KEYFRAME_REQUEST_INTERVAL = 0.5  # seconds between keyframe requests sent to a publisher
# A publisher may restart its encoder under a new SSRC, but a stray packet with another SSRC
# must not hijack the stream: switch only after the current source has been this quiet.
SOURCE_SWITCH_SILENCE = 1.0
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


@dataclass(frozen=True)
class CodecKey:
    """What must match between a publisher's and a viewer's codec for raw forwarding."""

    mime_type: str  # lower-case, e.g. "video/vp8"
    clock_rate: int
    fmtp: str  # the parameters that matter for the bitstream (H264 profile, packetization)

    def describe(self) -> str:
        name = self.mime_type.split("/", 1)[-1]
        return f"{name}/{self.clock_rate}" + (f" ({self.fmtp})" if self.fmtp else "")


# A cached packet: (seq, timestamp, padding flag, marker, payload, epoch)
CachedPacket = tuple[int, int, int, int, bytes, int]

SendFunction = Callable[[bytes], None]


class ForwardingStats:
    """Counters a worker aggregates into its heartbeat."""

    __slots__ = ("packets_in", "bytes_in", "packets_out", "bytes_out", "dropped", "send_errors")

    def __init__(self) -> None:
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.dropped = 0
        self.send_errors = 0


class SenderReportState(Protocol):
    """What an Output updates for its sender reports (aiortc_adapter.SenderState)."""

    packets: int
    octets: int
    sr_rtp_timestamp: int
    sr_wallclock: float


class Output:
    """One viewer's copy of one track: its SSRC, payload types, MID and offsets."""

    __slots__ = (
        "send",
        "report",
        "clock_rate",
        "ssrc",
        "payload_type",
        "rtx_ssrc",
        "rtx_payload_type",
        "codec",
        "header",
        "rtx_header",
        "seq_offset",
        "ts_offset",
        "epoch",
        "last_seq",
        "rtx_seq",
        "stats",
        "audio_level_id",
    )

    def __init__(
        self,
        *,
        send: SendFunction,
        report: SenderReportState,
        codec: CodecKey,
        ssrc: int,
        payload_type: int,
        rtx_ssrc: int,
        rtx_payload_type: int | None,
        header: bytearray,
        stats: ForwardingStats,
        audio_level_id: int | None = None,
    ) -> None:
        """audio_level_id: the viewer's ssrc-audio-level id, when `header` was built with
        an audio-level slot (sfu.rtp.header_template)."""
        self.send = send
        self.report = report
        self.codec = codec
        self.clock_rate = codec.clock_rate
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.rtx_ssrc = rtx_ssrc
        self.rtx_payload_type = rtx_payload_type
        self.header = header
        self.rtx_header = bytearray(header)
        self.seq_offset = 0
        self.ts_offset = 0
        self.epoch = -1
        # Start low in the sequence space, as aiortc does, to stay clear of SRTP ROC issues.
        self.last_seq = random.randrange(0, 0x8000)
        self.rtx_seq = random.randrange(0, 0x8000)
        self.stats = stats
        self.audio_level_id = audio_level_id or 0

    def rebase(self, seq: int, ts: int, now: float, epoch: int) -> None:
        """Choose offsets so the first packet of a new source continues this stream."""
        report = self.report
        if self.epoch < 0:
            next_ts = random.randrange(0, 1 << 32)
        else:
            elapsed = max(now - report.sr_wallclock, 0.0)
            next_ts = report.sr_rtp_timestamp + max(int(elapsed * self.clock_rate), 1)
        self.seq_offset = (self.last_seq + 1 - seq) & 0xFFFF
        self.ts_offset = (next_ts - ts) & 0xFFFFFFFF
        self.epoch = epoch

    def forward(
        self, seq: int, ts: int, flags: int, marker: int, payload: bytes, now: float, epoch: int
    ) -> None:
        if epoch != self.epoch:
            self.rebase(seq, ts, now, epoch)
        out_seq = (seq + self.seq_offset) & 0xFFFF
        out_ts = (ts + self.ts_offset) & 0xFFFFFFFF
        header = self.header
        header[0] = (header[0] & ~PADDING_BIT) | flags
        BYTE1_SEQ_TS_SSRC.pack_into(
            header, 1, marker | self.payload_type, out_seq, out_ts, self.ssrc
        )
        try:
            self.send(bytes(header) + payload)
        except Exception:
            self.stats.send_errors += 1
            return
        report = self.report
        report.packets += 1
        report.octets += len(payload)
        report.sr_rtp_timestamp = out_ts
        report.sr_wallclock = now
        if (out_seq - self.last_seq) & 0xFFFF < 0x8000:  # seq_newer, inlined: per viewer-packet
            self.last_seq = out_seq

    def retransmit(self, packet: CachedPacket) -> bool:
        """Resend a cached packet to this viewer, RTX-wrapped when RTX was negotiated."""
        seq, ts, flags, marker, payload, epoch = packet
        if epoch != self.epoch:
            return False
        out_seq = (seq + self.seq_offset) & 0xFFFF
        out_ts = (ts + self.ts_offset) & 0xFFFFFFFF
        if self.rtx_payload_type is None:
            header = self.header
            header[0] = (header[0] & ~PADDING_BIT) | flags
            BYTE1_SEQ_TS_SSRC.pack_into(
                header, 1, marker | self.payload_type, out_seq, out_ts, self.ssrc
            )
            packet_bytes = bytes(header) + payload
        else:
            header = self.rtx_header
            header[0] = (header[0] & ~PADDING_BIT) | flags
            BYTE1_SEQ_TS_SSRC.pack_into(
                header, 1, marker | self.rtx_payload_type, self.rtx_seq, out_ts, self.rtx_ssrc
            )
            self.rtx_seq = (self.rtx_seq + 1) & 0xFFFF
            packet_bytes = bytes(header) + U16.pack(out_seq) + payload
        try:
            self.send(packet_bytes)
        except Exception:
            self.stats.send_errors += 1
            return False
        return True

    def source_seq(self, out_seq: int) -> int:
        return (out_seq - self.seq_offset) & 0xFFFF


KeyframeRequester = Callable[[], None]
# A synchronous observer of every forwarded packet (a recorder): (seq, ts, marker, payload,
# epoch). It must not block or do I/O: it runs on the per-packet path.
PacketTap = Callable[[int, int, int, bytes, int], None]


class TrackForwarder:
    """Fans one media kind of one room out to every attached Output."""

    def __init__(
        self, kind: str, stats: ForwardingStats, instant_start: InstantStart | None = None
    ) -> None:
        self.kind = kind
        self.stats = stats
        self.instant_start = instant_start if instant_start is not None else InstantStart()
        self.codec: CodecKey | None = None
        self.outputs: list[Output] = []
        self.cache: list[CachedPacket | None] = [None] * CACHE_SIZE
        self.epoch = 0
        self.source_ssrc: int | None = None
        self._source_seen = 0.0
        self._highest_seq = 0  # of the current source; bounds what a retransmission may be
        self.has_media = False
        self._keyframe_requester: KeyframeRequester | None = None
        self._last_keyframe_request = -KEYFRAME_REQUEST_INTERVAL
        self._keyframe_timer: asyncio.TimerHandle | None = None
        self.nack_hits = 0
        self.nack_misses = 0
        self.taps: list[PacketTap] = []
        # Instant start (video only): None when off. While `keyed` is False (a new source
        # epoch before its first keyframe) nothing is forwarded, so that every viewer, old
        # or new, sees a keyframe first.
        self._is_keyframe: KeyframeTest | None = None
        self.keyed = True
        self.gop: list[CachedPacket] | None = None
        self.gop_bytes = 0
        self._gop_timestamp = -1
        self._unkeyed_since = 0.0
        self._joining: list[_Joiner] = []
        self._catch_up_timer: asyncio.Handle | None = None
        # Audio level (audio only): the publisher's extension id, and the headers to fill.
        self._audio_level_id = 0
        self._level_headers: list[tuple[bytearray, int]] = []

    # --- publisher side ---------------------------------------------------------------

    def set_source(
        self,
        codec: CodecKey,
        keyframe_requester: KeyframeRequester,
        audio_level_id: int | None = None,
    ) -> None:
        """A new publisher feeds this track from now on.

        audio_level_id: the ssrc-audio-level extension id the publisher negotiated, if any.
        """
        self.codec = codec
        self._keyframe_requester = keyframe_requester
        self.source_ssrc = None
        self._audio_level_id = audio_level_id or 0
        if self.kind == "video" and self.instant_start.enabled:
            self._is_keyframe = keyframe_test(codec.mime_type)
        else:
            self._is_keyframe = None
        self._new_epoch()
        self.cache = [None] * CACHE_SIZE

    def _new_epoch(self) -> None:
        self.epoch += 1
        self.gop = None
        self.gop_bytes = 0
        self._gop_timestamp = -1
        self._unkeyed_since = 0.0
        self.keyed = self._is_keyframe is None

    def clear_source(self, keyframe_requester: KeyframeRequester) -> None:
        if self._keyframe_requester is keyframe_requester:
            self._keyframe_requester = None
            self.source_ssrc = None

    def on_rtp(self, data: bytes, ssrc: int, rtx: bool) -> None:
        """One decrypted packet from the publisher (media, or RTX to unwrap)."""
        stats = self.stats
        try:
            offset = payload_offset(data)
            pad = padding_length(data)
        except (ValueError, IndexError):
            stats.dropped += 1
            return
        seq, ts = SEQ_TS.unpack_from(data, 2)
        now = time.time()
        if rtx:
            if len(data) - offset - pad < 3:  # padding-only probe or empty
                return
            seq = (data[offset] << 8) | data[offset + 1]
            offset += 2
            # A retransmission is of the recent past. Forwarding any other sequence number
            # would jump the viewers' SRTP replay windows ahead and make them drop the live
            # stream as too old.
            if (self._highest_seq - seq) & 0xFFFF >= CACHE_SIZE:
                stats.dropped += 1
                return
        elif ssrc != self.source_ssrc:
            if self.source_ssrc is not None and now - self._source_seen < SOURCE_SWITCH_SILENCE:
                stats.dropped += 1
                return
            self.source_ssrc = ssrc
            self._new_epoch()
            self._source_seen = now
            # Viewers wait for the new source's first keyframe: ask for it now, by its SSRC.
            self.request_keyframe()
            self._highest_seq = seq
        else:
            self._source_seen = now
            if (seq - self._highest_seq) & 0xFFFF < 0x8000:
                self._highest_seq = seq
        if len(data) - pad <= offset:
            return  # padding-only packet: nothing a viewer needs
        stats.packets_in += 1
        stats.bytes_in += len(data)
        flags = data[0] & PADDING_BIT
        marker = data[1] & MARKER_BIT
        payload = data[offset:]
        epoch = self.epoch
        packet = (seq, ts, flags, marker, payload, epoch)
        self.cache[seq & _CACHE_MASK] = packet
        self.has_media = True
        is_keyframe = self._is_keyframe
        if is_keyframe is not None:
            self._keep_for_joiners(packet, is_keyframe, now)
        if self._level_headers:
            self._copy_audio_level(data)
        if self.keyed:
            for output in self.outputs:
                output.forward(seq, ts, flags, marker, payload, now, epoch)
            stats.packets_out += len(self.outputs)
            stats.bytes_out += len(self.outputs) * len(payload)
        for tap in self.taps:
            tap(seq, ts, marker, payload, epoch)

    def _keep_for_joiners(
        self, packet: CachedPacket, is_keyframe: KeyframeTest, now: float
    ) -> None:
        """Instant start: track the group of pictures that begins at the latest keyframe."""
        ts = packet[1]
        payload = packet[4]
        if ts != self._gop_timestamp and is_keyframe(payload):
            # A new keyframe (not one more packet of the current one, e.g. H264 SPS + IDR).
            self._gop_timestamp = ts
            self.gop = [packet]
            self.gop_bytes = len(payload)
            self.keyed = True
        elif self.gop is not None:
            self.gop.append(packet)
            self.gop_bytes += len(payload)
            if self.gop_bytes > self.instant_start.max_bytes:
                self.gop = None  # too long to replay: wait for the next keyframe
        elif not self.keyed:
            if not self._unkeyed_since:
                self._unkeyed_since = now
            elif now - self._unkeyed_since > KEYFRAME_WAIT_LIMIT:
                self.keyed = True
        if self.keyed:
            for joiner in self._joining:
                joiner.pending.append(packet)

    def _copy_audio_level(self, data: bytes) -> None:
        """Copy the publisher's audio-level byte into each viewer's slot, or blank the slot."""
        position = extension_element(data, self._audio_level_id) if self._audio_level_id else -1
        if position < 0:
            for header, _ in self._level_headers:
                header[AUDIO_LEVEL_SLOT] = 0  # two padding bytes
                header[AUDIO_LEVEL_SLOT + 1] = 0
            return
        level = data[position]
        for header, element in self._level_headers:
            header[AUDIO_LEVEL_SLOT] = element
            header[AUDIO_LEVEL_SLOT + 1] = level

    # --- viewer side --------------------------------------------------------------------

    def attach(self, output: Output) -> None:
        """Start feeding a viewer; with instant start, replay the latest keyframe on first."""
        if output in self.outputs or any(j.output is output for j in self._joining):
            return
        if output.audio_level_id:
            # One-byte element header: the viewer's id, length 1 (encoded as 0).
            self._level_headers.append((output.header, output.audio_level_id << 4))
        if self.gop is not None and self.keyed:
            self._joining.append(_Joiner(output, list(self.gop)))
            self._schedule_catch_up()
        else:
            self.outputs.append(output)
        self.request_keyframe()

    def detach(self, output: Output) -> None:
        if output in self.outputs:
            self.outputs.remove(output)
        self._joining = [j for j in self._joining if j.output is not output]
        if output.audio_level_id:
            self._level_headers = [h for h in self._level_headers if h[0] is not output.header]

    def _schedule_catch_up(self) -> None:
        if self._catch_up_timer is None:
            loop = asyncio.get_running_loop()
            self._catch_up_timer = loop.call_soon(self._catch_up)

    def _catch_up(self) -> None:
        """Send each joining viewer its next slice of buffered packets; a viewer that has
        caught up joins the live fan-out in the same step, so no packet is missed."""
        self._catch_up_timer = None
        now = time.time()
        still_joining: list[_Joiner] = []
        for joiner in self._joining:
            output = joiner.output
            pending = joiner.pending
            end = min(joiner.sent + CATCH_UP_PACKETS, len(pending))
            for index in range(joiner.sent, end):
                seq, ts, flags, marker, payload, epoch = pending[index]
                output.forward(seq, ts, flags, marker, payload, now, epoch)
                self.stats.bytes_out += len(payload)
            self.stats.packets_out += end - joiner.sent
            joiner.sent = end
            if end == len(pending):
                self.outputs.append(output)
            else:
                still_joining.append(joiner)
        self._joining = still_joining
        if still_joining:
            loop = asyncio.get_running_loop()
            self._catch_up_timer = loop.call_later(CATCH_UP_PAUSE, self._catch_up)

    def retransmit(self, output: Output, lost: list[int]) -> None:
        cache = self.cache
        for out_seq in lost[:CACHE_SIZE]:
            seq = output.source_seq(out_seq)
            packet = cache[seq & _CACHE_MASK]
            if packet is not None and packet[0] == seq and output.retransmit(packet):
                self.nack_hits += 1
            else:
                self.nack_misses += 1

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, at most once per interval; never lose a request."""
        if self.kind != "video" or self._keyframe_requester is None:
            return
        now = time.monotonic()
        wait = self._last_keyframe_request + KEYFRAME_REQUEST_INTERVAL - now
        if wait <= 0:
            self._send_keyframe_request()
        elif self._keyframe_timer is None:
            loop = asyncio.get_running_loop()
            self._keyframe_timer = loop.call_later(wait, self._send_keyframe_request)

    def _send_keyframe_request(self) -> None:
        self._keyframe_timer = None
        self._last_keyframe_request = time.monotonic()
        if self._keyframe_requester is not None:
            self._keyframe_requester()

    def close(self) -> None:
        for timer in (self._keyframe_timer, self._catch_up_timer):
            if timer is not None:
                timer.cancel()
        self._keyframe_timer = None
        self._catch_up_timer = None
        self.outputs.clear()
        self._joining.clear()
        self._level_headers.clear()
        self.gop = None
        self.taps.clear()
        self._keyframe_requester = None


class _Joiner:
    """A viewer catching up: the packets it still has to receive, and how many it got."""

    __slots__ = ("output", "pending", "sent")

    def __init__(self, output: Output, pending: list[CachedPacket]) -> None:
        self.output = output
        self.pending = pending
        self.sent = 0
