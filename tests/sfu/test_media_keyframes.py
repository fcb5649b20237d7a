"""Keyframes: detection on RTP payloads (real encoder output and hand-built edge cases),
and the rate limit of requests to a publisher (on a ManualClock)."""

from __future__ import annotations

import fractions

import av
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu.media.clock import ManualClock
from sfu.media.keyframes import (
    KEYFRAME_REQUEST_INTERVAL,
    KeyframeRequests,
    av1_keyframe,
    h264_keyframe,
    keyframe_test,
    vp8_keyframe,
    vp9_keyframe,
)


def _frames(count: int) -> list[av.VideoFrame]:
    frames = []
    for index in range(count):
        frame = av.VideoFrame(320, 240, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(index * 7) % 256]) * plane.buffer_size)
        frame.pts = index * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        frames.append(frame)
    return frames


@pytest.mark.parametrize(
    ("mime", "test"), [("video/VP8", vp8_keyframe), ("video/H264", h264_keyframe)]
)
def test_real_encoder_output(mime: str, test: object) -> None:
    """aiortc's own packetiser: the first packet of frame 0 is a keyframe, inter frames are not."""
    codec = RTCRtpCodecParameters(mimeType=mime, clockRate=90000, payloadType=96)
    encoder = get_encoder(codec)
    starts = []
    for index, frame in enumerate(_frames(4)):
        payloads, _ = encoder.encode(frame, force_keyframe=index == 0)
        starts.append([keyframe_test(mime)(p) for p in payloads])
    assert starts[0][0] is True
    assert not any(starts[0][1:]), "only the first packet of a keyframe starts it"
    assert not any(flag for frame in starts[1:] for flag in frame)


def test_vp8_descriptor_variants() -> None:
    # X=1, I=1 with a 15-bit picture id, S=1 PID=0; then a VP8 keyframe byte (P bit 0).
    assert vp8_keyframe(bytes([0x90, 0x80, 0x81, 0x02, 0x10]))
    assert not vp8_keyframe(bytes([0x90, 0x80, 0x81, 0x02, 0x11]))  # inter frame
    assert not vp8_keyframe(bytes([0x80, 0x80, 0x81, 0x02, 0x10]))  # not a partition start
    assert not vp8_keyframe(b"")
    assert not vp8_keyframe(bytes([0x90, 0x80]))  # truncated


def test_vp9_av1_h264_edge_cases() -> None:
    assert vp9_keyframe(bytes([0x08]))  # B set, P clear, no layers
    assert not vp9_keyframe(bytes([0x48]))  # P set
    assert not vp9_keyframe(bytes([0x28]))  # L set but no layer byte: truncated
    assert vp9_keyframe(bytes([0x28, 0x00]))  # spatial layer 0
    assert not vp9_keyframe(bytes([0x28, 0x02]))  # spatial layer 1
    assert av1_keyframe(bytes([0x18]))
    assert not av1_keyframe(bytes([0x88]))  # Z: continues an OBU
    assert h264_keyframe(bytes([0x65]))  # IDR
    assert h264_keyframe(bytes([0x7C, 0x85]))  # FU-A start of an IDR
    assert not h264_keyframe(bytes([0x7C, 0x05]))  # FU-A continuation
    assert h264_keyframe(bytes([0x78, 0x00, 0x02, 0x67, 0x42]))  # STAP-A with an SPS
    assert not h264_keyframe(bytes([0x78, 0x00, 0x00]))  # STAP-A with a zero length
    assert keyframe_test("audio/opus")(b"")


def _requests(clock: ManualClock) -> tuple[KeyframeRequests, list[float]]:
    sent: list[float] = []
    requests = KeyframeRequests(clock=clock, scheduler=clock)
    requests.requester = lambda: sent.append(clock.now)
    return requests, sent


def test_keyframe_requests_are_rate_limited_but_never_lost() -> None:
    clock = ManualClock(now=100.0)
    requests, sent = _requests(clock)
    for _ in range(5):
        requests.request()
    assert sent == [100.0]
    assert clock.pending == 1  # the four others: one request, when the interval ends
    clock.advance(KEYFRAME_REQUEST_INTERVAL)
    assert sent == [100.0, 100.0 + KEYFRAME_REQUEST_INTERVAL]
    clock.advance(10)
    assert len(sent) == 2 and requests.sent == 2


def test_a_request_after_the_interval_goes_out_at_once() -> None:
    clock = ManualClock(now=100.0)
    requests, sent = _requests(clock)
    requests.request()
    clock.advance(KEYFRAME_REQUEST_INTERVAL + 0.01)
    requests.request()
    assert sent == [100.0, 100.0 + KEYFRAME_REQUEST_INTERVAL + 0.01]
    assert clock.pending == 0


def test_without_a_requester_or_after_close_nothing_is_sent() -> None:
    clock = ManualClock()
    requests = KeyframeRequests(clock=clock, scheduler=clock)
    requests.request()
    assert clock.pending == 0 and requests.sent == 0
    requests, sent = _requests(clock)
    requests.request()
    requests.request()  # a timer is pending
    requests.close()
    clock.advance(1)
    assert len(sent) == 1 and clock.pending == 0


def test_a_pending_request_is_dropped_when_the_source_goes() -> None:
    clock = ManualClock()
    requests, sent = _requests(clock)
    requests.request()
    requests.request()
    requests.requester = None  # the publisher left before the interval ended
    clock.advance(1)
    assert len(sent) == 1
