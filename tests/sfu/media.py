"""Synthetic media and small aiortc peers shared by the worker-level tests."""

from __future__ import annotations

import asyncio

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack


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
                if track.kind == "video":
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
