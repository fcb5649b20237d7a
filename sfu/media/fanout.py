"""The fan-out: one Output per viewer, fed every forwarded packet of a track.

Each Output owns a preformatted header (`header_template`: the 12-byte RTP header, then a
one-byte-header extension block with the viewer's MID and, for audio, an audio-level
slot). Per packet it packs payload type, marker, sequence number, timestamp and SSRC into
that header in place, concatenates the payload once, and sends: SRTP protect and sendto
on the viewer's nominated ICE pair, synchronously (sfu.aiortc_adapter.SrtpSendPath).

Offsets: the first packet of each source epoch re-bases the output's sequence-number and
timestamp offsets so that the viewer's stream continues monotonic on its own SSRC (no
renegotiation, no SRTP replay trouble across a republish).

Audio level: the Fanout copies the source's audio-level byte into the slot of each
viewer's header that asked for one (`ViewerStage.level_slot`), or blanks the slot (two
padding bytes) when the source sent none, before the packet is fanned out.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from typing import Protocol

from sfu.codecs import CodecKey
from sfu.media.cache import CachedPacket
from sfu.media.packet import (
    EXTENSION_BIT,
    ONE_BYTE_EXTENSION_PROFILE,
    PADDING_BIT,
    RTP_VERSION_BITS,
)
from sfu.media.stats import ForwardingStats

BYTE1_SEQ_TS_SSRC = struct.Struct("!BHII")
U16 = struct.Struct("!H")

# In a template built with an audio-level slot, the slot's two bytes (element header, then
# the level) sit right after the 4-byte extension header.
AUDIO_LEVEL_SLOT = 16

SendFunction = Callable[[bytes], None]


def header_template(
    mid_extension_id: int | None, mid: str | None, audio_level_id: int | None = None
) -> bytearray:
    """A 12-byte RTP header followed by a one-byte-header extension block.

    Browsers demultiplex on the MID extension until they have learned the SSRC, so every
    forwarded packet carries the viewer's own MID under the viewer's own extension id. With
    `audio_level_id`, the block starts with a 2-byte audio-level slot at AUDIO_LEVEL_SLOT,
    which the fan-out fills per packet (or zeroes: two padding bytes) in place.
    """
    header = bytearray(12)
    header[0] = RTP_VERSION_BITS
    elements = b""
    if audio_level_id is not None:
        if not 1 <= audio_level_id <= 14:
            raise ValueError("audio level does not fit a one-byte header extension")
        elements += b"\x00\x00"  # padding until the first packet brings a level
    if mid_extension_id is not None and mid:
        value = mid.encode("ascii")
        if not 1 <= mid_extension_id <= 14 or not 1 <= len(value) <= 16:
            raise ValueError("MID does not fit a one-byte header extension")
        elements += bytes([(mid_extension_id << 4) | (len(value) - 1)]) + value
    if not elements:
        return header
    elements += b"\x00" * (-len(elements) % 4)
    header[0] |= EXTENSION_BIT
    header += U16.pack(ONE_BYTE_EXTENSION_PROFILE) + U16.pack(len(elements) // 4) + elements
    return header


class ViewerStage(Protocol):
    """What the fan-out feeds: per viewer, the last stage before its socket.

    Today that is an Output. A per-viewer stage in front of one (simulcast layer selection,
    say) implements the same four methods and passes on what it keeps. `forward` runs once
    per packet and viewer: it must not block, log, await or parse.
    """

    def forward(
        self, seq: int, ts: int, flags: int, marker: int, payload: bytes, now: float, epoch: int
    ) -> None:
        """One packet, in the source's numbering, of source epoch `epoch`."""

    def retransmit(self, packet: CachedPacket) -> bool:
        """Resend a cached packet (a NACK); False when it cannot be."""
        ...

    def source_seq(self, out_seq: int) -> int:
        """The source's sequence number for one this viewer received (for NACKs)."""
        ...

    def level_slot(self) -> tuple[bytearray, int] | None:
        """(header, element byte) where the source's audio level goes, if anywhere."""
        ...


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
        an audio-level slot (header_template)."""
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

    def level_slot(self) -> tuple[bytearray, int] | None:
        if not self.audio_level_id:
            return None
        # One-byte element header: the viewer's id, length 1 (encoded as 0).
        return self.header, self.audio_level_id << 4


class Fanout:
    """The viewers of one track that receive its live packets, and their audio-level slots.

    `outputs` are the live viewers; a viewer that is still catching up
    (sfu.media.instant_start.CatchUp) is attached but not live yet.
    """

    __slots__ = ("outputs", "stats", "level_slots")

    def __init__(self, stats: ForwardingStats) -> None:
        self.outputs: list[ViewerStage] = []
        self.stats = stats
        # (viewer, its header, its element byte) for every attached viewer with a slot
        self.level_slots: list[tuple[ViewerStage, bytearray, int]] = []

    def attach(self, viewer: ViewerStage, live: bool = True) -> None:
        slot = viewer.level_slot()
        if slot is not None:
            self.level_slots.append((viewer, *slot))
        if live:
            self.outputs.append(viewer)

    def go_live(self, viewer: ViewerStage) -> None:
        self.outputs.append(viewer)

    def detach(self, viewer: ViewerStage) -> None:
        if viewer in self.outputs:
            self.outputs.remove(viewer)
        self.level_slots = [s for s in self.level_slots if s[0] is not viewer]

    def clear(self) -> None:
        self.outputs.clear()
        self.level_slots.clear()

    def set_audio_level(self, level: int) -> None:
        """The level byte of the packet about to be forwarded (RFC 6464), or -1 for none."""
        if level < 0:
            for _, header, _ in self.level_slots:
                header[AUDIO_LEVEL_SLOT] = 0  # two padding bytes
                header[AUDIO_LEVEL_SLOT + 1] = 0
            return
        for _, header, element in self.level_slots:
            header[AUDIO_LEVEL_SLOT] = element
            header[AUDIO_LEVEL_SLOT + 1] = level

    def forward(
        self, seq: int, ts: int, flags: int, marker: int, payload: bytes, now: float, epoch: int
    ) -> None:
        """One packet to every live viewer."""
        outputs = self.outputs
        for output in outputs:
            output.forward(seq, ts, flags, marker, payload, now, epoch)
        stats = self.stats
        stats.packets_out += len(outputs)
        stats.bytes_out += len(outputs) * len(payload)
