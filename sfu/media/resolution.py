"""The picture size of a keyframe, read from the first RTP packet of the keyframe.

Called once per keyframe (never per packet) by TrackForwarder for the room stats. Pure
functions over one payload: they never raise, and answer None when the packet does not say
(a codec not parsed here: H265, AV1; a VP9 keyframe without the size in its first packet;
an H264 keyframe whose first packet carries no SPS; malformed input).
"""

from __future__ import annotations

from collections.abc import Callable

Size = tuple[int, int]
SizeReader = Callable[[bytes], Size | None]

_H264_SPS = 7
_H264_STAP_A = 24
# profile_idc values whose SPS carries chroma_format_idc and the rest (H.264 7.3.2.1.1).
_H264_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def _vp8_descriptor_size(payload: bytes) -> int:
    """RFC 7741: the payload descriptor's length, or -1."""
    if not payload:
        return -1
    offset = 1
    if payload[0] & 0x80:  # X
        if len(payload) < 2:
            return -1
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I
            if len(payload) <= offset:
                return -1
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:  # L
            offset += 1
        if ext & 0x30:  # T or K
            offset += 1
    return offset


def vp8_size(payload: bytes) -> Size | None:
    """RFC 6386 9.1: a key frame's 3-byte tag, start code 9d 01 2a, 14-bit width and height."""
    offset = _vp8_descriptor_size(payload)
    if offset < 0 or len(payload) < offset + 10:
        return None
    if payload[offset] & 0x01 or payload[offset + 3 : offset + 6] != b"\x9d\x01\x2a":
        return None
    width = (payload[offset + 6] | payload[offset + 7] << 8) & 0x3FFF
    height = (payload[offset + 8] | payload[offset + 9] << 8) & 0x3FFF
    return (width, height) if width and height else None


class _Bits:
    """A big-endian bit reader; reading past the end raises IndexError."""

    __slots__ = ("data", "position")

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data
        self.position = 0

    def bit(self) -> int:
        position = self.position
        self.position = position + 1
        return (self.data[position >> 3] >> (7 - (position & 7))) & 1

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            value = value << 1 | self.bit()
        return value

    def ue(self) -> int:
        """Exp-Golomb, unsigned (H.264 9.1)."""
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise IndexError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def vp9_size(payload: bytes) -> Size | None:
    """RFC 9628: the scalability structure's size of the largest spatial layer (V and Y set,
    as libwebrtc sends on keyframes), else the frame size of the uncompressed header (VP9
    bitstream 6.2) when the packet starts a non-flexible, single-layer keyframe."""
    try:
        first = payload[0]
        offset = 1
        if first & 0x80:  # I: picture id
            offset += 2 if payload[offset] & 0x80 else 1
        if first & 0x20:  # L: layer indices, plus TL0PICIDX in non-flexible mode
            offset += 1 if first & 0x10 else 2
        if first & 0x50 == 0x50:  # F and P: reference indices (not in a keyframe)
            while payload[offset] & 0x01:
                offset += 1
            offset += 1
        if first & 0x02:  # V: scalability structure
            ss = payload[offset]
            layers = (ss >> 5) + 1
            if ss & 0x10:  # Y: the size of each spatial layer
                sizes = [
                    (
                        payload[offset + 1 + 4 * i] << 8 | payload[offset + 2 + 4 * i],
                        payload[offset + 3 + 4 * i] << 8 | payload[offset + 4 + 4 * i],
                    )
                    for i in range(layers)
                ]
                return max(sizes) if all(w and h for w, h in sizes) else None
            return None
        if not first & 0x08:  # B: not the start of a frame
            return None
        return _vp9_header_size(payload[offset:])
    except IndexError:
        return None


def _vp9_header_size(frame: bytes) -> Size | None:
    bits = _Bits(frame)
    if bits.bits(2) != 2:  # frame_marker
        return None
    profile = bits.bit() | bits.bit() << 1
    if profile == 3:
        bits.bit()  # reserved_zero
    if bits.bit():  # show_existing_frame
        return None
    if bits.bit():  # frame_type: 1 is a non-key frame
        return None
    bits.bits(2)  # show_frame, error_resilient_mode
    if bits.bits(24) != 0x498342:  # frame_sync_code
        return None
    if profile >= 2:
        bits.bit()  # ten_or_twelve_bit
    color_space = bits.bits(3)
    if color_space != 7:  # not CS_RGB
        bits.bit()  # color_range
        if profile in (1, 3):
            bits.bits(3)  # subsampling_x, subsampling_y, reserved_zero
    elif profile in (1, 3):
        bits.bit()  # reserved_zero
    return bits.bits(16) + 1, bits.bits(16) + 1


