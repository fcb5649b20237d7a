"""An aiortc WHIP publisher / WHEP viewer with the knobs the interop tests turn.

    python tests/interop/aiortc_peer.py publish --url URL --room R --video h264 \
        --h264-profile high --packetization-mode 1 --certificate rsa --setup passive
    python tests/interop/aiortc_peer.py view --url URL --room R --min-video-frames 30

Beyond tests/clients/peer.py it can
* publish H264 in any profile (frames are encoded here with PyAV's libx264 and handed to
  aiortc as packets, which it packetizes without re-encoding) and in packetization mode 0
  (every NAL unit in its own packet: aiortc itself only does mode 1);
* use an RSA DTLS certificate (what GStreamer's webrtcbin uses) and offer a=setup:active or
  a=setup:passive (what ffmpeg's WHIP muxer offers) instead of actpass;
* offer every codec live-sfu forwards, through `sfu.aiortc_adapter.install_negotiation`
  (this process then negotiates like a browser: VP9/AV1/all H264 profiles).

It prints one JSON object on the last stdout line and exits 0 when "ok" is true, 1 when the
session ran but missed its goals, 2 when the HTTP exchange failed.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import pylibsrtp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc import rtcrtpsender as aiortc_rtcrtpsender
from aiortc.codecs import h264 as aiortc_h264
from aiortc.codecs.h264 import PACKET_MAX, H264Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcdtlstransport import RTCCertificate, generate_certificate
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sfu.aiortc_adapter import allow_full_size_packets, install_negotiation  # noqa: E402
from tests.clients.peer import (  # noqa: E402
    PatternVideoTrack,
    SineAudioTrack,
    WhipError,
    allow_loopback_candidates,
    delete_session,
    post_offer,
    rtp_stats,
    wait_connected,
)

log = logging.getLogger("aiortc_peer")
VIDEO_CLOCK = 90_000
# libx264 profile and the profile-level-id a client offers for it.
H264_PROFILES = {
    "constrained-baseline": ("baseline", "42e01f"),
    "baseline": ("baseline", "42001f"),
    "main": ("main", "4d001f"),
    "constrained-high": ("high", "640c1f"),
    "high": ("high", "64001f"),
}
SPS_NAL = 7


class H264PacketTrack(MediaStreamTrack):
    """Encodes the moving pattern with libx264 in a chosen profile and yields av.Packets.

    aiortc's own H264 encoder only makes constrained baseline; given packets it just
    packetizes them. No B-frames (WebRTC receivers do not reorder), a keyframe every second.
    """

    kind = "video"

    def __init__(self, profile: str, single_nal: bool, fps: int = 30) -> None:
        super().__init__()
        self._source = PatternVideoTrack(640, 360, fps)
        self._encoder = av.CodecContext.create("libx264", "w")
        self._encoder.width, self._encoder.height = 640, 360
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

    async def recv(self) -> av.Packet:
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
    original = aiortc_rtcrtpsender.get_encoder

    def get_encoder(codec: Any) -> Any:
        if codec.mimeType.lower() == "video/h264":
            return SingleNalH264Encoder()
        return original(codec)

    aiortc_rtcrtpsender.get_encoder = get_encoder


def use_large_packets(payload_bytes: int) -> None:
    """Fill H264 packets up to `payload_bytes` (GStreamer's payloaders fill 1400 bytes).

    aiortc's packetizer reads PACKET_MAX at call time; its SRTP sessions get a buffer large
    enough to protect such packets (the same enlargement the worker makes for viewers).
    """
    aiortc_h264.PACKET_MAX = payload_bytes
    original_init = pylibsrtp.Session.__init__

    def init(self: pylibsrtp.Session, policy: pylibsrtp.Policy | None = None) -> None:
        original_init(self, policy)
        allow_full_size_packets(self)

    pylibsrtp.Session.__init__ = init  # type: ignore[method-assign]


def new_pc(certificate: str) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if certificate == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        rsa_certificate = RTCCertificate(key=key, cert=generate_certificate(key))  # type: ignore[arg-type]
        # aiortc has no configuration option for certificates; the list is read when each
        # transceiver's DTLS transport is created, so it must be replaced before any is.
        pc._RTCPeerConnection__certificates = [rsa_certificate]  # type: ignore[attr-defined]
    return pc


def with_setup(sdp: str, setup: str) -> str:
    return sdp.replace("a=setup:actpass", f"a=setup:{setup}")


def _prefer(transceiver: Any, kind: str, match: dict[str, str] | None, mime: str) -> None:
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [
        c
        for c in caps
        if c.mimeType.lower() == mime
        and all(str(c.parameters.get(k)) == v for k, v in (match or {}).items())
    ]
    if not chosen:
        raise ValueError(f"no {mime} {match} capability")
    rtx = [c for c in caps if c.mimeType.lower() == f"{kind}/rtx"]
    transceiver.setCodecPreferences(chosen[:1] + rtx)


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


async def publish(args: argparse.Namespace) -> dict[str, Any]:
    pc = new_pc(args.certificate)
    track: H264PacketTrack | None = None
    try:
        if args.video == "h264":
            if args.payload_bytes:
                use_large_packets(args.payload_bytes)
            if args.packetization_mode == 0:
                use_single_nal_packetization()
            track = H264PacketTrack(args.h264_profile, args.packetization_mode == 0)
            transceiver = pc.addTransceiver(track, direction="sendonly")
            plid = H264_PROFILES[args.h264_profile][1]
            match = {"profile-level-id": plid, "packetization-mode": str(args.packetization_mode)}
            _prefer(transceiver, "video", match, "video/h264")
        elif args.video == "vp8":
            transceiver = pc.addTransceiver(PatternVideoTrack(640, 360, 30), direction="sendonly")
            _prefer(transceiver, "video", None, "video/vp8")
        if args.audio == "opus":
            transceiver = pc.addTransceiver(SineAudioTrack(), direction="sendonly")
            _prefer(transceiver, "audio", None, "audio/opus")
        await pc.setLocalDescription(await pc.createOffer())
        offer = with_setup(pc.localDescription.sdp, args.setup)
        async with aiohttp.ClientSession() as http:
            endpoint = f"{args.url.rstrip('/')}/api/whip/publish/{args.room}"
            session = await post_offer(http, endpoint, offer, None)
            await pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
            started = time.monotonic()
            connected = await wait_connected(pc, args.connect_timeout)
            await asyncio.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
            sent = await rtp_stats(pc, "outbound-rtp")
            delete_status = await delete_session(http, session.location, None)
    finally:
        await pc.close()
    packets_sent = {kind: s.get("packetsSent", 0) for kind, s in sent.items()}
    expected = [k for k, c in (("video", args.video), ("audio", args.audio)) if c != "none"]
    return {
        "ok": connected and all(packets_sent.get(k, 0) > 0 for k in expected),
        "connected": connected,
        "answer_setup": dtls_setup(session.answer),
        "answer_video": answered_video_fmtp(session.answer),
        "sps_profile_idc": track.sps_profile_idc if track is not None else None,
        "packets_sent": packets_sent,
        "delete_status": delete_status,
    }


async def view(args: argparse.Namespace) -> dict[str, Any]:
    pc = new_pc(args.certificate)
    frames = {"video": 0, "audio": 0}
    size: list[int] = []
    satisfied = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def consume(track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                frames[track.kind] += 1
                if isinstance(frame, av.VideoFrame) and not size:
                    size.extend((frame.width, frame.height))
                if frames["video"] >= args.min_video_frames and (
                    frames["audio"] >= args.min_audio_frames
                ):
                    satisfied.set()
        except MediaStreamError:
            pass

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        tasks.append(asyncio.ensure_future(consume(track)))

    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = with_setup(pc.localDescription.sdp, args.setup)
        async with aiohttp.ClientSession() as http:
            endpoint = f"{args.url.rstrip('/')}/api/whep/play/{args.room}"
            session = await post_offer(http, endpoint, offer, None, retry_404_for=15.0)
            await pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
            connected = await wait_connected(pc, args.connect_timeout)
            try:
                await asyncio.wait_for(satisfied.wait(), args.seconds)
            except TimeoutError:
                pass
            received = await rtp_stats(pc, "inbound-rtp")
            delete_status = await delete_session(http, session.location, None)
    finally:
        await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "ok": connected and satisfied.is_set(),
        "connected": connected,
        "answer_setup": dtls_setup(session.answer),
        "answer_video": answered_video_fmtp(session.answer),
        "video_frames": frames["video"],
        "audio_frames": frames["audio"],
        "size": size,
        "rtp": received,
        "delete_status": delete_status,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("publish", "view"):
        p = sub.add_parser(name)
        p.add_argument("--url", required=True)
        p.add_argument("--room", required=True)
        p.add_argument("--seconds", type=float, default=8.0)
        p.add_argument("--certificate", choices=["ecdsa", "rsa"], default="ecdsa")
        p.add_argument("--setup", choices=["actpass", "active", "passive"], default="actpass")
        p.add_argument("--connect-timeout", type=float, default=10.0)
        p.add_argument("-v", "--verbose", action="store_true")
    pub = sub.choices["publish"]
    pub.add_argument("--video", choices=["h264", "vp8", "none"], default="h264")
    pub.add_argument("--h264-profile", choices=sorted(H264_PROFILES), default="high")
    pub.add_argument("--packetization-mode", type=int, choices=[0, 1], default=1)
    pub.add_argument("--audio", choices=["opus", "none"], default="opus")
    pub.add_argument(
        "--payload-bytes", type=int, default=0, help="H264 packet payload size (default aiortc's)"
    )
    viewer = sub.choices["view"]
    viewer.add_argument("--min-video-frames", type=int, default=30)
    viewer.add_argument("--min-audio-frames", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s aiortc_peer %(levelname)s %(name)s: %(message)s",
    )
    install_negotiation()
    allow_loopback_candidates()
    try:
        result = asyncio.run(publish(args) if args.mode == "publish" else view(args))
        code = 0 if result["ok"] else 1
    except WhipError as exc:
        result, code = exc.as_result(), 2
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        result, code = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}, 2
    result["mode"] = args.mode
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
