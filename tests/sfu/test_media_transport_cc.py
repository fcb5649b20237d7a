"""Transport-cc: the feedback packets (sfu.media.transport_cc) and the answer rewriting
(sfu.sdp.negotiate_transport_cc).

The feedback is decoded here by an independent reading of
draft-holmer-rmcat-transport-wide-cc-extensions-01; that Chromium accepts it and ramps up
is shown end to end by tests/e2e/test_publisher_bandwidth.py.
"""

from __future__ import annotations

import struct

from aiortc.rtp import RtpPacket

from sfu.media.clock import ManualClock
from sfu.media.packet import RtpView
from sfu.media.transport_cc import FEEDBACK_INTERVAL, TransportCcFeedback, build_feedback
from sfu.sdp import ABS_SEND_TIME_URI, TRANSPORT_CC_URI, negotiate_transport_cc


def _decode(packet: bytes) -> tuple[int, int, list[int | None], int]:
    """-> (base seq, feedback count, arrival per packet in 250 µs ticks or None, ref time)."""
    first, packet_type, length = struct.unpack_from("!BBH", packet)
    assert first & 0xC0 == 0x80 and first & 0x1F == 15 and packet_type == 205
    assert (length + 1) * 4 == len(packet)
    end = len(packet) - (packet[-1] if first & 0x20 else 0)
    base, count, reference_and_count = struct.unpack_from("!HHI", packet, 12)
    reference, feedback_count = reference_and_count >> 8, reference_and_count & 0xFF
    symbols: list[int] = []
    offset = 20
    while len(symbols) < count:
        (chunk,) = struct.unpack_from("!H", packet, offset)
        offset += 2
        if chunk & 0x8000:
            if chunk & 0x4000:  # status vector, 2-bit symbols
                symbols += [(chunk >> (12 - 2 * i)) & 3 for i in range(7)]
            else:
                symbols += [(chunk >> (13 - i)) & 1 for i in range(14)]
        else:
            symbols += [(chunk >> 13) & 3] * (chunk & 0x1FFF)
    symbols = symbols[:count]
    position = reference * 256
    arrivals: list[int | None] = []
    for symbol in symbols:
        if symbol == 0:
            arrivals.append(None)
            continue
        if symbol == 1:
            delta = packet[offset]
            offset += 1
        else:
            (delta,) = struct.unpack_from("!h", packet, offset)
            offset += 2
        position += delta
        arrivals.append(position)
    assert offset <= end
    return base, feedback_count, arrivals, reference


def test_feedback_encodes_arrivals_losses_and_reordering() -> None:
    base_us = 10_000_000
    arrivals: list[int | None] = [
        base_us,
        base_us + 1000,
        None,
        None,
        base_us + 900,  # arrived before the previous one: a negative delta
        base_us + 200_000,  # 200 ms later: more than one byte
    ]
    packet = build_feedback(1, 2, 65534, arrivals, feedback_count=7)
    base, count, decoded, _ = _decode(packet)
    assert base == 65534 and count == 7
    ticks = [None if a is None else round(a / 250) for a in arrivals]
    assert decoded == ticks


def test_feedback_long_runs_are_split() -> None:
    arrivals: list[int | None] = [0] + [None] * 9000 + [5000]
    _, _, decoded, _ = _decode(build_feedback(1, 2, 0, arrivals, 0))
    assert decoded[0] == 0 and decoded[-1] == 20 and decoded[1:-1] == [None] * 9000


def _rtp_with_transport_seq(seq: int, extension_id: int = 3) -> RtpView:
    header = RtpPacket(payload_type=96, sequence_number=1, timestamp=1, ssrc=77).serialize()
    element = bytes([(extension_id << 4) | 1]) + struct.pack("!H", seq) + b"\x00"
    block = b"\xbe\xde\x00\x01" + element
    return RtpView(bytes([header[0] | 0x10]) + header[1:12] + block + b"payload")


class _NanoClock:
    """Arrival times for the recorder: 1 ms apart, in ns."""

    def __init__(self) -> None:
        self.ns = 5_000_000_000

    def __call__(self) -> int:
        self.ns += 1_000_000
        return self.ns