def _unescape(nal: bytes) -> bytearray:
    """An H264 NAL unit without its emulation prevention bytes (00 00 03 -> 00 00)."""
    out = bytearray()
    zeros = 0
    for byte in nal:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return out


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last = next_scale = 8
    for _ in range(size):
        if next_scale:
            next_scale = (last + bits.se() + 256) % 256
        last = next_scale or last


def h264_sps_size(sps: bytes) -> Size | None:
    """H.264 7.3.2.1.1: the cropped picture size of a sequence parameter set (the NAL unit,
    header byte included)."""
    try:
        bits = _Bits(_unescape(sps[1:64]))  # an SPS with a size is far shorter
        profile = bits.bits(8)
        bits.bits(16)  # constraint flags, level_idc
        bits.ue()  # seq_parameter_set_id
        chroma_format = 1
        separate_planes = 0
        if profile in _H264_HIGH_PROFILES:
            chroma_format = bits.ue()
            if chroma_format == 3:
                separate_planes = bits.bit()
            bits.ue()  # bit_depth_luma_minus8
            bits.ue()  # bit_depth_chroma_minus8
            bits.bit()  # qpprime_y_zero_transform_bypass_flag
            if bits.bit():  # seq_scaling_matrix_present_flag
                for i in range(8 if chroma_format != 3 else 12):
                    if bits.bit():
                        _skip_scaling_list(bits, 16 if i < 6 else 64)
        bits.ue()  # log2_max_frame_num_minus4
        poc_type = bits.ue()
        if poc_type == 0:
            bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
        elif poc_type == 1:
            bits.bit()  # delta_pic_order_always_zero_flag
            bits.se()  # offset_for_non_ref_pic
            bits.se()  # offset_for_top_to_bottom_field
            for _ in range(min(bits.ue(), 255)):
                bits.se()
        bits.ue()  # max_num_ref_frames
        bits.bit()  # gaps_in_frame_num_value_allowed_flag
        width_mbs = bits.ue() + 1
        height_units = bits.ue() + 1
        frame_mbs_only = bits.bit()
        if not frame_mbs_only:
            bits.bit()  # mb_adaptive_frame_field_flag
        bits.bit()  # direct_8x8_inference_flag
        width = width_mbs * 16
        height = (2 - frame_mbs_only) * height_units * 16
        if bits.bit():  # frame_cropping_flag
            left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
            if chroma_format == 0 or separate_planes:
                crop_x, crop_y = 1, 2 - frame_mbs_only
            else:
                crop_x = 1 if chroma_format == 3 else 2
                crop_y = (2 if chroma_format == 1 else 1) * (2 - frame_mbs_only)
            width -= crop_x * (left + right)
            height -= crop_y * (top + bottom)
    except IndexError:
        return None
    return (width, height) if width > 0 and height > 0 else None


def h264_size(payload: bytes) -> Size | None:
    """RFC 6184: the size in the SPS that starts a keyframe, alone or in a STAP-A."""
    if not payload:
        return None
    nal_type = payload[0] & 0x1F
    if nal_type == _H264_SPS:
        return h264_sps_size(payload)
    if nal_type == _H264_STAP_A:
        offset = 1
        while offset + 2 < len(payload):
            length = payload[offset] << 8 | payload[offset + 1]
            nal = payload[offset + 2 : offset + 2 + length]
            if length == 0 or len(nal) < length:
                return None
            if nal[0] & 0x1F == _H264_SPS:
                return h264_sps_size(nal)
            offset += 2 + length
    return None


SIZE_READERS: dict[str, SizeReader] = {
    "video/vp8": vp8_size,
    "video/vp9": vp9_size,
    "video/h264": h264_size,
}


def size_reader(mime_type: str) -> SizeReader | None:
    """The size reader of a codec; None where the size is not parsed (audio, H265, AV1)."""
    return SIZE_READERS.get(mime_type.lower())
