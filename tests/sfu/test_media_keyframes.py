"""Keyframes: detection on RTP payloads (real encoder output and hand-built edge cases),
and the rate limit of requests to a publisher (on a ManualClock)."""

from __future__ import annotations

import fractions

import av
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu.media.clock import ManualClock
from sfu.media.instant_start import GopCache
from sfu.media.keyframes import (
    KEYFRAME_REQUEST_INTERVAL,
    KeyframeRequests,
    av1_keyframe,
    h264_keyframe,
    h265_keyframe,
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


def _h265_nal(nal_type: int, body: bytes = b"\xaa\xbb", layer: int = 0, tid: int = 1) -> bytes:
    """An H265 NAL unit: the 2-byte header (F, type, LayerId, TID), then `body`."""
    return bytes([(nal_type << 1) | (layer >> 5), ((layer & 0x1F) << 3) | tid]) + body


def test_h265_payload_structures() -> None:
    """RFC 7798: single NAL unit packets, aggregation packets (48), fragmentation units (49)."""
    for key_type in (16, 19, 20, 21, 32, 33):  # BLA, IDR_W_RADL, IDR_N_LP, CRA, VPS, SPS
        assert h265_keyframe(_h265_nal(key_type)), key_type
    for other in (0, 1, 9, 22, 34, 35, 39, 40, 47):  # TRAIL, RASL, reserved IRAP, PPS, AUD, SEI
        assert not h265_keyframe(_h265_nal(other)), other
    assert h265_keyframe(_h265_nal(19, layer=1, tid=2))  # header bits beyond the type ignored
    assert not h265_keyframe(b"\x80" + _h265_nal(19)[1:])  # forbidden_zero_bit set

    def fu(fu_type: int, start: bool, end: bool = False) -> bytes:
        return _h265_nal(49, bytes([(0x80 if start else 0) | (0x40 if end else 0) | fu_type]))

    assert h265_keyframe(fu(19, start=True) + b"slice")
    assert not h265_keyframe(fu(19, start=False) + b"slice")  # a continuation
    assert not h265_keyframe(fu(19, start=False, end=True))
    assert not h265_keyframe(fu(1, start=True))  # an inter slice
    assert not h265_keyframe(_h265_nal(49, b""))  # FU without its FU header

    def ap(*units: bytes) -> bytes:
        return _h265_nal(48, b"".join(len(u).to_bytes(2, "big") + u for u in units))

    assert h265_keyframe(ap(_h265_nal(32), _h265_nal(33), _h265_nal(34)))  # VPS first
    assert h265_keyframe(ap(_h265_nal(39), _h265_nal(19)))  # SEI, then the IDR
    assert not h265_keyframe(ap(_h265_nal(34), _h265_nal(1)))  # PPS, inter slice
    assert not h265_keyframe(_h265_nal(48, b"\x00\x00"))  # zero length
    assert not h265_keyframe(_h265_nal(48, b"\x00\x01\x26"))  # shorter than a NAL header
    assert not h265_keyframe(_h265_nal(48, b"\xff\xff" + _h265_nal(1)))  # length past the end
    assert not h265_keyframe(_h265_nal(50, b"\x00\x00" + _h265_nal(19)))  # PACI: ignored
    assert not h265_keyframe(b"")
    assert not h265_keyframe(b"\x26")  # truncated header
    assert keyframe_test("video/H265") is h265_keyframe


def test_h265_hostile_payloads_never_raise() -> None:
    """Every 1-3 byte payload, and random AP length fields, answer a bool."""
    for first in range(256):
        for second in (0x00, 0x01, 0x80, 0xFF):
            for tail in (b"", b"\x00", b"\x80", b"\xff\xff\xff"):
                assert h265_keyframe(bytes([first, second]) + tail) in (True, False)
    for length in range(0, 300, 7):
        payload = _h265_nal(48, length.to_bytes(2, "big") + _h265_nal(1))
        assert h265_keyframe(payload) is False


def test_h265_real_encoder_output_keys_the_instant_start_cache() -> None:
    """libx265 through the test packetizer (testkit/h265.py): the IDR's first packet (an AP
    with VPS/SPS/PPS) is a keyframe, inter frames are not, and the instant-start cache
    restarts its group at that packet."""
    from testkit import h265

    encoder = h265.H265Encoder(frame_rate=30)
    gop = GopCache(keyframe_test("video/h265"), max_bytes=1 << 22)
    seq = 0
    firsts: list[int] = []
    for index, frame in enumerate(_frames(4) + _frames(2)):
        frame.pts = index * 3000
        payloads, _ = encoder.encode(frame, force_keyframe=False)
        keys = [h265_keyframe(p) for p in payloads]
        assert keys[0] is (index == 0), (index, keys)
        if index:
            assert not any(keys)
        firsts.append(seq)
        for payload in payloads:
            gop.add((seq, index * 3000, 0, 0, payload, 1), now=0.0)
            seq += 1
    assert gop.keyed and gop.packets is not None
    assert gop.packets[0][0] == 0 and len(gop.packets) == seq  # the group from the IDR on


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
