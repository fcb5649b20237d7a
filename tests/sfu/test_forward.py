"""Forwarding state: header rewriting, source epochs, retransmission, keyframe requests.

The outputs send into a list (the real SRTP/UDP path is exercised by the end-to-end tests).
"""

import asyncio

import pytest
from aiortc.rtp import RtpPacket, unwrap_rtx

from sfu import forward
from sfu.aiortc_adapter import SenderState
from sfu.forward import CodecKey, ForwardingStats, InstantStart, Output, TrackForwarder
from sfu.rtp import header_template

VP8 = CodecKey("video/vp8", 90000, "")


def _rtp(
    seq: int, ts: int, ssrc: int = 1111, pt: int = 96, payload: bytes = b"frame", marker: int = 0
) -> bytes:
    packet = RtpPacket(payload_type=pt, sequence_number=seq, timestamp=ts, ssrc=ssrc, marker=marker)
    packet.payload = payload
    return packet.serialize()


def _output(sent: list[bytes], stats: ForwardingStats, *, rtx_pt: int | None = None) -> Output:
    return Output(
        send=sent.append,
        report=SenderState(),
        codec=VP8,
        ssrc=0xABCDEF01,
        payload_type=120,
        rtx_ssrc=0x12345678,
        rtx_payload_type=rtx_pt,
        header=header_template(4, "0"),
        stats=stats,
    )


def _forwarder(instant_start: bool = False) -> tuple[TrackForwarder, ForwardingStats, list[int]]:
    stats = ForwardingStats()
    forwarder = TrackForwarder("video", stats, InstantStart(enabled=instant_start))
    requests: list[int] = []
    forwarder.set_source(VP8, lambda: requests.append(1))
    return forwarder, stats, requests


async def test_each_viewer_gets_its_own_ssrc_pt_and_offsets() -> None:
    forwarder, stats, _ = _forwarder()
    sent_a: list[bytes] = []
    sent_b: list[bytes] = []
    out_a, out_b = _output(sent_a, stats), _output(sent_b, stats)
    out_b.ssrc = 0x0BADCAFE
    forwarder.attach(out_a)
    forwarder.attach(out_b)
    for i in range(5):
        forwarder.on_rtp(_rtp(1000 + i, 90000 + 3000 * i, marker=i == 4), 1111, False)
    for sent, ssrc in ((sent_a, 0xABCDEF01), (sent_b, 0x0BADCAFE)):
        packets = [RtpPacket.parse(p) for p in sent]
        assert [p.ssrc for p in packets] == [ssrc] * 5
        assert {p.payload_type for p in packets} == {120}
        seqs = [p.sequence_number for p in packets]
        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(5)]
        assert [p.timestamp - packets[0].timestamp for p in packets] == [3000 * i for i in range(5)]
        assert [p.marker for p in packets] == [0, 0, 0, 0, 1]
        assert all(p.payload == b"frame" for p in packets)
    assert stats.packets_out == 10
    assert out_a.report.packets == 5


async def test_new_publisher_continues_sequence_and_timestamps() -> None:
    forwarder, stats, _ = _forwarder()
    sent: list[bytes] = []
    forwarder.attach(_output(sent, stats))
    for i in range(3):
        forwarder.on_rtp(_rtp(50000 + i, 5000 + 3000 * i, ssrc=1), 1, False)
    # A republish: new SSRC, unrelated sequence numbers and timestamps.
    forwarder.set_source(VP8, lambda: None)
    for i in range(3):
        forwarder.on_rtp(_rtp(7 + i, 999 + 3000 * i, ssrc=2), 2, False)
    packets = [RtpPacket.parse(p) for p in sent]
    seqs = [p.sequence_number for p in packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(6)]
    stamps = [p.timestamp for p in packets]
    assert all(
        ((b - a) & 0xFFFFFFFF) < 0x80000000 and b != a
        for a, b in zip(stamps, stamps[1:], strict=False)
    )


async def test_nack_is_answered_from_cache_as_rtx() -> None:
    forwarder, stats, _ = _forwarder()
    sent: list[bytes] = []
    output = _output(sent, stats, rtx_pt=121)
    forwarder.attach(output)
    for i in range(10):
        forwarder.on_rtp(_rtp(65530 + i & 0xFFFF, 3000 * i, payload=bytes([i])), 1111, False)
    lost_out = RtpPacket.parse(sent[7]).sequence_number
    sent.clear()
    forwarder.retransmit(output, [lost_out, (lost_out + 5000) & 0xFFFF])
    assert len(sent) == 1 and forwarder.nack_hits == 1 and forwarder.nack_misses == 1
    rtx = RtpPacket.parse(sent[0])
    assert rtx.payload_type == 121 and rtx.ssrc == 0x12345678
    original = unwrap_rtx(rtx, payload_type=120, ssrc=output.ssrc)
    assert original.sequence_number == lost_out
    assert original.payload == bytes([7])


