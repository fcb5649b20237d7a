"""Pure RTP/RTCP helpers for the forwarding path: no I/O, errors are ValueError.

The forwarder never builds aiortc RtpPacket objects: it reads the few header fields it needs
with struct and writes each viewer's header into a preformatted template.
"""

from __future__ import annotations

import struct

RTP_VERSION_BITS = 0x80
PADDING_BIT = 0x20
EXTENSION_BIT = 0x10
MARKER_BIT = 0x80

ONE_BYTE_EXTENSION_PROFILE = 0xBEDE

SEQ_TS = struct.Struct("!HI")
BYTE1_SEQ_TS_SSRC = struct.Struct("!BHII")
U16 = struct.Struct("!H")
SSRC = struct.Struct("!I")

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 demultiplexing: RTCP packet types 192-223 in the second byte."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def payload_offset(data: bytes) -> int:
    """Offset of the payload in an RTP packet; ValueError if the header does not fit."""
    length = len(data)
    if length < 12 or data[0] & 0xC0 != RTP_VERSION_BITS:
        raise ValueError("not an RTP packet")
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & EXTENSION_BIT:
        if offset + 4 > length:
            raise ValueError("truncated RTP header extension")
        offset += 4 + 4 * ((data[offset + 2] << 8) | data[offset + 3])
    if offset > length:
        raise ValueError("truncated RTP header")
    return offset


def padding_length(data: bytes) -> int:
    return data[-1] if data[0] & PADDING_BIT else 0


def header_template(mid_extension_id: int | None, mid: str | None) -> bytearray:
    """A 12-byte RTP header followed by a one-byte-header extension carrying the MID.

    Browsers demultiplex on the MID extension until they have learned the SSRC, so every
    forwarded packet carries the viewer's own MID under the viewer's own extension id.
    """
    header = bytearray(12)
    header[0] = RTP_VERSION_BITS
    if mid_extension_id is None or not mid:
        return header
    value = mid.encode("ascii")
    if not 1 <= mid_extension_id <= 14 or not 1 <= len(value) <= 16:
        raise ValueError("MID does not fit a one-byte header extension")
    element = bytes([(mid_extension_id << 4) | (len(value) - 1)]) + value
    element += b"\x00" * (-len(element) % 4)
    header[0] |= EXTENSION_BIT
    header += U16.pack(ONE_BYTE_EXTENSION_PROFILE) + U16.pack(len(element) // 4) + element
    return header


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
