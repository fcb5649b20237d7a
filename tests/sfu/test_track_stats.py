"""The room stats' per-track measurements, in process: the picture size of keyframes
(sfu/media/resolution.py, against real encoders' output), ingest loss from sequence gaps
(SourceState.loss), and frames, keyframes and rates (TrackForwarder + sfu.roomstats)."""

from __future__ import annotations

import struct
from fractions import Fraction

import av
import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu.codecs import CodecKey
from sfu.media import ForwardingStats, RtpView, TrackForwarder
from sfu.media.resolution import h264_size, h264_sps_size, vp8_size, vp9_size
from sfu.media.source import SourceState
from sfu.roomstats import RATE_WINDOW_S, track_stats

VP8 = CodecKey("video/vp8", 90000, "")


def _encode(codec: str, width: int, height: int) -> bytes:
    """The first (key) frame a real encoder makes of a black picture."""
    context = av.CodecContext.create(codec, "w")
    assert isinstance(context, av.VideoCodecContext)
    context.width, context.height = width, height
    context.pix_fmt = "yuv420p"
    context.time_base = Fraction(1, 30)
    frame = av.VideoFrame(width, height, "yuv420p")
    frame.pts = 0
    packets = [*context.encode(frame), *context.encode(None)]
    return bytes(packets[0])


def _vp8_keyframe(width: int, height: int) -> bytes:
    """An RTP VP8 payload: descriptor (S, PID 0) + a key frame's tag, start code and size."""
    return (
        bytes([0x10, 0x00, 0x00, 0x00, 0x9D, 0x01, 0x2A])
        + struct.pack("<HH", width, height)
        + bytes(20)
    )


@pytest.mark.parametrize(("width", "height"), [(640, 360), (1280, 720), (320, 240)])
def test_vp8_size_from_a_real_key_frame(width: int, height: int) -> None:
    frame = _encode("libvpx", width, height)
    assert vp8_size(bytes([0x10]) + frame) == (width, height)
    # With an extended descriptor (X, I with a 15-bit picture id, L, T/K).
    assert vp8_size(bytes([0x90, 0xF0, 0x80, 0x01, 0x05, 0x20]) + frame) == (width, height)
    assert vp8_size(_vp8_keyframe(width, height)) == (width, height)


def test_vp8_size_refuses_what_is_not_a_key_frame() -> None:
    assert vp8_size(b"") is None
    assert vp8_size(bytes([0x10, 0x01]) + bytes(20)) is None  # P bit: an inter frame
    assert vp8_size(bytes([0x10, 0x00, 0, 0, 0x9D, 0x01, 0x2B]) + bytes(4)) is None


@pytest.mark.parametrize(("width", "height"), [(640, 360), (1280, 720), (1920, 1080)])
def test_h264_size_from_a_real_sps(width: int, height: int) -> None:
    stream = _encode("libx264", width, height)
    nals = [n for n in stream.split(b"\x00\x00\x01") if n]
    sps = next(n.rstrip(b"\x00") for n in nals if n[0] & 0x1F == 7)
    pps = next(n.rstrip(b"\x00") for n in nals if n[0] & 0x1F == 8)
    assert h264_sps_size(sps) == (width, height)  # 360 and 1080 are cropped
    assert h264_size(sps) == (width, height)
    stap_a = bytes([24]) + struct.pack("!H", len(sps)) + sps + struct.pack("!H", len(pps)) + pps
    assert h264_size(stap_a) == (width, height)
    assert h264_size(bytes([0x65, 0x88])) is None  # an IDR slice: no SPS in this packet
    assert h264_sps_size(sps[:4]) is None