async def test_publisher_rtx_is_unwrapped_and_forwarded_as_media() -> None:
    forwarder, stats, _ = _forwarder()
    sent: list[bytes] = []
    forwarder.attach(_output(sent, stats))
    forwarder.on_rtp(_rtp(10, 100), 1111, False)
    forwarder.on_rtp(_rtp(13, 100), 1111, False)  # 11 and 12 lost
    rtx_payload = (12).to_bytes(2, "big") + b"recovered"
    forwarder.on_rtp(_rtp(500, 100, ssrc=2222, pt=97, payload=rtx_payload), 2222, True)
    first, _, repaired = (RtpPacket.parse(p) for p in sent)
    assert repaired.payload == b"recovered"
    assert (repaired.sequence_number - first.sequence_number) & 0xFFFF == 2


async def test_publisher_rtx_outside_the_recent_past_is_dropped() -> None:
    """Junk RTX must not jump viewers' sequence numbers (their SRTP would drop what follows)."""
    forwarder, stats, _ = _forwarder()
    sent: list[bytes] = []
    forwarder.attach(_output(sent, stats))
    forwarder.on_rtp(_rtp(5000, 100), 1111, False)
    for original in (5001, 5000 + 0x8000, 5000 - 2000):
        payload = original.to_bytes(2, "big") + b"junk"
        forwarder.on_rtp(_rtp(1, 100, ssrc=2222, pt=97, payload=payload), 2222, True)
    assert len(sent) == 1 and stats.dropped == 3


async def test_padding_only_and_malformed_packets_are_not_forwarded() -> None:
    forwarder, stats, _ = _forwarder()
    sent: list[bytes] = []
    forwarder.attach(_output(sent, stats))
    forwarder.on_rtp(b"\x90\x60" + b"\x00" * 10 + b"\xbe\xde\x00\x09", 1111, False)
    probe = RtpPacket(payload_type=97, sequence_number=1, timestamp=1, ssrc=2222)
    probe.padding_size = 200
    forwarder.on_rtp(probe.serialize(), 2222, True)
    assert sent == []
    assert stats.dropped == 1


async def test_a_joining_viewer_asks_the_publisher_for_a_keyframe() -> None:
    forwarder, stats, requests = _forwarder()
    forwarder.attach(_output([], stats))
    assert requests == [1]


async def test_keyframe_requests_are_rate_limited_but_never_lost() -> None:
    forwarder, _, requests = _forwarder()
    for _ in range(5):
        forwarder.request_keyframe()
    assert len(requests) == 1
    await asyncio.sleep(0.6)
    assert len(requests) == 2  # the coalesced request went out when the interval ended


async def test_stray_ssrc_cannot_hijack_a_live_source() -> None:
    forwarder, stats, _ = _forwarder()
    sent: list[bytes] = []
    forwarder.attach(_output(sent, stats))
    forwarder.on_rtp(_rtp(1, 100, ssrc=1), 1, False)
    forwarder.on_rtp(_rtp(9000, 5, ssrc=666, payload=b"evil"), 666, False)
    forwarder.on_rtp(_rtp(2, 200, ssrc=1), 1, False)
    assert [RtpPacket.parse(p).payload for p in sent] == [b"frame", b"frame"]
    assert stats.dropped == 1 and forwarder.source_ssrc == 1


# --- instant start ---------------------------------------------------------------------------

VP8_KEY = b"\x10\x00keyframe"  # descriptor: start of partition 0; payload header: P bit clear
VP8_DELTA = b"\x10\x01delta"  # P bit set: an inter frame
VP8_MORE = b"\x00more"  # a continuation packet of a frame


def _feed(forwarder: TrackForwarder, seq: int, ts: int, payload: bytes, ssrc: int = 1111) -> None:
    forwarder.on_rtp(_rtp(seq, ts, ssrc=ssrc, payload=payload), ssrc, False)


async def _caught_up(forwarder: TrackForwarder, output: Output) -> None:
    for _ in range(200):
        if output in forwarder.outputs:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the joining viewer never caught up")


async def test_joining_viewer_gets_the_latest_keyframe_then_live_contiguously() -> None:
    forwarder, stats, requests = _forwarder(instant_start=True)
    _feed(forwarder, 100, 0, VP8_DELTA)  # before any keyframe: not kept
    _feed(forwarder, 101, 3000, VP8_KEY)
    _feed(forwarder, 102, 3000, VP8_MORE)
    for i in range(40):  # more than one catch-up slice
        _feed(forwarder, 103 + i, 6000 + 3000 * i, VP8_DELTA)
    sent: list[bytes] = []
    output = _output(sent, stats)
    forwarder.attach(output)
    assert requests == [1]  # a PLI as well, for viewers without instant start
    _feed(forwarder, 143, 200000, VP8_DELTA)  # live while the viewer catches up
    await _caught_up(forwarder, output)
    _feed(forwarder, 144, 203000, VP8_DELTA)
    packets = [RtpPacket.parse(p) for p in sent]
    assert packets[0].payload == VP8_KEY
    assert [p.payload for p in packets[1:3]] == [VP8_MORE, VP8_DELTA]
    seqs = [p.sequence_number for p in packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(44)]
    assert packets[2].timestamp - packets[0].timestamp == 3000
    assert packets[-1].timestamp - packets[0].timestamp == 200000


