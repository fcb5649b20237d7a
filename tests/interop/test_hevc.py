"""HEVC (H265, RFC 7798) pass-through: negotiated by profile, forwarded, started at a
keyframe for a late viewer, and recorded to a Matroska file that PyAV decodes.

Publishers: the aiortc client (`--video h265`: libx265 through PyAV, packetized per RFC 7798
by testkit/h265.py, an implementation independent of the recorder's depacketizer, an IDR
every second whatever the keyframe requests), and GStreamer's webrtcbin with x265enc and
rtph265pay (tests/clients/gst_whip.py --codec h265). Chromium offers H265 only with
hardware decoding, and ffmpeg's WHIP muxer sends only H264. The viewers are the aiortc
client, decoding with FFmpeg's hevc decoder.

The pure checks come first: the SDP codec key and level echo, and the recorder's
depacketizer against the test packetizer on real libx265 output (and hostile input).
"""

from __future__ import annotations

import fractions
import json
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import pytest
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu.recording.codecs import codec_format, h265_access_unit
from sfu.sdp import codec_key, describe_codec, echo_h264_levels, h265_profile
from testkit import h265
from testkit.media import PatternVideoTrack
from testkit.processes import GatewayProcess, wait_sync
from tests.interop.sdp_offers import CHROME_AUDIO, Section, answer_sections, browser_offer, only
from tests.recording.conftest import admin_get, list_records, record_env
from tests.recording.harness import inspect
from tests.support.clients import (
    GST_WHIP,
    SYSTEM_PYTHON,
    PeerProcess,
    require_gstreamer,
    skip_or_fail,
    spawn_interop_peer,
)
from tests.support.sdp import post_offer_sync

PUBLISH_SECONDS = 8.0
LATE_JOIN_AFTER = 3.5  # seconds after the publisher started: mid-GOP (an IDR every second)
MIN_VIDEO_FRAMES = 60  # two seconds of the 30 fps publisher
OPUS = only(CHROME_AUDIO, "opus")


def _h265(profile_id: str | None, **extra: str) -> RTCRtpCodecParameters:
    parameters: dict[str, str | int | None] = dict(extra)
    if profile_id is not None:
        parameters["profile-id"] = profile_id
    return RTCRtpCodecParameters(
        mimeType="video/H265", clockRate=90000, payloadType=96, parameters=parameters
    )


def test_h265_formats_match_by_profile_not_level() -> None:
    main = codec_key(_h265("1", **{"level-id": "93", "tier-flag": "0", "tx-mode": "SRST"}))
    assert main == codec_key(_h265("1", **{"level-id": "180", "tier-flag": "1"}))
    assert main == codec_key(_h265(None))  # RFC 7798: Main when profile-id is absent
    assert main != codec_key(_h265("2"))
    assert main != codec_key(_h265("1", **{"tx-mode": "MRST"}))
    assert main == codec_key(_h265("1", **{"sprop-max-don-diff": "0"}))
    assert main != codec_key(_h265("1", **{"sprop-max-don-diff": "2"}))  # DONL fields
    assert main.describe() == "h265/90000 (profile=main;tx-mode=SRST)"
    assert h265_profile("2") == "main-10" and h265_profile(7) == "profile-7"
    for bad in ("x", "-1", "32", "1" * 50, ""):
        with pytest.raises(ValueError):
            h265_profile(bad)
    assert describe_codec(_h265("1")) == "H265 (main, profile-id=1)"
    assert describe_codec(_h265("junk")) == "H265 (malformed profile, profile-id=junk)"


def test_answers_echo_the_offered_h265_level_and_tier() -> None:
    offer = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 49 50\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n"
        "a=rtpmap:49 H265/90000\r\n"
        "a=fmtp:49 level-id=180;profile-id=1;tier-flag=0;tx-mode=SRST\r\n"
        "a=rtpmap:50 rtx/90000\r\na=fmtp:50 apt=49\r\n"
    )
    answer = (
        "v=0\r\no=- 2 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 49 50\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n"
        "a=rtpmap:49 H265/90000\r\n"
        "a=fmtp:49 level-id=93;profile-id=1;tier-flag=0;tx-mode=SRST\r\n"
        "a=rtpmap:50 rtx/90000\r\na=fmtp:50 apt=49\r\n"
    )
    echoed = echo_h264_levels(answer, aiortc_sdp.SessionDescription.parse(offer))
    assert "a=fmtp:49 level-id=180;profile-id=1;tier-flag=0;tx-mode=SRST" in echoed.splitlines()
    assert "a=fmtp:50 apt=49" in echoed.splitlines()