def test_recorder_reports_each_window_once_across_the_wrap() -> None:
    sent: list[bytes] = []
    recorder = TransportCcFeedback(3, 1234, sent.append, clock_ns=_NanoClock())
    for seq in (65533, 65534, 1, 2):  # 65535 and 0 are lost
        recorder.record(_rtp_with_transport_seq(seq))
    packet = recorder.flush() or b""
    base, _, arrivals, _ = _decode(packet)
    assert base == 65533 and recorder.media_ssrc == 77
    assert arrivals == [20004, 20008, None, None, 20012, 20016]  # 250 µs ticks, 1 ms apart
    assert packet == bytes.fromhex(
        "afcd0007 000004d2 0000004d"  # V=2 P=1 FMT 15, RTPFB, 8 words; sender, media SSRC
        "fffd 0006 00004e 00"  # base 65533, 6 packets, reference 78 x 64 ms, count 0
        "2002 0002 2002"  # run chunks: 2 received (small deltas), 2 lost, 2 received
        "24 04 04 04"  # deltas in 250 µs: 36 from the reference, then 1 ms each
        "0002"  # 2 bytes of padding
    )
    assert recorder.flush() is None  # nothing new
    recorder.record(_rtp_with_transport_seq(0))  # too late: already reported lost
    recorder.record(_rtp_with_transport_seq(3))
    base, count, arrivals, _ = _decode(recorder.flush() or b"")
    assert base == 3 and len(arrivals) == 1 and count == 1


def test_recorder_ignores_packets_without_the_extension() -> None:
    recorder = TransportCcFeedback(5, 1, lambda packet: None)
    recorder.record(_rtp_with_transport_seq(10, extension_id=3))
    recorder.record(RtpView(b"\x80" + bytes(11)))
    assert recorder.flush() is None


def test_feedback_is_sent_every_interval_while_started() -> None:
    clock = ManualClock()
    sent: list[bytes] = []
    recorder = TransportCcFeedback(3, 1, sent.append, clock_ns=_NanoClock(), scheduler=clock)
    recorder.start()
    recorder.record(_rtp_with_transport_seq(10))
    clock.advance(FEEDBACK_INTERVAL)
    assert len(sent) == 1
    clock.advance(FEEDBACK_INTERVAL)  # nothing arrived: nothing sent
    recorder.record(_rtp_with_transport_seq(11))
    clock.advance(FEEDBACK_INTERVAL)
    assert len(sent) == 2 and recorder.sent == 2
    recorder.stop()
    recorder.record(_rtp_with_transport_seq(12))
    clock.advance(1)
    assert len(sent) == 2 and clock.pending == 0


CHROME_LIKE_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        f"a=extmap:3 {TRANSPORT_CC_URI}",
        "a=rtpmap:111 opus/48000/2",
        "a=rtcp-fb:111 transport-cc",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98",
        "a=mid:1",
        f"a=extmap:2 {ABS_SEND_TIME_URI}",
        f"a=extmap:3 {TRANSPORT_CC_URI}",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 goog-remb",
        "a=rtcp-fb:96 transport-cc",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rtpmap:98 VP9/90000",
        "a=rtcp-fb:98 transport-cc",
        "",
    ]
)

AIORTC_LIKE_ANSWER = "\r\n".join(
    [
        "v=0",
        "o=- 3 4 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=rtpmap:111 opus/48000/2",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        f"a=extmap:2 {ABS_SEND_TIME_URI}",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 goog-remb",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "",
    ]
)


def test_answer_gets_transport_cc_where_offered_and_loses_abs_send_time() -> None:
    answer, extension_id = negotiate_transport_cc(CHROME_LIKE_OFFER, AIORTC_LIKE_ANSWER)
    assert extension_id == 3
    audio, video = answer.split("m=video")
    assert f"a=extmap:3 {TRANSPORT_CC_URI}" in audio and "a=rtcp-fb:111 transport-cc" in audio
    assert f"a=extmap:3 {TRANSPORT_CC_URI}" in video and "a=rtcp-fb:96 transport-cc" in video
    assert "a=rtcp-fb:97 transport-cc" not in video and "98" not in video  # only answered PTs
    assert ABS_SEND_TIME_URI not in video
    assert "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level" in audio


def test_answer_is_unchanged_when_the_offer_has_no_transport_cc() -> None:
    offer = CHROME_LIKE_OFFER.replace("transport-cc", "nack")
    answer, extension_id = negotiate_transport_cc(offer, AIORTC_LIKE_ANSWER)
    assert extension_id is None
    assert answer.splitlines() == AIORTC_LIKE_ANSWER.splitlines()
