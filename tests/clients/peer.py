"""WHIP publisher / WHEP viewer built on aiortc, for end-to-end tests.

Run it as a separate process so that the client's event loop, decoder threads and UDP sockets
never share a process with the server under test:

    python tests/clients/peer.py publish --url http://127.0.0.1:8080 --room r1 --seconds 5
    python tests/clients/peer.py view --url http://127.0.0.1:8080 --room r1 --seconds 5 \
        --min-video-frames 30 --min-audio-frames 50

Each run prints exactly one JSON object on the last line of stdout (logs go to stderr) and exits
0 when "ok" is true, 1 when the session ran but missed its goals, 2 when the HTTP exchange failed.
The coroutines publish() and view() return the same dictionaries for in-process use.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import ipaddress
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import aioice.ice
import av
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack

log = logging.getLogger("peer")

VIDEO_CLOCK = 90_000
AUDIO_RATE = 48_000
AUDIO_PTIME = 0.020
EXIT_OK, EXIT_GOALS_MISSED, EXIT_HTTP_ERROR = 0, 1, 2


class WhipError(Exception):
    """The server refused or mangled the WHIP/WHEP exchange; carries what it said."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body

    def as_result(self) -> dict[str, Any]:
        return {"ok": False, "error": str(self), "status": self.status, "body": self.body[:2000]}


# --------------------------------------------------------------------------------------------
# Synthetic media


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
    Built from bytes slices rather than numpy, which is not a dependency of the project.
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


# --------------------------------------------------------------------------------------------
# Networking helpers


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allow_loopback_candidates() -> None:
    """Make aioice also gather on 127.0.0.1.

    aioice skips 127.0.0.1 when gathering, so on a loopback-only machine (some CI sandboxes)
    the client would offer no candidate at all while the server answers with 127.0.0.1.
    Patching is global to the process, which is why only the CLI and explicit callers use it.
    """
    original = aioice.ice.get_host_addresses
    if getattr(original, "_peer_loopback", False):
        return

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4, use_ipv6)
        if use_ipv4 and "127.0.0.1" not in addresses:
            addresses.append("127.0.0.1")
        return addresses

    with_loopback._peer_loopback = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = with_loopback


