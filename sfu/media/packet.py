"""One inbound RTP packet, parsed once: the view every stage reads.

`RtpView(data)` is the only parser of RTP headers on the forwarding path. It reads the
fixed header, skips the CSRCs and the header-extension block, and keeps the raw bytes for
extension lookups (`find_extension`), which walk only the extension block it located.
Malformed input raises ValueError, and nothing else; the payload is not copied.
"""

from __future__ import annotations

import struct

RTP_VERSION_BITS = 0x80
PADDING_BIT = 0x20
EXTENSION_BIT = 0x10
MARKER_BIT = 0x80

ONE_BYTE_EXTENSION_PROFILE = 0xBEDE
TWO_BYTE_EXTENSION_PROFILE = 0x1000

_HEADER = struct.Struct("!BBHII")


class RtpView:
    """The header fields of one RTP packet, and where its parts are in `data`.

    `payload_offset` is where the payload starts (after CSRCs and extensions); the payload
    runs to the end of `data`, whose last `padding` bytes are padding (0 without the P bit).
    `extension_offset` is where the extension block's 4-byte header is, or -1.
    """

    __slots__ = (
        "data",
        "ssrc",
        "seq",
        "timestamp",
        "marker",
        "payload_type",
        "padding",
        "payload_offset",
        "extension_offset",
    )

    data: bytes
    ssrc: int
    seq: int
    timestamp: int
    marker: int  # MARKER_BIT or 0, as in the second header byte
    payload_type: int
    padding: int
    payload_offset: int
    extension_offset: int

    def __init__(self, data: bytes) -> None:
        try:
            first, second, self.seq, self.timestamp, self.ssrc = _HEADER.unpack_from(data)
        except struct.error:
            raise ValueError("RTP packet is shorter than its fixed header") from None
        if first & 0xC0 != RTP_VERSION_BITS:
            raise ValueError("not an RTP version 2 packet")
        offset = 12 + 4 * (first & 0x0F)
        length = len(data)
        if first & EXTENSION_BIT:
            if offset + 4 > length:
                raise ValueError("RTP packet has a truncated extension header")
            self.extension_offset = offset
            offset += 4 + 4 * ((data[offset + 2] << 8) | data[offset + 3])
        else:
            self.extension_offset = -1
        if offset > length:
            raise ValueError("RTP packet is shorter than its header")
        self.data = data
        self.marker = second & MARKER_BIT
        self.payload_type = second & 0x7F
        self.padding = data[-1] if first & PADDING_BIT else 0
        self.payload_offset = offset

    @property
    def payload(self) -> bytes:
        """The payload without padding (a copy: the forwarding path slices it itself)."""
        return self.data[self.payload_offset : len(self.data) - self.padding]

    def __repr__(self) -> str:
        return (
            f"RtpView(ssrc={self.ssrc}, seq={self.seq}, timestamp={self.timestamp}, "
            f"pt={self.payload_type}, marker={bool(self.marker)}, "
            f"payload={len(self.data) - self.payload_offset - self.padding} bytes)"
        )


def payload_offset(data: bytes) -> int:
    """Offset of the payload in an RTP packet; ValueError if the header does not fit."""
    return RtpView(data).payload_offset


def find_extension(data: bytes, start: int, extension_id: int) -> int:
    """Offset of the value of header extension `extension_id`, or -1.

    `start` is the extension block's offset (RtpView.extension_offset; -1: none). Walks the
    block in its one-byte or two-byte form (RFC 8285) and never raises: a malformed block,
    or an element whose value would run past the block, answers -1.
    """
    if start < 0:
        return -1
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