def _x265_access_units(count: int) -> list[list[bytes]]:
    """RTP payloads of `count` libx265 access units (the first one an IDR)."""
    source = PatternVideoTrack(640, 360, 30)
    encoder = h265.H265Encoder(frame_rate=30)
    units = []
    for index in range(count):
        frame = av.VideoFrame(640, 360, "yuv420p")
        source._fill_luma(frame, index)
        source._fill_chroma(frame, index)
        frame.pts, frame.time_base = index * 3000, fractions.Fraction(1, 90000)
        payloads, _timestamp = encoder.encode(frame)
        units.append(payloads)
    return units


def test_recorder_depacketizer_matches_the_test_packetizer() -> None:
    """Single NAL unit packets, APs (VPS/SPS/PPS) and FUs (the IDR) on real x265 output."""
    decoder: Any = av.CodecContext.create("hevc", "r")
    decoded = 0
    kinds: set[int] = set()
    for payloads in _x265_access_units(32):
        kinds |= {h265.nal_type(p) for p in payloads}
        unit = h265_access_unit(payloads)
        assert unit == b"".join(h265.START_CODE + nal for nal in h265.depacketize(payloads))
        assert unit == b"".join(h265.depayload(p) for p in payloads)
        decoded += len(decoder.decode(av.Packet(unit)))
    decoded += len(decoder.decode(None))
    assert decoded == 32
    assert {h265.AP_TYPE, h265.FU_TYPE, 1} <= kinds  # AP, FU and single TRAIL_R packets
    recorded = codec_format("video/H265")
    assert recorded is not None and (recorded.extension, recorded.stream_codec) == ("mkv", "hevc")


def test_recorder_depacketizer_refuses_hostile_input() -> None:
    fu_start = bytes([h265.FU_TYPE << 1, 1, 0x80 | 19]) + b"data"
    fu_end = bytes([h265.FU_TYPE << 1, 1, 0x40 | 19]) + b"tail"
    assert h265_access_unit([fu_start, fu_end]) == h265.START_CODE + bytes([19 << 1, 1]) + (
        b"datatail"
    )
    assert h265_access_unit([fu_end]) is None  # a fragment without its start
    assert h265_access_unit([fu_start]) is None  # a fragment without its end
    assert h265_access_unit([fu_start, bytes([2, 1, 0xAA])]) is None  # interrupted
    assert h265_access_unit([bytes([h265.AP_TYPE << 1, 1, 0, 9, 2, 1])]) is None  # truncated
    assert h265_access_unit([bytes([h265.AP_TYPE << 1, 1, 0, 0])]) is None  # empty unit
    assert h265_access_unit([bytes([0x80, 1, 0])]) is None  # forbidden bit
    assert h265_access_unit([b"\x02"]) is None
    assert h265_access_unit([]) is None


# --- end to end ----------------------------------------------------------------------------


def _viewers_per_worker(gateway: GatewayProcess, room: str, viewers: int) -> dict[str, Any]:
    """The room's home and where its viewers are, once it has `viewers` of them."""

    def placed() -> dict[str, Any] | None:
        status, body = admin_get(gateway.url + "/api/rooms")
        rooms = json.loads(body) if status == 200 else []
        info = next((r for r in rooms if r["name"] == room), None)
        if info is None or sum(info["viewersPerWorker"].values()) != viewers:
            return None
        return {"home": info["home"], "viewers": info["viewersPerWorker"]}

    return wait_sync(placed, 20, f"{viewers} viewer(s) in {room}", gateway.log)


def _video_formats(sdp: str) -> dict[str, str]:
    """rtpmap -> fmtp of the answered (not inactive) video section, by payload type."""
    _, sections = answer_sections(sdp)
    section = next(s for s in sections if s.kind == "video" and s.direction != "inactive")
    return {f"{pt} {section.rtpmap[pt]}": section.fmtp.get(pt, "") for pt in section.formats}


