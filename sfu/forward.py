"""The per-packet path: one TrackForwarder per room and media kind, one Output per viewer.

A TrackForwarder outlives publishers: a new publish in the same room feeds the same
forwarder, which starts a new source epoch; each Output re-bases its sequence-number and
timestamp offsets on the first packet of a new epoch so that what a viewer receives stays
monotonic on its SSRC (no renegotiation, no SRTP replay trouble).

Per inbound packet: one header read, one payload slice, one cache tuple. Per viewer: one
header pack into a preformatted template, one concatenation, SRTP protect, sendto. No
coroutine, no queue, no logging.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sfu.rtp import (
    BYTE1_SEQ_TS_SSRC,
    MARKER_BIT,
    PADDING_BIT,
    SEQ_TS,
    U16,
    padding_length,
    payload_offset,
    seq_newer,
)

CACHE_SIZE = 1024  # a power of two, and <= the SRTP replay window of 1024
_CACHE_MASK = CACHE_SIZE - 1
KEYFRAME_REQUEST_INTERVAL = 0.5  # seconds between keyframe requests sent to a publisher
# A publisher may restart its encoder under a new SSRC, but a stray packet with another SSRC
# must not hijack the stream: switch only after the current source has been this quiet.
SOURCE_SWITCH_SILENCE = 1.0


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
    ) -> None:
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
        if seq_newer(out_seq, self.last_seq):
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

    def __init__(self, kind: str, stats: ForwardingStats) -> None:
        self.kind = kind
        self.stats = stats
        self.codec: CodecKey | None = None
        self.outputs: list[Output] = []
        self.cache: list[CachedPacket | None] = [None] * CACHE_SIZE
        self.epoch = 0
        self.source_ssrc: int | None = None
        self._source_seen = 0.0
        self.has_media = False
        self._keyframe_requester: KeyframeRequester | None = None
        self._last_keyframe_request = -KEYFRAME_REQUEST_INTERVAL
        self._keyframe_timer: asyncio.TimerHandle | None = None
        self.nack_hits = 0
        self.nack_misses = 0
        self.taps: list[PacketTap] = []

    # --- publisher side ---------------------------------------------------------------

    def set_source(self, codec: CodecKey, keyframe_requester: KeyframeRequester) -> None:
        """A new publisher feeds this track from now on."""
        self.codec = codec
        self._keyframe_requester = keyframe_requester
        self.source_ssrc = None
        self.epoch += 1
        self.cache = [None] * CACHE_SIZE

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
        elif ssrc != self.source_ssrc:
            if self.source_ssrc is not None and now - self._source_seen < SOURCE_SWITCH_SILENCE:
                stats.dropped += 1
                return
            self.source_ssrc = ssrc
            self.epoch += 1
            self._source_seen = now
        else:
            self._source_seen = now
        if len(data) - pad <= offset:
            return  # padding-only packet: nothing a viewer needs
        stats.packets_in += 1
        stats.bytes_in += len(data)
        flags = data[0] & PADDING_BIT
        marker = data[1] & MARKER_BIT
        payload = data[offset:]
        epoch = self.epoch
        self.cache[seq & _CACHE_MASK] = (seq, ts, flags, marker, payload, epoch)
        self.has_media = True
        for output in self.outputs:
            output.forward(seq, ts, flags, marker, payload, now, epoch)
        stats.packets_out += len(self.outputs)
        stats.bytes_out += len(self.outputs) * len(payload)
        for tap in self.taps:
            tap(seq, ts, marker, payload, epoch)

    # --- viewer side --------------------------------------------------------------------

    def attach(self, output: Output) -> None:
        if output not in self.outputs:
            self.outputs.append(output)
        self.request_keyframe()

    def detach(self, output: Output) -> None:
        if output in self.outputs:
            self.outputs.remove(output)

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
        if self._keyframe_timer is not None:
            self._keyframe_timer.cancel()
            self._keyframe_timer = None
        self.outputs.clear()
        self.taps.clear()
        self._keyframe_requester = None
