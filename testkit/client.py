"""WHIP publisher / WHEP viewer built on aiortc: the one test and bench client.

Tests run it as a separate process, so that the client's event loop, decoder threads and UDP
sockets never share a process with the server under test:

    python -m testkit.client publish --url http://127.0.0.1:8080 --room r1 --seconds 5
    python -m testkit.client view --url http://127.0.0.1:8080 --room r1 --seconds 5 \
        --min-video-frames 30 --min-audio-frames 50

Each run prints exactly one JSON object on the last line of stdout (logs go to stderr) and exits
0 when "ok" is true, 1 when the session ran but missed its goals, 2 when the HTTP exchange failed.
The coroutines publish() and view() return the same dictionaries for in-process use.

Beyond plain VP8/H264 + Opus it has the knobs the interop tests turn:
* --all-codecs: offer every codec live-sfu forwards, through
  `sfu.aiortc_adapter.install_negotiation` (the process then negotiates like a browser:
  VP9/AV1/all H264 profiles); needed by --h264-profile;
* --h264-profile: H264 in that profile, encoded here with PyAV's libx264 and handed to aiortc
  as packets, which it packetizes without re-encoding; --packetization-mode 0 puts every NAL
  unit in its own packet (aiortc itself only does mode 1); --payload-bytes fills packets
  beyond aiortc's own size (GStreamer fills 1400 bytes);
* --certificate rsa (what GStreamer's webrtcbin uses) and --setup active|passive (what
  ffmpeg's WHIP muxer offers) instead of an ECDSA certificate and actpass;
* --video h265 (needs --all-codecs): HEVC Main from libx265, packetized per RFC 7798
  (testkit/h265.py), an IDR every second whatever the keyframe requests; with
  --all-codecs a viewer also decodes H265. Both report testkit.h265's counters ("h265").
Those that patch aiortc (--all-codecs, mode 0, --payload-bytes) do so for the whole process.

The protocol calls (post_offer, delete_session, wait_connected, rtp_stats) are also what the
load generator in bench/ uses.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import aioice.ice
import av
import pylibsrtp
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc import rtcrtpsender as aiortc_rtcrtpsender
from aiortc.codecs import get_encoder as aiortc_get_encoder
from aiortc.codecs import h264 as aiortc_h264
from aiortc.codecs.base import Encoder
from aiortc.codecs.h264 import PACKET_MAX, H264Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import RTCCertificate, generate_certificate
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from cryptography.hazmat.primitives.asymmetric import rsa

from testkit import h265
from testkit.media import H264_PROFILES, H264PacketTrack, PatternVideoTrack, SineAudioTrack

log = logging.getLogger("testkit.client")

EXIT_OK, EXIT_GOALS_MISSED, EXIT_HTTP_ERROR = 0, 1, 2
Certificate = Literal["ecdsa", "rsa"]
Setup = Literal["actpass", "active", "passive"]


def command(mode: str, url: str, room: str, *args: str) -> list[str]:
    """The command line that runs this client as a process (from the repository root)."""
    return [sys.executable, "-m", "testkit.client", mode, "--url", url, "--room", room, *args]


class WhipError(Exception):
    """The server refused or mangled the WHIP/WHEP exchange; carries what it said."""

    def __init__(self, message: str, status: int | None = None, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body

    def as_result(self) -> dict[str, Any]:
        return {"ok": False, "error": str(self), "status": self.status, "body": self.body[:2000]}


# --------------------------------------------------------------------------------------------
# WHIP/WHEP over HTTP


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


def endpoint(base_url: str, kind: Literal["whip", "whep"], room: str) -> str:
    path = "api/whip/publish" if kind == "whip" else "api/whep/play"
    return f"{base_url.rstrip('/')}/{path}/{quote(room, safe='')}"


# --------------------------------------------------------------------------------------------
# aiortc: peer connections, codecs, what the SDP says


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


def new_pc(certificate: Certificate = "ecdsa") -> RTCPeerConnection:
    # No STUN: the default Google STUN server would add up to 5 s of gathering and is useless
    # against a local server.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if certificate == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # aiortc annotates RTCCertificate for its own EC keys only; it works with any key.
        rsa_certificate = RTCCertificate(key=key, cert=generate_certificate(key))  # type: ignore[arg-type]
        # aiortc has no configuration option for certificates; the list is read when each
        # transceiver's DTLS transport is created, so it must be replaced before any is (a
        # private, name-mangled attribute: hence the ignore).
        pc._RTCPeerConnection__certificates = [rsa_certificate]  # type: ignore[attr-defined]
    return pc


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

    with_loopback._peer_loopback = True  # type: ignore[attr-defined]  # a marker on a function
    aioice.ice.get_host_addresses = with_loopback


def offer_all_codecs() -> None:
    """Offer every codec live-sfu forwards, as a browser does (for the whole process), and
    send and receive H265, which aiortc lacks (testkit.h265)."""
    from sfu.aiortc_adapter import install_negotiation

    install_negotiation()
    h265.install()


class SingleNalH264Encoder(H264Encoder):
    """Packetization mode 0 (RFC 6184 §6.2): one NAL unit per packet, no STAP-A or FU-A."""

    @classmethod
    def _packetize(cls, packages: Any) -> list[bytes]:
        payloads = [bytes(nal) for nal in packages if nal]
        for nal in payloads:
            if len(nal) > PACKET_MAX:
                raise ValueError(f"a {len(nal)}-byte NAL unit does not fit one packet")
        return payloads


def use_single_nal_packetization() -> None:
    """H264 senders of this process packetize in mode 0."""
    original = aiortc_get_encoder

    def get_encoder(codec: RTCRtpCodecParameters) -> Encoder:
        if codec.mimeType.lower() == "video/h264":
            return SingleNalH264Encoder()
        return original(codec)

    # The sender module's own binding of aiortc.codecs.get_encoder: what its senders call.
    aiortc_rtcrtpsender.get_encoder = get_encoder  # type: ignore[attr-defined]  # an imported name


def use_large_packets(payload_bytes: int) -> None:
    """Fill H264 packets up to `payload_bytes` (GStreamer's payloaders fill 1400 bytes).

    aiortc's packetizer reads PACKET_MAX at call time; its SRTP sessions get a buffer large
    enough to protect such packets (the same enlargement the worker makes for viewers).
    """
    from sfu.aiortc_adapter import allow_full_size_packets

    aiortc_h264.PACKET_MAX = payload_bytes
    original_init = pylibsrtp.Session.__init__

    def init(self: pylibsrtp.Session, policy: pylibsrtp.Policy | None = None) -> None:
        original_init(self, policy)
        allow_full_size_packets(self)

    # A process-wide patch (see the docstring): mypy forbids assigning to a method.
    pylibsrtp.Session.__init__ = init  # type: ignore[method-assign]


def prefer_codec(
    transceiver: RTCRtpTransceiver, mime: str, match: dict[str, str] | None = None
) -> None:
    """Restrict a transceiver to one codec (plus RTX for video).

    Without `match` every capability of that mime type stays (aiortc's H264 has several);
    with it, the first one whose fmtp parameters have those values.
    """
    kind = mime.split("/")[0]
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [
        c
        for c in caps
        if c.mimeType.lower() == mime.lower()
        and all(str(c.parameters.get(k)) == v for k, v in (match or {}).items())
    ]
    if not chosen:
        raise ValueError(f"aiortc cannot send {mime} {match or ''}".rstrip())
    if match:
        chosen = chosen[:1]
    chosen += [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]
    transceiver.setCodecPreferences(chosen)


def with_setup(sdp: str, setup: Setup) -> str:
    """The offer with a=setup:actpass replaced (a client that insists on a DTLS role)."""
    return sdp.replace("a=setup:actpass", f"a=setup:{setup}")


def negotiated_codecs(sdp: str) -> dict[str, str]:
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


def answered_video_fmtp(answer: str) -> dict[str, str]:
    """rtpmap and fmtp of the first format of the answer's first video section."""
    first_pt, result = None, {"rtpmap": "", "fmtp": ""}
    for line in answer.splitlines():
        if line.startswith("m=video") and first_pt is None:
            first_pt = line.split()[3]
        elif first_pt is not None and line.startswith(f"a=rtpmap:{first_pt} "):
            result["rtpmap"] = line.split(" ", 1)[1]
        elif first_pt is not None and line.startswith(f"a=fmtp:{first_pt} "):
            result["fmtp"] = line.split(" ", 1)[1]
    return result


def dtls_setup(sdp: str) -> str | None:
    return next((line[8:] for line in sdp.splitlines() if line.startswith("a=setup:")), None)


# --------------------------------------------------------------------------------------------
# Offers alone (for tests of the signalling that never connect)


async def publisher_offer(pc: RTCPeerConnection, video: bool = True, audio: bool = True) -> str:
    """A sendonly VP8 + Opus offer from `pc` (complete: aiortc gathers before answering)."""
    if video:
        pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
    if audio:
        pc.addTransceiver(SineAudioTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


async def viewer_offer(pc: RTCPeerConnection) -> str:
    """A recvonly video + audio offer from `pc`."""
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


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
    all_codecs: bool = False,
    h264_profile: str | None = None,
    packetization_mode: int = 1,
    payload_bytes: int = 0,
    certificate: Certificate = "ecdsa",
    setup: Setup = "actpass",
) -> dict[str, Any]:
    """Publish synthetic media over WHIP for `seconds`, then DELETE the session.

    loopback=None adds 127.0.0.1 candidates only when the server URL is itself loopback.
    h264_profile=None sends aiortc's own H264 (constrained baseline, packetization mode 1).
    """
    if h264_profile is None and (packetization_mode != 1 or payload_bytes):
        raise ValueError("packetization mode 0 and payload_bytes need an h264_profile")
    if h264_profile is not None and not all_codecs:
        raise ValueError("an h264_profile needs all_codecs (aiortc offers constrained baseline)")
    if video == "h265" and not all_codecs:
        raise ValueError("h265 needs all_codecs (aiortc alone has no H265)")
    if loopback or (loopback is None and _is_loopback(url)):
        allow_loopback_candidates()
    if all_codecs:
        offer_all_codecs()
    pc = new_pc(certificate)
    track: H264PacketTrack | None = None
    keyframe_requests = KeyframeRequestCounter()
    try:
        if video == "h264" and h264_profile is not None:
            if payload_bytes:
                use_large_packets(payload_bytes)
            if packetization_mode == 0:
                use_single_nal_packetization()
            track = H264PacketTrack(h264_profile, packetization_mode == 0, width, height, fps)
            transceiver = pc.addTransceiver(track, direction="sendonly")
            plid = H264_PROFILES[h264_profile][1]
            match = {"profile-level-id": plid, "packetization-mode": str(packetization_mode)}
            prefer_codec(transceiver, "video/h264", match)
        elif video == "h265":
            h265.install(frame_rate=fps)
            transceiver = pc.addTransceiver(
                PatternVideoTrack(width, height, fps), direction="sendonly"
            )
            prefer_codec(transceiver, "video/h265", {"profile-id": "1"})  # Main: 8-bit 4:2:0
        elif video != "none":
            transceiver = pc.addTransceiver(
                PatternVideoTrack(width, height, fps), direction="sendonly"
            )
            prefer_codec(transceiver, f"video/{video}")
        if audio != "none":
            transceiver = pc.addTransceiver(SineAudioTrack(), direction="sendonly")
            prefer_codec(transceiver, f"audio/{audio}")
        # aiortc gathers every candidate inside setLocalDescription, so the offer is complete.
        await pc.setLocalDescription(await pc.createOffer())
        offer = with_setup(pc.localDescription.sdp, setup)
        async with aiohttp.ClientSession() as http:
            session = await post_offer(http, endpoint(url, "whip", room), offer, token)
            await pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
            for sender in pc.getSenders():
                if sender.track is not None and sender.track.kind == "video":
                    keyframe_requests.install(sender)
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
        "codecs": negotiated_codecs(session.answer),
        "answer_setup": dtls_setup(session.answer),
        "answer_video": answered_video_fmtp(session.answer),
        "sps_profile_idc": track.sps_profile_idc if track is not None else None,
        "packets_sent": packets_sent,
        "keyframe_requests": keyframe_requests.count,
        "delete_status": delete_status,
        **_h265_stats(session.answer),
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


async def _consume(
    track: MediaStreamTrack, counters: _Counters, on_frame: Callable[[], None]
) -> None:
    """Pull decoded frames until the track ends; recv() is what drives aiortc's decoder."""
    try:
        while True:
            frame = await track.recv()
            if isinstance(frame, av.VideoFrame):
                if counters.first_frame_at is None:
                    counters.first_frame_at = time.monotonic()
                    counters.width, counters.height = frame.width, frame.height
                counters.video_frames += 1
            else:
                counters.audio_frames += 1
            on_frame()
    except MediaStreamError:
        pass  # track ended: normal at close


class KeyframeRequestCounter:
    """Counts the keyframe requests (PLI/FIR) a publisher's video sender acts on, by wrapping
    aiortc's private RTCRtpSender._send_keyframe (a test tool, like DropTap)."""

    def __init__(self) -> None:
        self.count = 0

    def install(self, sender: RTCRtpSender) -> None:
        original = sender._send_keyframe

        def send_keyframe() -> None:
            self.count += 1
            original()

        sender._send_keyframe = send_keyframe  # type: ignore[method-assign]


class DropTap:
    """Drops the first copy of every `every`-th video packet before aiortc's receiver sees it,
    so that the viewer NACKs them, and counts those that come back (as a retransmission,
    RTX-wrapped or not): an end-to-end check that the server answers NACKs.

    It wraps aiortc's private RTCRtpReceiver._handle_rtp_packet (a test tool, like
    bench/aiortc_taps.py; production code keeps such uses in sfu/aiortc_adapter)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.dropped: set[int] = set()
        self.recovered: set[int] = set()
        self._media_pt: int | None = None

    def install(self, transceiver: RTCRtpTransceiver) -> None:
        receiver = transceiver.receiver
        original = receiver._handle_rtp_packet

        async def handle(packet: Any, arrival_time_ms: int) -> None:
            if self._media_pt is None:
                self._media_pt = packet.payload_type  # media comes first; RTX only on NACKs
            seq = packet.sequence_number
            if packet.payload_type == self._media_pt:
                if seq in self.dropped:
                    self.recovered.add(seq)
                elif seq % self.every == 0 and len(packet.payload) > 0:
                    self.dropped.add(seq)
                    return
            elif len(packet.payload) >= 2:
                original_seq = (packet.payload[0] << 8) | packet.payload[1]
                if original_seq in self.dropped:
                    self.recovered.add(original_seq)
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle  # type: ignore[method-assign]


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
    all_codecs: bool = False,
    certificate: Certificate = "ecdsa",
    setup: Setup = "actpass",
    drop_every: int = 0,
) -> dict[str, Any]:
    """Play a room over WHEP for `seconds` from the answer, counting decoded frames, then
    DELETE the session; with stop_when_satisfied, end as soon as the minimums are met.
    drop_every: drop every n-th video packet once (DropTap) to make the viewer NACK."""
    if loopback or (loopback is None and _is_loopback(url)):
        allow_loopback_candidates()
    if all_codecs:
        offer_all_codecs()
    pc = new_pc(certificate)
    counters = _Counters()
    satisfied = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    def on_frame() -> None:
        if counters.satisfied(min_video_frames, min_audio_frames):
            satisfied.set()

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        tasks.append(asyncio.ensure_future(_consume(track, counters, on_frame)))

    drops = DropTap(drop_every) if drop_every > 0 else None
    try:
        offer = with_setup(await viewer_offer(pc), setup)
        if drops is not None:
            for transceiver in pc.getTransceivers():
                if transceiver.kind == "video":
                    drops.install(transceiver)
        async with aiohttp.ClientSession() as http:
            session = await post_offer(
                http, endpoint(url, "whep", room), offer, token, retry_404_for=retry_404_for
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
        "codecs": negotiated_codecs(session.answer),
        "answer_setup": dtls_setup(session.answer),
        "answer_video": answered_video_fmtp(session.answer),
        "video_frames": counters.video_frames,
        "audio_frames": counters.audio_frames,
        "width": counters.width,
        "height": counters.height,
        "size": [] if counters.width is None else [counters.width, counters.height],
        "first_frame_ms": first_ms,
        "rtp": received,
        "delete_status": delete_status,
        "dropped": len(drops.dropped) if drops is not None else 0,
        "recovered": len(drops.recovered) if drops is not None else 0,
        **_h265_stats(session.answer),
    }


def _h265_stats(answer: str) -> dict[str, Any]:
    """testkit.h265's counters, when the answer negotiated H265 video."""
    if negotiated_codecs(answer).get("video", "").upper() != "H265":
        return {}
    return {"h265": h265.STATS.as_dict()}


# --------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m testkit.client", description=(__doc__ or "").split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("publish", "view"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
        p.add_argument("--room", required=True)
        p.add_argument("--seconds", type=float, default=5.0)
        p.add_argument("--token", help="bearer token (omitted from requests when not given)")
        p.add_argument(
            "--all-codecs", action="store_true", help="offer every codec live-sfu forwards"
        )
        p.add_argument("--certificate", choices=["ecdsa", "rsa"], default="ecdsa")
        p.add_argument("--setup", choices=["actpass", "active", "passive"], default="actpass")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr")
    pub = sub.choices["publish"]
    pub.add_argument("--video", choices=["vp8", "h264", "h265", "none"], default="vp8")
    pub.add_argument("--audio", choices=["opus", "none"], default="opus")
    pub.add_argument("--fps", type=int, default=30)
    pub.add_argument("--width", type=int, default=640)
    pub.add_argument("--height", type=int, default=360)
    pub.add_argument("--connect-timeout", type=float, default=10.0)
    pub.add_argument(
        "--h264-profile",
        choices=sorted(H264_PROFILES),
        help="encode H264 in this profile with libx264 (needs --all-codecs)",
    )
    pub.add_argument("--packetization-mode", type=int, choices=[0, 1], default=1)
    pub.add_argument(
        "--payload-bytes", type=int, default=0, help="H264 packet payload size (default aiortc's)"
    )
    viewer = sub.choices["view"]
    viewer.add_argument("--min-video-frames", type=int, default=1)
    viewer.add_argument("--min-audio-frames", type=int, default=1)
    viewer.add_argument(
        "--retry-404-for", type=float, default=10.0, help="keep re-POSTing while 404 (seconds)"
    )
    viewer.add_argument(
        "--stop-when-satisfied", action="store_true", help="end as soon as the minimums are met"
    )
    viewer.add_argument(
        "--drop-every",
        type=int,
        default=0,
        help="drop the first copy of every n-th video packet (the viewer NACKs it)",
    )
    return parser


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    common = {
        "url": args.url,
        "room": args.room,
        "seconds": args.seconds,
        "token": args.token,
        "all_codecs": args.all_codecs,
        "certificate": args.certificate,
        "setup": args.setup,
    }
    if args.mode == "publish":
        return await publish(
            **common,
            video=args.video,
            audio=args.audio,
            fps=args.fps,
            width=args.width,
            height=args.height,
            connect_timeout=args.connect_timeout,
            h264_profile=args.h264_profile,
            packetization_mode=args.packetization_mode,
            payload_bytes=args.payload_bytes,
        )
    return await view(
        **common,
        min_video_frames=args.min_video_frames,
        min_audio_frames=args.min_audio_frames,
        retry_404_for=args.retry_404_for,
        stop_when_satisfied=args.stop_when_satisfied,
        drop_every=args.drop_every,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s client %(levelname)s %(name)s: %(message)s",
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
