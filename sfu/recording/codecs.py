"""From RTP payloads to the frames a container stores, per codec.

A `Depacketizer` turns the payloads of one frame (the packets sharing an RTP timestamp, in
sequence order, none missing) into the bytes a muxer expects, or None when they do not form
a frame it can write. VP8 and H264 use aiortc's payload-descriptor parsers; aiortc has none
for H265, VP9 and AV1, so those are small pure functions here (RFC 7798, RFC 9628 and the
AV1 RTP payload specification). Opus packets are written as they are.

What each codec becomes on disk:

| codec | file | muxer input |
| --- | --- | --- |
| Opus | `.ogg` (48 kHz, 2 channels) | one Opus packet per RTP packet |
| VP8, VP9 | `.ivf` (fourcc VP80 / VP90) | one frame (VP9: the base spatial layer) |
| AV1 | `.ivf` (fourcc AV01) | one temporal unit of OBUs with size fields (low-overhead format) |
| H264 | `.mkv` | one access unit in Annex B (the muxer stores it as AVCC) |
| H265 | `.mkv` | one access unit in Annex B (the muxer stores it as HVCC) |
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiortc.codecs.h264 import H264PayloadDescriptor
from aiortc.codecs.vpx import VpxPayloadDescriptor

Depacketizer = Callable[[Sequence[bytes]], bytes | None]


@dataclass(frozen=True)
class CodecFormat:
    mime_type: str
    extension: str  # of the file
    container: str  # FFmpeg muxer name
    stream_codec: str  # FFmpeg codec name of the stream
    decoder: str  # FFmpeg decoder used once to read the frame size from the first keyframe
    clock_rate: int
    depacketize: Depacketizer


# --- VP8 (RFC 7741) ---------------------------------------------------------------------


def vp8_frame(payloads: Sequence[bytes]) -> bytes | None:
    """The frame, if the first packet starts partition 0 (the frame's beginning)."""
    parts = []
    for index, payload in enumerate(payloads):
        try:
            descriptor, data = VpxPayloadDescriptor.parse(payload)
        except ValueError:
            return None
        if index == 0 and not (descriptor.partition_start and descriptor.partition_id == 0):
            return None
        parts.append(data)
    frame = b"".join(parts)
    return frame or None


# --- H264 (RFC 6184) --------------------------------------------------------------------


def h264_access_unit(payloads: Sequence[bytes]) -> bytes | None:
    """Annex B NAL units (aiortc adds the start codes and reassembles FU-A)."""
    parts = []
    for payload in payloads:
        try:
            _descriptor, data = H264PayloadDescriptor.parse(payload)
        except ValueError:
            return None
        parts.append(data)
    unit = b"".join(parts)
    return unit or None


# --- H265 (RFC 7798) --------------------------------------------------------------------

_ANNEX_B_START = b"\x00\x00\x00\x01"
_H265_AP = 48
_H265_FU = 49
_H265_PACI = 50


def h265_access_unit(payloads: Sequence[bytes]) -> bytes | None:
    """Annex B NAL units from single NAL unit packets, aggregation packets (AP) and
    fragmentation units (FU), without DONL fields (sprop-max-don-diff 0, what WebRTC
    senders use). PACI packets are skipped. None when a packet is malformed or a fragment
    comes without its start."""
    parts: list[bytes] = []
    in_fragment = False
    for payload in payloads:
        size = len(payload)
        if size < 3 or payload[0] & 0x80:  # 2-byte NAL unit header, F bit 0
            return None
        nal_type = (payload[0] >> 1) & 0x3F
        if nal_type == _H265_FU:
            fu_header = payload[2]
            if fu_header & 0x80:  # S: rebuild the NAL unit header with the FU's type
                header = bytes([(payload[0] & 0x81) | ((fu_header & 0x3F) << 1), payload[1]])
                parts += (_ANNEX_B_START, header)
                in_fragment = True
            elif not in_fragment:
                return None
            parts.append(payload[3:])
            if fu_header & 0x40:  # E
                in_fragment = False
            continue
        if in_fragment:
            return None  # a fragmented NAL unit that never ended
        if nal_type == _H265_AP:
            offset = 2
            while offset < size:
                if offset + 2 > size:
                    return None
                length = (payload[offset] << 8) | payload[offset + 1]
                offset += 2
                if length < 2 or offset + length > size:
                    return None
                parts += (_ANNEX_B_START, payload[offset : offset + length])
                offset += length
        elif nal_type != _H265_PACI:
            parts += (_ANNEX_B_START, payload)
    if in_fragment:
        return None
    unit = b"".join(parts)
    return unit or None


# --- VP9 (RFC 9628) ---------------------------------------------------------------------


def vp9_descriptor(payload: bytes) -> tuple[int, int, int]:
    """(flags byte, spatial layer id, offset of the VP9 data); raises ValueError."""
    size = len(payload)
    if size < 1:
        raise ValueError("empty VP9 payload")
    flags = payload[0]
    offset = 1
    if flags & 0x80:  # I: picture id, 7 or 15 bits
        if offset >= size:
            raise ValueError("truncated picture id")
        offset += 2 if payload[offset] & 0x80 else 1
    spatial_id = 0
    if flags & 0x20:  # L: layer indices
        if offset >= size:
            raise ValueError("truncated layer indices")
        spatial_id = (payload[offset] >> 1) & 0x07
        offset += 1
        if not flags & 0x10:  # non-flexible mode: TL0PICIDX follows
            offset += 1
    if flags & 0x10 and flags & 0x40:  # F and P: up to 3 reference indices (P_DIFF)
        for _ in range(3):
            if offset >= size:
                raise ValueError("truncated reference indices")
            more = payload[offset] & 0x01
            offset += 1
            if not more:
                break
    if flags & 0x02:  # V: scalability structure
        if offset >= size:
            raise ValueError("truncated scalability structure")
        ss = payload[offset]
        offset += 1
        layers = (ss >> 5) + 1
        if ss & 0x10:  # Y: width and height per spatial layer
            offset += 4 * layers
        if ss & 0x08:  # G: picture group description
            if offset >= size:
                raise ValueError("truncated picture group")
            groups = payload[offset]
            offset += 1
            for _ in range(groups):
                if offset >= size:
                    raise ValueError("truncated picture group")
                references = (payload[offset] >> 2) & 0x03
                offset += 1 + references
    if offset > size:
        raise ValueError("VP9 descriptor longer than the payload")
    return flags, spatial_id, offset


def vp9_frame(payloads: Sequence[bytes]) -> bytes | None:
    """The base spatial layer's frame (B..E); other spatial layers are not recorded."""
    parts = []
    started = False
    for payload in payloads:
        try:
            flags, spatial_id, offset = vp9_descriptor(payload)
        except ValueError:
            return None
        if spatial_id != 0:
            continue
        if not started:
            if not flags & 0x08:  # B: must begin the layer frame
                return None
            started = True
        parts.append(payload[offset:])
        if flags & 0x04:  # E: end of the layer frame
            break
    frame = b"".join(parts)
    return frame or None


# --- AV1 (AV1 RTP payload format, section 4) ---------------------------------------------

_OBU_TEMPORAL_DELIMITER = 2
_OBU_TILE_LIST = 8


def read_leb128(data: bytes, offset: int) -> tuple[int, int]:
    """(value, offset after it); raises ValueError past the end or beyond 8 bytes."""
    value = 0
    for index in range(8):
        if offset >= len(data):
            raise ValueError("truncated leb128")
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, offset
    raise ValueError("leb128 longer than 8 bytes")


def write_leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def av1_obu_elements(payload: bytes) -> tuple[list[bytes], bool, bool]:
    """(OBU elements, Z: first continues a previous OBU, Y: last continues in the next)."""
    if not payload:
        raise ValueError("empty AV1 payload")
    header = payload[0]
    continues, will_continue = bool(header & 0x80), bool(header & 0x40)
    count = (header >> 4) & 0x03
    elements: list[bytes] = []
    offset = 1
    while offset < len(payload):
        last = count and len(elements) == count - 1
        if last:
            length = len(payload) - offset
        else:
            length, offset = read_leb128(payload, offset)
        if offset + length > len(payload):
            raise ValueError("OBU element longer than the payload")
        elements.append(payload[offset : offset + length])
        offset += length
    return elements, continues, will_continue


def av1_sized_obu(obu: bytes) -> bytes | None:
    """The OBU with obu_has_size_field set (what IVF/low-overhead AV1 needs); None to drop."""
    if not obu:
        return None
    header = obu[0]
    obu_type = (header >> 3) & 0x0F
    if obu_type in (_OBU_TEMPORAL_DELIMITER, _OBU_TILE_LIST):
        return None  # the spec asks senders to drop these; the IVF muxer inserts delimiters
    header_size = 2 if header & 0x04 else 1
    if len(obu) < header_size:
        raise ValueError("truncated OBU header")
    body = obu[header_size:]
    if header & 0x02:  # already sized: trust the size field, ignore trailing bytes
        size, start = read_leb128(obu, header_size)
        if start + size > len(obu):
            raise ValueError("OBU size field longer than the OBU")
        body = obu[start : start + size]
    return bytes([header | 0x02]) + obu[1:header_size] + write_leb128(len(body)) + body


def av1_temporal_unit(payloads: Sequence[bytes]) -> bytes | None:
    """Reassemble OBUs across packets and write each with its size field."""
    obus: list[bytes] = []
    pending: list[bytes] | None = None
    try:
        for index, payload in enumerate(payloads):
            elements, continues, will_continue = av1_obu_elements(payload)
            if index == 0 and continues:
                return None  # the temporal unit's start is missing
            for position, element in enumerate(elements):
                if position == 0 and continues and pending is not None:
                    pending.append(element)
                else:
                    if pending is not None:
                        obus.append(b"".join(pending))
                    pending = [element]
            if not will_continue and pending is not None:
                obus.append(b"".join(pending))
                pending = None
        if pending is not None:
            obus.append(b"".join(pending))
        sized = [av1_sized_obu(obu) for obu in obus]
    except ValueError:
        return None
    unit = b"".join(obu for obu in sized if obu)
    return unit or None


# --- Opus (RFC 6716 section 3.1) ---------------------------------------------------------

# Frame duration in 48 kHz samples of each TOC configuration 0..31.
_OPUS_FRAME_SAMPLES = (
    [480, 960, 1920, 2880] * 3  # SILK-only: 10, 20, 40, 60 ms
    + [480, 960] * 2  # hybrid: 10, 20 ms
    + [120, 240, 480, 960] * 4  # CELT-only: 2.5, 5, 10, 20 ms
)


def opus_samples(packet: bytes) -> int:
    """Samples at 48 kHz in one Opus packet (0 when it is malformed)."""
    if not packet:
        return 0
    toc = packet[0]
    frame = _OPUS_FRAME_SAMPLES[toc >> 3]
    code = toc & 0x03
    if code == 0:
        return frame
    if code in (1, 2):
        return 2 * frame
    if len(packet) < 2:
        return 0
    return (packet[1] & 0x3F) * frame


def opus_packet(payloads: Sequence[bytes]) -> bytes | None:
    return payloads[0] if len(payloads) == 1 and payloads[0] else None


FORMATS: dict[str, CodecFormat] = {
    "audio/opus": CodecFormat("audio/opus", "ogg", "ogg", "libopus", "opus", 48000, opus_packet),
    "video/vp8": CodecFormat("video/vp8", "ivf", "ivf", "vp8", "vp8", 90000, vp8_frame),
    "video/vp9": CodecFormat("video/vp9", "ivf", "ivf", "vp9", "vp9", 90000, vp9_frame),
    "video/av1": CodecFormat(
        "video/av1", "ivf", "ivf", "av1", "libdav1d", 90000, av1_temporal_unit
    ),
    "video/h264": CodecFormat(
        "video/h264", "mkv", "matroska", "h264", "h264", 90000, h264_access_unit
    ),
    "video/h265": CodecFormat(
        "video/h265", "mkv", "matroska", "hevc", "hevc", 90000, h265_access_unit
    ),
}


def codec_format(mime_type: str) -> CodecFormat | None:
    """How to record a codec, or None when it is not recordable (G722, PCMU, PCMA...)."""
    return FORMATS.get(mime_type.lower())