def _headers(token: str | None, content_type: str | None = None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if content_type:
        headers["Content-Type"] = content_type
    if token:  # RFC 9725 §4.7: a client without a token must not send Authorization
        headers["Authorization"] = f"Bearer {token}"
    return headers


@dataclass
class Session:
    location: str  # absolute URL of the WHIP/WHEP session
    etag: str | None
    answer: str
    post_ms: float
    attempts: int


async def post_offer(
    http: aiohttp.ClientSession,
    endpoint: str,
    offer_sdp: str,
    token: str | None,
    retry_404_for: float = 0.0,
) -> Session:
    """POST the offer; retry while the server answers 404 (WHEP before the publisher arrives)."""
    deadline = time.monotonic() + retry_404_for
    attempts = 0
    while True:
        attempts += 1
        started = time.monotonic()
        async with http.post(
            endpoint, data=offer_sdp.encode(), headers=_headers(token, "application/sdp")
        ) as resp:
            body = await resp.text()
            if resp.status == 404 and time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                continue
            if resp.status != 201:
                raise WhipError(f"POST {endpoint} answered {resp.status}", resp.status, body)
            location = resp.headers.get("Location")
            if not location:
                raise WhipError("201 without a Location header", resp.status, body)
            if not body.startswith("v=0"):
                raise WhipError("201 body is not an SDP answer", resp.status, body)
            return Session(
                # Resolve against the effective URL: after a 307 the session lives on the
                # node that answered, not on the URL we first posted to.
                location=urljoin(str(resp.url), location),
                etag=resp.headers.get("ETag"),
                answer=body,
                post_ms=(time.monotonic() - started) * 1000,
                attempts=attempts,
            )


async def delete_session(http: aiohttp.ClientSession, location: str, token: str | None) -> int:
    async with http.delete(location, headers=_headers(token)) as resp:
        await resp.read()
        return resp.status


async def wait_connected(pc: RTCPeerConnection, limit: float) -> bool:
    """aiortc has no 'disconnected' state and ICE may never fail, so bound the wait ourselves."""
    done = asyncio.Event()

    def check() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            done.set()

    pc.on("connectionstatechange", check)
    check()
    try:
        await asyncio.wait_for(done.wait(), limit)
    except TimeoutError:
        pass
    return pc.connectionState == "connected"


async def rtp_stats(pc: RTCPeerConnection, stat_type: str) -> dict[str, dict[str, Any]]:
    """Per-kind counters from getStats() for 'inbound-rtp' or 'outbound-rtp'."""
    wanted = ("packetsReceived", "packetsLost", "jitter", "packetsSent", "bytesSent", "ssrc")
    result: dict[str, dict[str, Any]] = {}
    report = await pc.getStats()
    for stats in report.values():
        if stats.type == stat_type:
            result[stats.kind] = {k: getattr(stats, k) for k in wanted if hasattr(stats, k)}
    return result


def _new_pc() -> RTCPeerConnection:
    # No STUN: the default Google STUN server would add up to 5 s of gathering and is useless
    # against a local server.
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def _prefer(transceiver: RTCRtpTransceiver, kind: str, codec: str) -> None:
    """Restrict a transceiver to one codec (plus RTX for video)."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    wanted = f"{kind}/{codec}".lower()
    chosen = [c for c in caps if c.mimeType.lower() == wanted]
    if not chosen:
        raise ValueError(f"aiortc cannot send {wanted}")
    chosen += [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]
    transceiver.setCodecPreferences(chosen)


def _negotiated_codecs(sdp: str) -> dict[str, str]:
    """First codec name of each m-section of an SDP (what the sender will actually use)."""
    codecs: dict[str, str] = {}
    kind, first_pt = "", ""
    for line in sdp.splitlines():
        if line.startswith("m="):
            parts = line[2:].split()
            kind, first_pt = parts[0], (parts[3] if len(parts) > 3 else "")
        elif kind and line.startswith(f"a=rtpmap:{first_pt} ") and kind not in codecs:
            codecs[kind] = line.split(" ", 1)[1].split("/")[0]
    return codecs


def _endpoint(base_url: str, path: str, room: str) -> str:
    return f"{base_url.rstrip('/')}/{path}/{quote(room, safe='')}"


# --------------------------------------------------------------------------------------------
# Publisher


async def publish(
    url: str,
    room: str,
    seconds: float,
    video: str = "vp8",
    audio: str = "opus",
    fps: int = 30,
    width: int = 640,
    height: int = 360,
    token: str | None = None,
    connect_timeout: float = 10.0,
    loopback: bool | None = None,
) -> dict[str, Any]:
    """Publish synthetic media over WHIP for `seconds`, then DELETE the session.

    loopback=None adds 127.0.0.1 candidates only when the server URL is itself loopback.
    """
    if loopback or (loopback is None and _is_loopback(url)):
        allow_loopback_candidates()
    pc = _new_pc()
    try:
        if video != "none":
            t = pc.addTransceiver(PatternVideoTrack(width, height, fps), direction="sendonly")
            _prefer(t, "video", video)
        if audio != "none":
            _prefer(pc.addTransceiver(SineAudioTrack(), direction="sendonly"), "audio", audio)
        # aiortc gathers every candidate inside setLocalDescription, so the offer is complete.
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            endpoint = _endpoint(url, "api/whip/publish", room)
            session = await post_offer(http, endpoint, pc.localDescription.sdp, token)
            await pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
            started = time.monotonic()
            connected = await wait_connected(pc, connect_timeout)
            connect_ms = (time.monotonic() - started) * 1000 if connected else None
            await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
            sent = await rtp_stats(pc, "outbound-rtp")
            delete_status = await delete_session(http, session.location, token)
    finally:
        await pc.close()
    packets_sent = {kind: s.get("packetsSent", 0) for kind, s in sent.items()}
    expected_kinds = [k for k, c in (("video", video), ("audio", audio)) if c != "none"]
    ok = connected and all(packets_sent.get(k, 0) > 0 for k in expected_kinds)
    return {
        "ok": ok,
        "connected": connected,
        "connect_ms": connect_ms,
        "location": session.location,
        "etag": session.etag,
        "codecs": _negotiated_codecs(session.answer),
        "packets_sent": packets_sent,
        "delete_status": delete_status,
    }


# --------------------------------------------------------------------------------------------
# Viewer


@dataclass
class _Counters:
    video_frames: int = 0
    audio_frames: int = 0
    width: int | None = None
    height: int | None = None
    first_frame_at: float | None = None
    errors: list[str] = field(default_factory=list)

    def satisfied(self, min_video: int, min_audio: int) -> bool:
        return self.video_frames >= min_video and self.audio_frames >= min_audio


async def _consume(track: Any, counters: _Counters, on_frame: Callable[[], None]) -> None:
    """Pull decoded frames until the track ends; recv() is what drives aiortc's decoder."""
    try:
        while True:
            frame = await track.recv()
            if track.kind == "video":
                if counters.first_frame_at is None:
                    counters.first_frame_at = time.monotonic()
                    counters.width, counters.height = frame.width, frame.height
                counters.video_frames += 1
            else:
                counters.audio_frames += 1
            on_frame()
    except MediaStreamError:
        pass  # track ended: normal at close


async def view(
    url: str,
    room: str,
    seconds: float,
    min_video_frames: int = 1,
    min_audio_frames: int = 1,
    token: str | None = None,
    retry_404_for: float = 10.0,
    stop_when_satisfied: bool = False,
    loopback: bool | None = None,
) -> dict[str, Any]:
    """Play a room over WHEP for `seconds`, counting decoded frames, then DELETE the session."""
    if loopback or (loopback is None and _is_loopback(url)):
        allow_loopback_candidates()
    pc = _new_pc()
    counters = _Counters()
    satisfied = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    def on_frame() -> None:
        if counters.satisfied(min_video_frames, min_audio_frames):
            satisfied.set()

    @pc.on("track")
    def on_track(track: Any) -> None:
        tasks.append(asyncio.ensure_future(_consume(track, counters, on_frame)))

    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            endpoint = _endpoint(url, "api/whep/play", room)
            session = await post_offer(
                http, endpoint, pc.localDescription.sdp, token, retry_404_for=retry_404_for
            )
            # Measure from the POST that succeeded, not from the 404 retries before it.
            post_started = time.monotonic() - session.post_ms / 1000
            await pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
            connected = await wait_connected(pc, seconds)
            remaining = seconds - (time.monotonic() - post_started)
            if stop_when_satisfied:
                try:
                    await asyncio.wait_for(satisfied.wait(), max(0.0, remaining))
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(max(0.0, remaining))
            received = await rtp_stats(pc, "inbound-rtp")
            delete_status = await delete_session(http, session.location, token)
    finally:
        await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    first_ms = None
    if counters.first_frame_at is not None:
        first_ms = round((counters.first_frame_at - post_started) * 1000, 1)
    return {
        "ok": connected and counters.satisfied(min_video_frames, min_audio_frames),
        "connected": connected,
        "location": session.location,
        "post_attempts": session.attempts,
        "codecs": _negotiated_codecs(session.answer),
        "video_frames": counters.video_frames,
        "audio_frames": counters.audio_frames,
        "width": counters.width,
        "height": counters.height,
        "first_frame_ms": first_ms,
        "rtp": received,
        "delete_status": delete_status,
    }


# --------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("publish", "view"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
        p.add_argument("--room", required=True)
        p.add_argument("--seconds", type=float, default=5.0)
        p.add_argument("--token", help="bearer token (omitted from requests when not given)")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr")
    pub = sub.choices["publish"]
    pub.add_argument("--video", choices=["vp8", "h264", "none"], default="vp8")
    pub.add_argument("--audio", choices=["opus", "none"], default="opus")
    pub.add_argument("--fps", type=int, default=30)
    pub.add_argument("--width", type=int, default=640)
    pub.add_argument("--height", type=int, default=360)
    pub.add_argument("--connect-timeout", type=float, default=10.0)
    viewer = sub.choices["view"]
    viewer.add_argument("--min-video-frames", type=int, default=1)
    viewer.add_argument("--min-audio-frames", type=int, default=1)
    viewer.add_argument(
        "--retry-404-for", type=float, default=10.0, help="keep re-POSTing while 404 (seconds)"
    )
    viewer.add_argument(
        "--stop-when-satisfied", action="store_true", help="end as soon as the minimums are met"
    )
    return parser


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    common = {"url": args.url, "room": args.room, "seconds": args.seconds, "token": args.token}
    if args.mode == "publish":
        return await publish(
            **common,
            video=args.video,
            audio=args.audio,
            fps=args.fps,
            width=args.width,
            height=args.height,
            connect_timeout=args.connect_timeout,
        )
    return await view(
        **common,
        min_video_frames=args.min_video_frames,
        min_audio_frames=args.min_audio_frames,
        retry_404_for=args.retry_404_for,
        stop_when_satisfied=args.stop_when_satisfied,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s peer %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = asyncio.run(_run(args))
        code = EXIT_OK if result["ok"] else EXIT_GOALS_MISSED
    except WhipError as exc:
        result, code = exc.as_result(), EXIT_HTTP_ERROR
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        result, code = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, EXIT_HTTP_ERROR
    result["mode"] = args.mode
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