def _check_browser_style_negotiation(gateway: GatewayProcess) -> None:
    """What Chromium with hardware HEVC offers: Main and Main 10 at level 6.0 (180)."""
    h265 = (
        (49, "H265/90000", "level-id=180;profile-id=1;tier-flag=0;tx-mode=SRST"),
        (50, "rtx/90000", "apt=49"),
        (51, "H265/90000", "level-id=180;profile-id=2;tier-flag=0;tx-mode=SRST"),
        (52, "rtx/90000", "apt=51"),
    )
    room = "hevc-neg-" + secrets.token_hex(4)
    offer = browser_offer([Section("audio", formats=OPUS), Section("video", formats=h265)])
    status, answer = post_offer_sync(gateway, "publish", room, offer)
    assert status == 201, answer
    # Main, at the offered level (not aiortc's 93), with its RTX and nothing else.
    assert _video_formats(answer) == {
        "49 H265/90000": "level-id=180;profile-id=1;tier-flag=0;tx-mode=SRST",
        "50 rtx/90000": "apt=49",
    }, answer

    main10_only = browser_offer([Section("video", "recvonly", h265[2:])])
    status, body = post_offer_sync(gateway, "play", room, main10_only)
    assert status == 400, body
    message = json.loads(body)["error"]
    assert "H265 (main, profile-id=1)" in message and "H265 (main-10, profile-id=2)" in message

    # A viewer at a lower level, under other payload types, gets its own.
    viewer = (
        (100, "H265/90000", "level-id=93;profile-id=1;tx-mode=SRST"),
        (101, "rtx/90000", "apt=100"),
    )
    status, body = post_offer_sync(
        gateway, "play", room, browser_offer([Section("video", "recvonly", viewer)])
    )
    assert status == 201, body
    formats = _video_formats(body)
    assert list(formats) == ["100 H265/90000", "101 rtx/90000"], body
    assert "level-id=93" in formats["100 H265/90000"].split(";"), body


def _finished(gateway: GatewayProcess) -> list[dict[str, Any]] | None:
    items = list_records(gateway)
    done = [item for item in items if item["state"] != "recording"]
    return items if len(items) == 2 and len(done) == 2 else None


