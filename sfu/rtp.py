"""Pure RTP/RTCP helpers beside the per-packet path: no I/O, errors are ValueError.

Reading an RTP header is sfu.media.packet's (`RtpView`, the one parser) and writing a
viewer's header is sfu.media.fanout's (`header_template`); `payload_offset` is re-exported
here for tools that look at raw packets.
"""

from __future__ import annotations

from sfu.media.packet import payload_offset

__all__ = [
    "AUDIO_LEVEL_URI",
    "MID_URI",
    "is_rtcp",
    "parse_nack_fci",
    "payload_offset",
    "seq_newer",
]

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192-223 in the second byte."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_nack_fci(fci_pairs: list[tuple[int, int]]) -> list[int]:
    """(PID, BLP) pairs -> lost sequence numbers, wrapped to 16 bits.

    aiortc's RtcpRtpfbPacket.lost does not wrap (a NACK for 65535 with BLP bits yields
    65536...), so callers mask with this helper's semantics.
    """
    lost: list[int] = []
    for pid, blp in fci_pairs:
        lost.append(pid & 0xFFFF)
        for bit in range(16):
            if blp & (1 << bit):
                lost.append((pid + bit + 1) & 0xFFFF)
    return lost


def seq_newer(a: int, b: int) -> bool:
    """True when 16-bit sequence number a comes after b (RFC 3550 arithmetic)."""
    return a != b and ((a - b) & 0xFFFF) < 0x8000
