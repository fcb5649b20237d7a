"""Synthetic media and small aiortc peers shared by the worker-level tests."""

from __future__ import annotations

import asyncio
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from av import VideoFrame

from sfu.rtp import AUDIO_LEVEL_URI, MID_URI


class MovingPattern(VideoStreamTrack):
    """Frames whose content changes every frame, so the encoder emits real inter frames."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.width, self.height, self.count = width, height, 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = np.zeros((self.height, self.width, 3), np.uint8)
        x = (self.count * 7) % self.width
        image[:, x : x + 24] = 255
        image[..., 1] = (self.count * 5) % 255
        self.count += 1
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def publisher_offer(pc: RTCPeerConnection, video: bool = True, audio: bool = True) -> str:
    if video:
        pc.addTransceiver(MovingPattern(), direction="sendonly")
    if audio:
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


class Counter:
    def __init__(self) -> None:
        self.frames: dict[str, int] = {"video": 0, "audio": 0}
        self.sizes: list[tuple[int, int]] = []


async def viewer_offer(pc: RTCPeerConnection) -> tuple[str, Counter]:
    counter = Counter()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def consume() -> None:
            while True:
                try:
                    frame = await track.recv()
                except Exception:
                    return
                counter.frames[track.kind] += 1
                if isinstance(frame, VideoFrame):
                    counter.sizes.append((frame.width, frame.height))

        asyncio.ensure_future(consume())

    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp, counter


async def accept(pc: RTCPeerConnection, answer: str) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))


async def wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


class Tone(AudioStreamTrack):
    """A steady 440 Hz tone (aiortc's AudioStreamTrack is silence): a known audio level."""

    def __init__(self, amplitude: int = 8000) -> None:
        super().__init__()
        self.amplitude = amplitude

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()
        assert isinstance(frame, av.AudioFrame)
        samples = frame.samples
        start = frame.pts or 0
        t = (np.arange(start, start + samples) / frame.sample_rate).reshape(1, -1)
        tone = (self.amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        layout = frame.layout.name
        channels = len(frame.layout.channels)
        loud = av.AudioFrame.from_ndarray(np.repeat(tone, channels, axis=1), "s16", layout)
        loud.pts, loud.sample_rate, loud.time_base = frame.pts, frame.sample_rate, frame.time_base
        return loud


class ReceivedRtp:
    """Every media RTP packet a viewer's receiver gets, parsed: (ssrc, seq, ts, audio level)."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.packets: dict[str, list[tuple[int, int, int, object]]] = {"audio": [], "video": []}
        for transceiver in pc.getTransceivers():
            receiver = transceiver.receiver
            original = receiver._handle_rtp_packet
            record = self.packets[transceiver.kind]

            async def handle(
                packet: RtpPacket,
                arrival_time_ms: int,
                _orig: Any = original,
                _record: list[tuple[int, int, int, object]] = record,
            ) -> None:
                _record.append(
                    (
                        packet.ssrc,
                        packet.sequence_number,
                        packet.timestamp,
                        packet.extensions.audio_level,
                    )
                )
                await _orig(packet, arrival_time_ms=arrival_time_ms)

            receiver._handle_rtp_packet = handle  # type: ignore[method-assign]

    def media(self, kind: str) -> list[tuple[int, int, int, object]]:
        """The packets on the track's main SSRC (retransmissions on the RTX SSRC excluded)."""
        packets = self.packets[kind]
        if not packets:
            return []
        counts: dict[int, int] = {}
        for ssrc, *_ in packets:
            counts[ssrc] = counts.get(ssrc, 0) + 1
        main = max(counts, key=lambda s: counts[s])
        return [p for p in packets if p[0] == main]


def extensions_map(**ids: int) -> HeaderExtensionsMap:
    """aiortc's map of the MID and audio-level extensions at the given ids."""
    uris = {"mid": MID_URI, "audio_level": AUDIO_LEVEL_URI}
    ext_map = HeaderExtensionsMap()
    ext_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=uris[name]) for name, i in ids.items()
            ]
        )
    )
    return ext_map