def test_hevc_publisher_is_forwarded_decoded_started_at_a_keyframe_and_recorded(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    # Two workers, SPREAD_THRESHOLD=1: the publisher's worker is the room's home; the first
    # viewer goes to the other worker, an edge fed through the shared-memory plane.
    env = record_env(tmp_path / "records", SPREAD_THRESHOLD="1")
    gateway = gateway_factory(workers=2, env=env)
    room = "hevc-" + secrets.token_hex(4)
    started = time.monotonic()
    publisher = spawn_interop_peer(
        "publish", gateway.url, room, "--seconds", str(PUBLISH_SECONDS), "--video", "h265"
    )
    viewers = []
    placements: list[dict[str, Any]] = []
    try:
        # The first viewer also drops every 20th video packet once: NACK and RTX for H265.
        viewers.append(
            spawn_interop_peer(
                "view",
                gateway.url,
                room,
                "--seconds",
                "5",
                "--min-video-frames",
                str(MIN_VIDEO_FRAMES),
                "--min-audio-frames",
                "25",
                "--drop-every",
                "20",
            )
        )
        placements.append(_viewers_per_worker(gateway, room, 1))
        # The first viewer stops once it has its frames (and DELETEs its session), so the
        # late one is placed on the edge too: its instant start replays the ring.
        first = viewers[0].result(timeout=60)
        _viewers_per_worker(gateway, room, 0)
        time.sleep(max(0.0, started + LATE_JOIN_AFTER - time.monotonic()))
        viewers.append(
            spawn_interop_peer(
                "view", gateway.url, room, "--seconds", "3", "--min-video-frames", "15"
            )
        )
        placements.append(_viewers_per_worker(gateway, room, 1))
        late = viewers[1].result(timeout=60)
        published = publisher.result(timeout=60)
    finally:
        publisher.kill()
        for viewer in viewers:
            viewer.kill()
    assert published["ok"], (published, gateway.log())
    for side in (published, first, late):
        assert side["answer_video"]["rtpmap"] == "H265/90000", side
        fmtp = side["answer_video"]["fmtp"].split(";")
        assert "profile-id=1" in fmtp and "tx-mode=SRST" in fmtp, side
    for name, watched in (("first", first), ("late", late)):
        assert watched["ok"], (name, watched, gateway.log())
        assert watched["size"] == [640, 360], (name, watched)
        stats = watched["h265"]
        assert stats["decode_errors"] == 0, (name, watched)
        # The first access unit the decoder got is a keyframe: VPS, SPS, PPS, then an IDR.
        # For the late viewer this is instant start: it joined mid-GOP and the publisher
        # ignores keyframe requests, so without the SFU's replay of the cached GOP its first
        # access unit would be an inter frame (checked by hand with INSTANT_START=false).
        assert stats["first_received_key"], (name, watched)
    # The late viewer's replay starts at the cached group's first packet: the parameter sets.
    # (Not asserted for the first viewer: it drops packets on purpose, and a dropped packet
    # of its first keyframe comes back by NACK after later ones were already assembled.)
    assert late["h265"]["first_received_types"][:3] == [32, 33, 34], late
    assert first["video_frames"] >= MIN_VIDEO_FRAMES
    # The last drops may still be unanswered when the viewer stops at its frame count.
    assert first["recovered"] > 0 and first["dropped"] - first["recovered"] <= 3, first
    assert published["h265"]["sent_keyframes"] >= PUBLISH_SECONDS - 2, published
    assert published["keyframe_requests"] >= 1, published  # asked for, and ignored
    # Both viewers were on the edge, fed by the home's ring.
    for placement in placements:
        assert list(placement["viewers"]) != [placement["home"]], placements
    print(
        f"hevc: placements {placements}; late viewer's first frame {late['first_frame_ms']} "
        f"ms after its POST; first viewer {first['video_frames']} frames, "
        f"{first['recovered']}/{first['dropped']} dropped packets recovered"
    )

    items = wait_sync(lambda: _finished(gateway), 20, "two finished recordings", gateway.log)
    [video] = [item for item in items if item["kind"] == "video"]
    assert video["codec"] == "video/h265" and video["name"].endswith(".mkv"), video
    status, body = admin_get(gateway.url + video["url"])
    assert status == 200, body[:300]
    path = tmp_path / str(video["name"])
    path.write_bytes(body)
    report = inspect(path)
    assert report.codec == "hevc" and (report.width, report.height) == (640, 360), report
    assert report.decoded >= report.frames - 1 > 30, report
    recorded = PUBLISH_SECONDS - published["connect_ms"] / 1000
    assert report.duration == pytest.approx(recorded, rel=0.15), report

    _check_browser_style_negotiation(gateway)


# --- GStreamer ------------------------------------------------------------------------------


def _spawn_gst_h265_publisher(url: str, room: str, *args: str) -> PeerProcess:
    probe = subprocess.run(
        [
            str(SYSTEM_PYTHON),
            "-c",
            "import gi; gi.require_version('Gst', '1.0'); from gi.repository import Gst; "
            "Gst.init(None); "
            "print(' '.join(e for e in ('x265enc', 'rtph265pay') "
            "if Gst.ElementFactory.find(e) is None))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0 or probe.stdout.strip():
        skip_or_fail(
            f"GStreamer lacks {probe.stdout.strip() or probe.stderr.strip()[-200:]}",
            "x265enc is in gstreamer1.0-plugins-bad, rtph265pay in -good",
        )
    argv = [str(SYSTEM_PYTHON), str(GST_WHIP), "--url", url, "--room", room, "--codec", "h265"]
    argv += args
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return PeerProcess(argv=argv, process=process)


def test_gstreamer_x265_publisher_is_forwarded_decoded_and_recorded(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """GStreamer's own RFC 7798 payloader (APs for the parameter sets, FUs, CRA keyframes),
    against the SFU's keyframe test, the aiortc viewer and the recorder's depacketizer."""
    require_gstreamer()
    gateway = gateway_factory(workers=1, env=record_env(tmp_path / "records"))
    room = "hevc-gst-" + secrets.token_hex(4)
    publisher = _spawn_gst_h265_publisher(gateway.url, room, "--seconds", "5")
    try:
        viewer = spawn_interop_peer(
            "view", gateway.url, room, "--seconds", "4", "--min-video-frames", "30"
        ).result(timeout=60)
        published = publisher.result(timeout=60)
    finally:
        publisher.kill()
    assert published["ok"], (published, publisher.output.get("stderr", "")[-2000:])
    assert "a=rtpmap:96 H265/90000" in published["offer"].splitlines()
    assert viewer["ok"], (viewer, gateway.log())
    assert viewer["answer_video"]["rtpmap"] == "H265/90000"
    assert viewer["size"] == [320, 240]
    assert viewer["h265"]["decode_errors"] == 0 and viewer["h265"]["first_received_key"], viewer

    items = wait_sync(lambda: _finished(gateway), 20, "two finished recordings", gateway.log)
    [video] = [item for item in items if item["kind"] == "video"]
    assert video["codec"] == "video/h265", video
    status, body = admin_get(gateway.url + video["url"])
    assert status == 200, body[:300]
    path = tmp_path / str(video["name"])
    path.write_bytes(body)
    report = inspect(path)
    assert report.codec == "hevc" and (report.width, report.height) == (320, 240), report
    assert report.decoded >= report.frames - 1 > 15, report
