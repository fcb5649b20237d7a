"""Synthetic media for the client: a moving pattern, a sine tone, H264 in a chosen profile,
and a publisher that sends keyframes on its own schedule.

Built from bytes slices rather than numpy, which is not a dependency of the project.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from typing import Any

import av
from aiortc import RTCRtpSender
from aiortc.codecs.h264 import PACKET_MAX
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.rtp import AnyRtcpPacket, RtcpPsfbPacket

VIDEO_CLOCK = 90_000
AUDIO_RATE = 48_000
AUDIO_PTIME = 0.020
# libx264 profile and the profile-level-id a client offers for it.
H264_PROFILES = {
    "constrained-baseline": ("baseline", "42e01f"),
    "baseline": ("baseline", "42001f"),
    "main": ("main", "4d001f"),
    "constrained-high": ("high", "640c1f"),
    "high": ("high", "64001f"),
}
SPS_NAL = 7


class _Pacer:
    """Sleeps until the wall-clock time of frame n, so tracks run in real time like a camera."""

    def __init__(self, period: float) -> None:
        self.period = period
        self.start: float | None = None
        self.count = 0

    async def next(self) -> int:
        if self.start is None:
            self.start = time.monotonic()
        else:
            self.count += 1
            delay = self.start + self.count * self.period - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return self.count


class PatternVideoTrack(VideoStreamTrack):
    """Diagonal bars that move every frame, with slowly cycling colour.

    The content changes every frame so the encoder emits real inter frames (a static image
    compresses to near-empty P-frames, which would hide packetisation and forwarding bugs).
    """

    def __init__(self, width: int = 640, height: int = 360, fps: int = 30) -> None:
        super().__init__()
        if width % 2 or height % 2:
            raise ValueError("width and height must be even for yuv420p")
        self.width, self.height, self.fps = width, height, fps
        self._pacer = _Pacer(1 / fps)
        # One long row of 16-pixel bars; row y of frame t is a window into it, shifted by y + 4t.
        span = width + height + 4 * 64
        self._bars = bytes(235 if (x // 16) % 2 else 16 for x in range(span + 32))

    async def recv(self) -> av.VideoFrame:
        n = await self._pacer.next()
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        self._fill_luma(frame, n)
        self._fill_chroma(frame, n)
        frame.pts = round(n * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame

    def _fill_luma(self, frame: av.VideoFrame, n: int) -> None:
        plane = frame.planes[0]
        pad = b"\x00" * (plane.line_size - self.width)
        shift = (4 * n) % 32  # bars repeat every 32 pixels
        rows = (self._bars[y + shift : y + shift + self.width] + pad for y in range(self.height))
        plane.update(b"".join(rows))

    def _fill_chroma(self, frame: av.VideoFrame, n: int) -> None:
        phase = 2 * math.pi * n / (self.fps * 4)
        for plane, offset in ((frame.planes[1], 0.0), (frame.planes[2], math.pi / 2)):
            value = int(128 + 100 * math.sin(phase + offset))
            plane.update(bytes([value]) * plane.buffer_size)


class SineAudioTrack(AudioStreamTrack):
    """A 440 Hz sine as s16 mono 48 kHz frames of 20 ms, paced in real time."""

    def __init__(self, frequency: float = 440.0) -> None:
        super().__init__()
        self._pacer = _Pacer(AUDIO_PTIME)
        self._samples = int(AUDIO_RATE * AUDIO_PTIME)
        # A whole number of periods fits in 1 s, so the table can be reused frame after frame.
        table = [
            int(8000 * math.sin(2 * math.pi * frequency * i / AUDIO_RATE))
            for i in range(AUDIO_RATE)
        ]
        self._table = b"".join(v.to_bytes(2, "little", signed=True) for v in table)

    async def recv(self) -> av.AudioFrame:
        n = await self._pacer.next()
        frame = av.AudioFrame(format="s16", layout="mono", samples=self._samples)
        start = (n * self._samples) % AUDIO_RATE * 2
        frame.planes[0].update(self._table[start : start + self._samples * 2])
        frame.pts = n * self._samples
        frame.sample_rate = AUDIO_RATE
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame


class H264PacketTrack(MediaStreamTrack):
    """Encodes the moving pattern with libx264 in a chosen profile and yields av.Packets.

    aiortc's own H264 encoder only makes constrained baseline; given packets it just
    packetizes them. No B-frames (WebRTC receivers do not reorder), a keyframe every second.
    `sps_profile_idc` is the profile_idc of the first SPS put on the wire.
    """

    kind = "video"

    def __init__(
        self, profile: str, single_nal: bool, width: int = 640, height: int = 360, fps: int = 30
    ) -> None:
        super().__init__()
        self._source = PatternVideoTrack(width, height, fps)
        self._encoder = av.CodecContext.create("libx264", "w")
        self._encoder.width, self._encoder.height = width, height
        self._encoder.pix_fmt = "yuv420p"
        self._encoder.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self._encoder.framerate = fractions.Fraction(fps, 1)
        x264_params = f"keyint={fps}:min-keyint={fps}:bframes=0"
        if single_nal:
            # Packetization mode 0 carries each NAL unit whole: keep every slice under the MTU.
            x264_params += f":slice-max-size={PACKET_MAX - 100}"
        self._encoder.options = {
            "profile": H264_PROFILES[profile][0],
            "tune": "zerolatency",
            "x264-params": x264_params,
        }
        self.sps_profile_idc: int | None = None

    async def recv(self) -> av.Packet[Any]:
        while True:
            frame = await self._source.recv()
            packets = self._encoder.encode(frame)
            if packets:
                packet = packets[0]
                for extra in packets[1:]:
                    packet = av.Packet(bytes(packet) + bytes(extra))
                packet.pts, packet.time_base = frame.pts, fractions.Fraction(1, VIDEO_CLOCK)
                if self.sps_profile_idc is None:
                    self.sps_profile_idc = _sps_profile_idc(bytes(packet))
                return packet


def _sps_profile_idc(annex_b: bytes) -> int | None:
    for nal in annex_b.split(b"\x00\x00\x01"):
        if len(nal) > 1 and nal[0] & 0x1F == SPS_NAL:
            return nal[1]
    return None


class KeyframeSchedule:
    """A publisher that, like many encoders in the field, sends keyframes on its own schedule.

    It ignores the SFU's keyframe requests and bitrate feedback (a REMB would also make
    aiortc's VP8 encoder restart, which emits a keyframe) and forces a keyframe every
    `interval` seconds. `count` is how many keyframes it has sent (the first frame is one).
    """

    def __init__(self, sender: RTCRtpSender, interval: float) -> None:
        self.sender = sender
        self.interval = interval
        self.count = 1
        original = sender._handle_rtcp_packet

        async def handle_rtcp(packet: AnyRtcpPacket) -> None:
            if isinstance(packet, RtcpPsfbPacket):
                return
            await original(packet)

        # aiortc has no option to ignore keyframe requests: replace the sender's RTCP handler.
        sender._handle_rtcp_packet = handle_rtcp  # type: ignore[method-assign]
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sender._send_keyframe()
            self.count += 1

    def stop(self) -> None:
        self._task.cancel()
