"""Forwarding state: header rewriting, source epochs, retransmission, keyframe requests.

The outputs send into a list (the real SRTP/UDP path is exercised by the end-to-end tests).
"""

import asyncio

from aiortc.rtp import RtpPacket, unwrap_rtx

from sfu.aiortc_adapter import SenderState
from sfu.forward import CodecKey, ForwardingStats, Output, TrackForwarder
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


def _forwarder() -> tuple[TrackForwarder, ForwardingStats, list[int]]:
    stats = ForwardingStats()
    forwarder = TrackForwarder("video", stats)
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
    rtx_payload = (12).to_bytes(2, "big") + b"recovered"
    forwarder.on_rtp(_rtp(500, 100, ssrc=2222, pt=97, payload=rtx_payload), 2222, True)
    first, second = (RtpPacket.parse(p) for p in sent)
    assert second.payload == b"recovered"
    assert (second.sequence_number - first.sequence_number) & 0xFFFF == 2


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