@pytest.mark.parametrize(("width", "height"), [(640, 360), (1280, 720)])
def test_vp9_size_from_the_header_or_the_scalability_structure(width: int, height: int) -> None:
    frame = _encode("libvpx-vp9", width, height)
    assert vp9_size(bytes([0x08]) + frame) == (width, height)  # B: start of a frame
    assert vp9_size(bytes([0x88, 0x81, 0x02]) + frame) == (width, height)  # I, 15-bit id
    # V with Y: one spatial layer's size, as libwebrtc sends it on keyframes.
    ss = bytes([0x18]) + struct.pack("!HH", width, height) + bytes([0x01, 0x04])
    assert vp9_size(bytes([0x0A]) + ss + frame) == (width, height)
    assert vp9_size(bytes([0x00]) + frame) is None  # not the start of a frame


def test_loss_counts_sequence_gaps_across_a_wrap_and_an_ssrc_change() -> None:
    state = SourceState()
    assert state.loss() == (0, 0)
    for seq in (65530, 65531, 65533, 65535, 0, 3, 2):  # 65532, 65534, 1 lost; 2 reordered
        state.accept(1111, seq, now=1.0)
    assert state.loss() == (10, 3)
    state.accept(1111, 3, now=1.0)  # a duplicate counts as received (RFC 3550)
    assert state.loss() == (10, 2)
    state.restart()  # a new source: its SSRC starts a new account
    for seq in (100, 101, 104):
        state.accept(2222, seq, now=2.0)
    assert state.loss() == (10 + 5, 2 + 2)
    assert state.packets == 11


def _packet(seq: int, ts: int, marker: bool, payload: bytes) -> RtpView:
    header = struct.pack("!BBHII", 0x80, 96 | (0x80 if marker else 0), seq, ts, 1234)
    return RtpView(header + payload)


@pytest.mark.parametrize("instant_start", [True, False])
def test_frames_keyframes_size_and_rates_of_a_track(instant_start: bool) -> None:
    from sfu.media.instant_start import InstantStart

    clock = [100.0]
    track = TrackForwarder(
        "video", ForwardingStats(), InstantStart(enabled=instant_start), clock=lambda: clock[0]
    )
    track.set_source(VP8, lambda: None)
    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    first = track_stats(track, codec, clock[0])  # the first call starts the rate window
    assert (first.frame_rate, first.keyframes, first.keyframe_age_s) == (0.0, 0, -1.0)
    inter = bytes([0x10, 0x01]) + bytes(100)
    seq = 0
    # 2 s at 30 frames/s, three packets a frame, a keyframe at frames 0 and 45 (1.5 s).
    for frame in range(60):
        clock[0] = 100.0 + frame / 30
        for part in range(3):
            payload = inter
            if part == 0 and frame in (0, 45):
                payload = _vp8_keyframe(640, 360)
            elif part:
                payload = bytes([0x00, 0x01]) + bytes(100)  # not the start of a frame
            if seq != 7:  # one packet lost on the way
                track.receive(_packet(seq, frame * 3000, part == 2, payload), rtx=False)
            seq += 1
    stats = track.track_stats
    assert stats.frames == 60 and stats.keyframes == 2
    assert (stats.width, stats.height) == (640, 360)
    assert stats.keyframe_interval == pytest.approx(1.5)
    now = 100.0 + 2.0
    report = track_stats(track, codec, now)
    assert report.codec == "VP8" and report.kind == "video"
    assert (report.width, report.height, report.keyframes) == (640, 360, 2)
    assert report.frame_rate == pytest.approx(30, rel=0.05)
    assert track.state.bytes == 179 * (12 + 102) + 2 * (len(_vp8_keyframe(1, 1)) - 102)
    assert report.bitrate_bps == pytest.approx(track.state.bytes * 8 / 2.0, rel=0.01)
    assert (report.packets_received, report.packets_lost) == (179, 1)
    assert report.loss_ratio == pytest.approx(1 / 180, rel=0.01)
    assert report.keyframe_interval_s == pytest.approx(1.5)
    assert report.keyframe_age_s == pytest.approx(2.0 - 45 / 30, abs=0.01)
    # Within the window the rates stay those of the last full window.
    assert track_stats(track, codec, now + RATE_WINDOW_S / 2).frame_rate == report.frame_rate
