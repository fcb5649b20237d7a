"""Real encoded media as RTP payloads, for feeding a TrackForwarder in-process.

VP8, H264 and Opus are encoded and packetised by aiortc's own encoders (what an aiortc
publisher sends). aiortc cannot send VP9 or AV1, so those are encoded with PyAV (libvpx-vp9,
libsvtav1) and packetised here by a minimal sender per RFC 9628 / the AV1 RTP specification:
enough to produce what a browser sends for one spatial layer.
"""

from __future__ import annotations

import fractions
import math
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder

from sfu.recording.codecs import read_leb128, write_leb128

VIDEO_CLOCK = 90_000
FPS = 30
MTU_PAYLOAD = 1100


@dataclass
class RtpFrame:
    ts: int
    payloads: list[bytes]
    keyframe: bool


def video_frames(count: int, width: int = 320, height: int = 240) -> Iterator[av.VideoFrame]:
    for index in range(count):
        image = np.zeros((height, width, 3), np.uint8)
        x = (index * 7) % width
        image[:, x : x + 24] = 255
        image[..., 1] = (index * 5) % 255
        frame = av.VideoFrame.from_ndarray(image, format="bgr24").reformat(format="yuv420p")
        frame.pts = index * VIDEO_CLOCK // FPS
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        yield frame


def aiortc_video(codec: str, count: int, width: int = 320, height: int = 240) -> list[RtpFrame]:
    encoder = Vp8Encoder() if codec == "vp8" else H264Encoder()
    frames = []
    for index, frame in enumerate(video_frames(count, width, height)):
        payloads, ts = encoder.encode(frame, force_keyframe=index == 0)
        if payloads:
            frames.append(RtpFrame(ts, payloads, index == 0))
    return frames


def opus_packets(count: int) -> list[RtpFrame]:
    encoder = OpusEncoder()
    packets: list[RtpFrame] = []
    samples = 960
    for index in range(count):
        tone = 8000 * np.sin(2 * math.pi * 440 * (np.arange(samples) + index * samples) / 48000)
        frame = av.AudioFrame.from_ndarray(
            tone.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = index * samples
        frame.time_base = fractions.Fraction(1, 48000)
        payloads, ts = encoder.encode(frame)
        packets.extend(RtpFrame(ts, [p], True) for p in payloads)
    return packets


def _pyav_encode(codec: str, count: int, width: int, height: int) -> list[tuple[bytes, bool]]:
    context = av.CodecContext.create(codec, "w")
    assert isinstance(context, av.VideoCodecContext)
    context.width, context.height, context.pix_fmt = width, height, "yuv420p"
    context.time_base = fractions.Fraction(1, VIDEO_CLOCK)
    context.framerate = fractions.Fraction(FPS)
    context.gop_size = 45
    if codec == "libvpx-vp9":
        context.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    else:
        context.options = {"preset": "12"}
    out = []
    for frame in video_frames(count, width, height):
        out += [(bytes(p), bool(p.is_keyframe)) for p in context.encode(frame)]
    out += [(bytes(p), bool(p.is_keyframe)) for p in context.encode(None)]
    return out


def vp9_rtp(count: int, width: int = 320, height: int = 240) -> list[RtpFrame]:
    """One spatial layer, non-flexible mode with a 15-bit picture id (as Chrome sends)."""
    frames = []
    for index, (data, key) in enumerate(_pyav_encode("libvpx-vp9", count, width, height)):
        chunks = [data[i : i + MTU_PAYLOAD] for i in range(0, len(data), MTU_PAYLOAD)]
        payloads = []
        for position, chunk in enumerate(chunks):
            flags = 0x80  # I
            if not key:
                flags |= 0x40  # P
            if position == 0:
                flags |= 0x08  # B
            if position == len(chunks) - 1:
                flags |= 0x04  # E
            picture_id = index & 0x7FFF
            payloads.append(bytes([flags, 0x80 | (picture_id >> 8), picture_id & 0xFF]) + chunk)
        frames.append(RtpFrame(index * VIDEO_CLOCK // FPS, payloads, key))
    return frames


def _obus(unit: bytes) -> list[bytes]:
    """Split a low-overhead temporal unit into OBUs without their size fields."""
    obus, offset = [], 0
    while offset < len(unit):
        header = unit[offset]
        header_size = 2 if header & 0x04 else 1
        size, start = read_leb128(unit, offset + header_size)
        obu_type = (header >> 3) & 0x0F
        if obu_type != 2:  # temporal delimiters are not sent over RTP
            obus.append(
                bytes([header & ~0x02])
                + unit[offset + 1 : offset + header_size]
                + unit[start : start + size]
            )
        offset = start + size
    return obus


def av1_rtp(count: int, width: int = 320, height: int = 240) -> list[RtpFrame]:
    """Aggregation header W=0 (every element length-prefixed), OBUs fragmented with Z/Y."""
    frames = []
    for index, (data, key) in enumerate(_pyav_encode("libsvtav1", count, width, height)):
        # Cut the OBUs into packets; a cut inside an OBU fragments it (Y, then Z).
        elements = _obus(data)
        payloads: list[bytes] = []
        current: list[bytes] = []
        room = MTU_PAYLOAD
        continues = False
        for obu in elements:
            rest = obu
            while rest:
                piece = rest[: max(room - 2, 1)]
                rest = rest[len(piece) :]
                current.append(write_leb128(len(piece)) + piece)
                room -= len(piece) + 2
                if rest or room < 8:
                    will_continue = bool(rest)
                    header = (0x80 if continues else 0) | (0x40 if will_continue else 0)
                    if key and not payloads:
                        header |= 0x08  # N: a new coded video sequence starts here
                    payloads.append(bytes([header]) + b"".join(current))
                    current, room, continues = [], MTU_PAYLOAD, will_continue
        if current:
            header = 0x80 if continues else 0
            if key and not payloads:
                header |= 0x08
            payloads.append(bytes([header]) + b"".join(current))
        frames.append(RtpFrame(index * VIDEO_CLOCK // FPS, payloads, key))
    return frames


def packets(frames: list[RtpFrame], first_seq: int = 65000) -> list[tuple[int, int, int, bytes]]:
    """(seq, ts, marker, payload) with the marker on each frame's last packet."""
    out = []
    seq = first_seq
    for frame in frames:
        for index, payload in enumerate(frame.payloads):
            marker = 0x80 if index == len(frame.payloads) - 1 else 0
            out.append((seq & 0xFFFF, frame.ts & 0xFFFFFFFF, marker, payload))
            seq += 1
    return out