async def test_a_group_of_pictures_over_the_cap_is_not_replayed() -> None:
    stats = ForwardingStats()
    forwarder = TrackForwarder("video", stats, InstantStart(enabled=True, max_bytes=100))
    forwarder.set_source(VP8, lambda: None)
    _feed(forwarder, 1, 0, VP8_KEY + bytes(60))
    _feed(forwarder, 2, 3000, VP8_DELTA + bytes(60))  # over 100 bytes: dropped
    assert forwarder.gop is None
    sent: list[bytes] = []
    output = _output(sent, stats)
    forwarder.attach(output)
    assert output in forwarder.outputs  # straight to live, nothing to replay
    _feed(forwarder, 3, 6000, VP8_DELTA)
    _feed(forwarder, 4, 9000, VP8_KEY)  # the next keyframe starts a new group
    assert [RtpPacket.parse(p).payload for p in sent] == [VP8_DELTA, VP8_KEY]
    assert forwarder.gop is not None and len(forwarder.gop) == 1


async def test_new_source_reaches_viewers_from_its_first_keyframe_on() -> None:
    forwarder, stats, _ = _forwarder(instant_start=True)
    sent: list[bytes] = []
    forwarder.attach(_output(sent, stats))
    _feed(forwarder, 500, 0, VP8_KEY, ssrc=1)
    _feed(forwarder, 501, 3000, VP8_DELTA, ssrc=1)
    forwarder.set_source(VP8, lambda: None)  # republish
    _feed(forwarder, 9, 77, VP8_DELTA, ssrc=2)  # undecodable without its keyframe
    _feed(forwarder, 10, 3077, VP8_KEY, ssrc=2)
    _feed(forwarder, 11, 6077, VP8_DELTA, ssrc=2)
    packets = [RtpPacket.parse(p) for p in sent]
    assert [p.payload for p in packets] == [VP8_KEY, VP8_DELTA, VP8_KEY, VP8_DELTA]
    seqs = [p.sequence_number for p in packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(4)]
    assert ((packets[2].timestamp - packets[1].timestamp) & 0xFFFFFFFF) < 0x80000000


async def test_without_instant_start_a_joining_viewer_gets_live_packets_only() -> None:
    forwarder, stats, requests = _forwarder(instant_start=False)
    _feed(forwarder, 1, 0, VP8_KEY)
    sent: list[bytes] = []
    forwarder.attach(_output(sent, stats))
    _feed(forwarder, 2, 3000, VP8_DELTA)
    assert [RtpPacket.parse(p).payload for p in sent] == [VP8_DELTA]
    assert requests == [1]


async def test_audio_level_is_copied_under_the_viewers_id() -> None:
    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap

    from sfu.rtp import AUDIO_LEVEL_URI, MID_URI

    def ext_map(mid_id: int, level_id: int) -> HeaderExtensionsMap:
        result = HeaderExtensionsMap()
        result.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(id=mid_id, uri=MID_URI),
                    RTCRtpHeaderExtensionParameters(id=level_id, uri=AUDIO_LEVEL_URI),
                ]
            )
        )
        return result

    stats = ForwardingStats()
    forwarder = TrackForwarder("audio", stats)
    forwarder.set_source(CodecKey("audio/opus", 48000, ""), lambda: None, audio_level_id=1)
    sent: list[bytes] = []
    output = Output(
        send=sent.append,
        report=SenderState(),
        codec=CodecKey("audio/opus", 48000, ""),
        ssrc=5,
        payload_type=111,
        rtx_ssrc=6,
        rtx_payload_type=None,
        header=header_template(4, "1", audio_level_id=10),
        stats=stats,
        audio_level_id=10,
    )
    forwarder.attach(output)
    publisher_map = ext_map(mid_id=3, level_id=1)
    for seq, level in ((1, (True, 30)), (2, (False, 127)), (3, None)):
        packet = RtpPacket(payload_type=111, sequence_number=seq, timestamp=960 * seq, ssrc=9)
        packet.extensions.mid = "0"
        packet.extensions.audio_level = level
        packet.payload = b"opus"
        forwarder.on_rtp(packet.serialize(publisher_map), 9, False)
    viewer_map = ext_map(mid_id=4, level_id=10)
    received = [RtpPacket.parse(p, viewer_map) for p in sent]
    assert [p.extensions.audio_level for p in received] == [(True, 30), (False, 127), None]
    assert {p.extensions.mid for p in received} == {"1"}
    assert {p.payload for p in received} == {b"opus"}


async def test_a_missed_keyframe_holds_media_back_only_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(forward, "KEYFRAME_WAIT_LIMIT", -1.0)  # "a while" has passed
    forwarder, stats, _ = _forwarder(instant_start=True)
    sent: list[bytes] = []
    forwarder.attach(_output(sent, stats))
    _feed(forwarder, 1, 0, VP8_DELTA)  # held back: no keyframe seen yet
    _feed(forwarder, 2, 3000, VP8_DELTA)
    assert [RtpPacket.parse(p).payload for p in sent] == [VP8_DELTA]
