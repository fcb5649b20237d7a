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
TWO_BYTE_EXTENSION_PROFILE = 0x1000

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


AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
# In a template built with an audio-level slot, the slot's two bytes (element header, then
# the level) sit right after the 4-byte extension header.
AUDIO_LEVEL_SLOT = 16


def header_template(
    mid_extension_id: int | None, mid: str | None, audio_level_id: int | None = None
) -> bytearray:
    """A 12-byte RTP header followed by a one-byte-header extension block.

    Browsers demultiplex on the MID extension until they have learned the SSRC, so every
    forwarded packet carries the viewer's own MID under the viewer's own extension id. With
    `audio_level_id`, the block starts with a 2-byte audio-level slot at AUDIO_LEVEL_SLOT,
    which the forwarder fills per packet (or zeroes: two padding bytes) in place.
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


def extension_element(data: bytes, extension_id: int) -> int:
    """Offset of the value of header extension `extension_id` in an RTP packet, or -1.

    Walks only the extension block (one-byte or two-byte form, RFC 8285) and never raises:
    a truncated or malformed block answers -1.
    """
    first = data[0]
    if not first & EXTENSION_BIT:
        return -1
    start = 12 + 4 * (first & 0x0F)
    length = len(data)
    if start + 4 > length:
        return -1
    profile = (data[start] << 8) | data[start + 1]
    end = start + 4 + 4 * ((data[start + 2] << 8) | data[start + 3])
    if end > length:
        return -1
    pos = start + 4
    if profile == ONE_BYTE_EXTENSION_PROFILE:
        while pos < end:
            element = data[pos]
            if element == 0:  # padding
                pos += 1
                continue
            element_id = element >> 4
            if element_id == 15:  # reserved: stop parsing (RFC 8285 section 4.2)
                return -1
            if element_id == extension_id:
                return pos + 1 if pos + 1 < end else -1
            pos += 2 + (element & 0x0F)
    elif profile & 0xFFF0 == TWO_BYTE_EXTENSION_PROFILE:
        while pos < end:
            element_id = data[pos]
            if element_id == 0:
                pos += 1
                continue
            if pos + 1 >= end:
                return -1
            if element_id == extension_id:
                return pos + 2 if data[pos + 1] and pos + 2 < end else -1
            pos += 2 + data[pos + 1]
    return -1


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
