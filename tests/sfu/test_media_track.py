"""The composed TrackForwarder: source epochs, retransmission, keyframe requests, instant
start and audio level, end to end through its stages, on a ManualClock (no real time).

The outputs send into lists; the real SRTP/UDP path is exercised by the end-to-end tests.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket, unwrap_rtx

from sfu.aiortc_adapter import SenderState
from sfu.codecs import CodecKey
from sfu.media import ForwardingStats, InstantStart, Output, RtpView, TrackForwarder
from sfu.media.clock import ManualClock
from sfu.media.fanout import header_template
from sfu.media.instant_start import CATCH_UP_PAUSE, KEYFRAME_WAIT_LIMIT
from sfu.media.keyframes import KEYFRAME_REQUEST_INTERVAL
from sfu.media.source import SOURCE_SWITCH_SILENCE
from sfu.rtp import AUDIO_LEVEL_URI, MID_URI
from tests.support.outputs import list_output

VP8 = CodecKey("video/vp8", 90000, "")
OPUS = CodecKey("audio/opus", 48000, "")


def _rtp(
    seq: int, ts: int, ssrc: int = 1111, pt: int = 96, payload: bytes = b"frame", marker: int = 0
) -> bytes:
    packet = RtpPacket(payload_type=pt, sequence_number=seq, timestamp=ts, ssrc=ssrc, marker=marker)
    packet.payload = payload
    return packet.serialize()


def _output(sent: list[bytes], stats: ForwardingStats, *, rtx_pt: int | None = None) -> Output:
    return list_output(sent, stats, rtx_pt=rtx_pt)


class _Track:
    """A video TrackForwarder on a ManualClock, with its keyframe requests recorded."""

    def __init__(self, instant_start: bool = False, max_bytes: int = 4 << 20) -> None:
        self.clock = ManualClock(now=1000.0)
        self.stats = ForwardingStats()
        self.forwarder = TrackForwarder(
            "video",
            self.stats,
            InstantStart(enabled=instant_start, max_bytes=max_bytes),
            clock=self.clock,
            monotonic=self.clock,
            scheduler=self.clock,
        )
        self.requests: list[float] = []
        self.forwarder.set_source(VP8, self.request)

    def request(self) -> None:
        self.requests.append(self.clock.now)

    def feed(self, seq: int, ts: int, payload: bytes = b"frame", ssrc: int = 1111) -> None:
        self.forwarder.receive(RtpView(_rtp(seq, ts, ssrc=ssrc, payload=payload)), False)
        self.clock.advance(0.001)


def test_each_viewer_gets_its_own_ssrc_pt_and_offsets() -> None:
    track = _Track()
    forwarder, stats = track.forwarder, track.stats
    sent_a: list[bytes] = []
    sent_b: list[bytes] = []
    out_a, out_b = _output(sent_a, stats), _output(sent_b, stats)
    out_b.ssrc = 0x0BADCAFE
    forwarder.attach(out_a)
    forwarder.attach(out_b)
    for i in range(5):
        forwarder.receive(RtpView(_rtp(1000 + i, 90000 + 3000 * i, marker=i == 4)), False)
    for sent, ssrc in ((sent_a, 0xABCDEF01), (sent_b, 0x0BADCAFE)):
        packets = [RtpPacket.parse(p) for p in sent]
        assert [p.ssrc for p in packets] == [ssrc] * 5
        assert {p.payload_type for p in packets} == {120}
        seqs = [p.sequence_number for p in packets]
        assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(5)]
        assert [p.timestamp - packets[0].timestamp for p in packets] == [3000 * i for i in range(5)]
        assert [p.marker for p in packets] == [0, 0, 0, 0, 1]
        assert all(p.payload == b"frame" for p in packets)
    assert stats.packets_out == 10 and stats.packets_in == 5
    assert out_a.report.packets == 5


def test_forwarded_bytes_are_exact() -> None:
    """An inbound browser packet (MID and transport-cc extensions) to one viewer, whole."""
    track = _Track()
    sent: list[bytes] = []
    output = _output(sent, track.stats)
    output.last_seq = 99
    track.forwarder.attach(output)
    inbound = bytes.fromhex(
        "90e01234 00015f90 cafebabe"  # X=1, M=1 PT 96, seq 0x1234, ts 90000, SSRC
        "bede0002 4031 310102 000000"  # the publisher's MID "1" (id 4), transport seq
        "9000beef"
    )
    track.forwarder.receive(RtpView(inbound), False)
    [packet] = sent
    ts = (90000 + output.ts_offset) & 0xFFFFFFFF
    assert packet == (
        bytes.fromhex("90f8 0064") + ts.to_bytes(4, "big") + bytes.fromhex("abcdef01")
    ) + bytes.fromhex("bede0001 40300000 9000beef")  # seq 100, the viewer's MID "0" (id 4)


def test_new_publisher_continues_sequence_and_timestamps() -> None:
    track = _Track()
    sent: list[bytes] = []
    track.forwarder.attach(_output(sent, track.stats))
    for i in range(3):
        track.feed(50000 + i, 5000 + 3000 * i, ssrc=1)
    # A republish: new SSRC, unrelated sequence numbers and timestamps.
    track.forwarder.set_source(VP8, lambda: None)
    for i in range(3):
        track.feed(7 + i, 999 + 3000 * i, ssrc=2)
    packets = [RtpPacket.parse(p) for p in sent]
    seqs = [p.sequence_number for p in packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(6)]
    stamps = [p.timestamp for p in packets]
    assert all(
        ((b - a) & 0xFFFFFFFF) < 0x80000000 and b != a
        for a, b in zip(stamps, stamps[1:], strict=False)
    )


def test_an_encoder_restart_under_a_new_ssrc_is_a_new_epoch_with_a_keyframe_request() -> None:
    track = _Track()
    sent: list[bytes] = []
    track.forwarder.attach(_output(sent, track.stats))
    track.feed(1, 100, ssrc=1)
    epoch = track.forwarder.epoch
    track.clock.advance(SOURCE_SWITCH_SILENCE + 0.1)
    requests = len(track.requests)
    track.feed(40000, 5, ssrc=2)
    assert track.forwarder.source_ssrc == 2 and track.forwarder.epoch == epoch + 1
    assert len(track.requests) == requests + 1
    first, second = (RtpPacket.parse(p) for p in sent)
    assert second.sequence_number == (first.sequence_number + 1) & 0xFFFF


def test_nack_is_answered_from_cache_as_rtx() -> None:
    track = _Track()
    forwarder = track.forwarder
    sent: list[bytes] = []
    output = _output(sent, track.stats, rtx_pt=121)
    forwarder.attach(output)
    for i in range(10):
        track.feed((65530 + i) & 0xFFFF, 3000 * i, payload=bytes([i]))
    lost_out = RtpPacket.parse(sent[7]).sequence_number
    sent.clear()
    forwarder.retransmit(output, [lost_out, (lost_out + 5000) & 0xFFFF])
    assert len(sent) == 1 and forwarder.nack_hits == 1 and forwarder.nack_misses == 1
    rtx = RtpPacket.parse(sent[0])
    assert rtx.payload_type == 121 and rtx.ssrc == 0x12345678
    original = unwrap_rtx(rtx, payload_type=120, ssrc=output.ssrc)
    assert original.sequence_number == lost_out
    assert original.payload == bytes([7])


def test_publisher_rtx_is_unwrapped_and_forwarded_as_media() -> None:
    track = _Track()
    sent: list[bytes] = []
    track.forwarder.attach(_output(sent, track.stats))
    track.feed(10, 100)
    track.feed(13, 100)  # 11 and 12 lost
    rtx_payload = (12).to_bytes(2, "big") + b"recovered"
    track.forwarder.receive(RtpView(_rtp(500, 100, ssrc=2222, pt=97, payload=rtx_payload)), True)
    first, _, repaired = (RtpPacket.parse(p) for p in sent)
    assert repaired.payload == b"recovered"
    assert (repaired.sequence_number - first.sequence_number) & 0xFFFF == 2


def test_publisher_rtx_outside_the_recent_past_is_dropped() -> None:
    """Junk RTX must not jump viewers' sequence numbers (their SRTP would drop what follows)."""
    track = _Track()
    sent: list[bytes] = []
    track.forwarder.attach(_output(sent, track.stats))
    track.feed(5000, 100)
    for original in (5001, 5000 + 0x8000, 5000 - 2000):
        payload = original.to_bytes(2, "big") + b"junk"
        track.forwarder.receive(RtpView(_rtp(1, 100, ssrc=2222, pt=97, payload=payload)), True)
    assert len(sent) == 1 and track.stats.dropped == 3


def test_padding_only_and_malformed_packets_are_not_forwarded() -> None:
    track = _Track()
    sent: list[bytes] = []
    track.forwarder.attach(_output(sent, track.stats))
    track.forwarder.on_rtp(b"\x90\x60" + b"\x00" * 10 + b"\xbe\xde\x00\x09", False)
    probe = RtpPacket(payload_type=97, sequence_number=1, timestamp=1, ssrc=2222)
    probe.padding_size = 200
    track.forwarder.on_rtp(probe.serialize(), True)
    padded = RtpPacket(payload_type=96, sequence_number=1, timestamp=1, ssrc=1111)
    padded.padding_size = 100
    track.forwarder.receive(RtpView(padded.serialize()), False)
    assert sent == []
    assert track.stats.dropped == 1 and track.stats.packets_in == 0


def test_a_joining_viewer_asks_the_publisher_for_a_keyframe() -> None:
    track = _Track()
    track.forwarder.attach(_output([], track.stats))
    assert track.requests == [1000.0]


def test_keyframe_requests_are_rate_limited_but_never_lost() -> None:
    track = _Track()
    for _ in range(5):
        track.forwarder.request_keyframe()
    assert track.requests == [1000.0]
    track.clock.advance(KEYFRAME_REQUEST_INTERVAL)
    assert track.requests == [1000.0, 1000.0 + KEYFRAME_REQUEST_INTERVAL]


def test_audio_tracks_never_ask_for_keyframes() -> None:
    clock = ManualClock()
    forwarder = TrackForwarder("audio", ForwardingStats(), scheduler=clock, monotonic=clock)
    requests: list[int] = []
    forwarder.set_source(OPUS, lambda: requests.append(1))
    forwarder.attach(_output([], forwarder.stats))
    forwarder.request_keyframe()
    assert requests == [] and clock.pending == 0


def test_stray_ssrc_cannot_hijack_a_live_source() -> None:
    track = _Track()
    sent: list[bytes] = []
    track.forwarder.attach(_output(sent, track.stats))
    track.feed(1, 100, ssrc=1)
    track.feed(9000, 5, ssrc=666, payload=b"evil")
    track.feed(2, 200, ssrc=1)
    assert [RtpPacket.parse(p).payload for p in sent] == [b"frame", b"frame"]
    assert track.stats.dropped == 1 and track.forwarder.source_ssrc == 1


def test_clear_source_stops_keyframe_requests_and_frees_the_ssrc() -> None:
    track = _Track()
    track.feed(1, 100, ssrc=1)
    track.forwarder.clear_source(lambda: None)  # not this source's requester: no effect
    assert track.forwarder.source_ssrc == 1
    track.forwarder.clear_source(track.request)
    assert track.forwarder.source_ssrc is None and track.forwarder.source is None
    track.forwarder.request_keyframe()
    assert track.requests == [1000.0]  # only the first packet's
    track.feed(5, 100, ssrc=2)  # the next publisher's first packet is taken at once
    assert track.forwarder.source_ssrc == 2
    assert track.forwarder.codec == VP8  # the room's codec stays known


def test_taps_see_every_forwarded_packet() -> None:
    track = _Track()
    seen: list[tuple[int, int, int, bytes, int]] = []

    def tap(seq: int, ts: int, marker: int, payload: bytes, epoch: int) -> None:
        seen.append((seq, ts, marker, payload, epoch))

    track.forwarder.add_tap(tap)
    track.feed(7, 100)
    track.forwarder.remove_tap(tap)
    track.feed(8, 200)
    assert seen == [(7, 100, 0, b"frame", track.forwarder.epoch)]


# --- instant start ---------------------------------------------------------------------------

VP8_KEY = b"\x10\x00keyframe"  # descriptor: start of partition 0; payload header: P bit clear
VP8_DELTA = b"\x10\x01delta"  # P bit set: an inter frame
VP8_MORE = b"\x00more"  # a continuation packet of a frame


def test_joining_viewer_gets_the_latest_keyframe_then_live_contiguously() -> None:
    track = _Track(instant_start=True)
    forwarder = track.forwarder
    track.feed(100, 0, VP8_DELTA)  # before any keyframe: not kept
    track.feed(101, 3000, VP8_KEY)
    track.feed(102, 3000, VP8_MORE)
    for i in range(40):  # more than one catch-up slice
        track.feed(103 + i, 6000 + 3000 * i, VP8_DELTA)
    sent: list[bytes] = []
    output = _output(sent, track.stats)
    forwarder.attach(output)
    # The source's first packet asked for a keyframe; this viewer asks too (a PLI as well,
    # for viewers without instant start), within the interval: sent when it ends.
    assert len(track.requests) == 1 and track.clock.pending == 2  # + the catch-up
    assert output not in forwarder.outputs
    track.feed(143, 200000, VP8_DELTA)  # live while the viewer catches up
    track.clock.advance(3 * CATCH_UP_PAUSE)
    assert output in forwarder.outputs
    track.feed(144, 203000, VP8_DELTA)
    packets = [RtpPacket.parse(p) for p in sent]
    assert packets[0].payload == VP8_KEY
    assert [p.payload for p in packets[1:3]] == [VP8_MORE, VP8_DELTA]
    seqs = [p.sequence_number for p in packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(44)]
    assert packets[2].timestamp - packets[0].timestamp == 3000
    assert packets[-1].timestamp - packets[0].timestamp == 200000


def test_a_group_of_pictures_over_the_cap_is_not_replayed() -> None:
    track = _Track(instant_start=True, max_bytes=100)
    forwarder = track.forwarder
    track.feed(1, 0, VP8_KEY + bytes(60))
    track.feed(2, 3000, VP8_DELTA + bytes(60))  # over 100 bytes: dropped
    assert forwarder.gop_cache is not None and forwarder.gop_cache.packets is None
    sent: list[bytes] = []
    output = _output(sent, track.stats)
    forwarder.attach(output)
    assert output in forwarder.outputs  # straight to live, nothing to replay
    track.feed(3, 6000, VP8_DELTA)
    track.feed(4, 9000, VP8_KEY)  # the next keyframe starts a new group
    assert [RtpPacket.parse(p).payload for p in sent] == [VP8_DELTA, VP8_KEY]
    assert forwarder.gop_cache.packets is not None and len(forwarder.gop_cache.packets) == 1


def test_new_source_reaches_viewers_from_its_first_keyframe_on() -> None:
    track = _Track(instant_start=True)
    sent: list[bytes] = []
    track.forwarder.attach(_output(sent, track.stats))
    track.feed(500, 0, VP8_KEY, ssrc=1)
    track.feed(501, 3000, VP8_DELTA, ssrc=1)
    track.forwarder.set_source(VP8, lambda: None)  # republish
    track.feed(9, 77, VP8_DELTA, ssrc=2)  # undecodable without its keyframe
    track.feed(10, 3077, VP8_KEY, ssrc=2)
    track.feed(11, 6077, VP8_DELTA, ssrc=2)
    packets = [RtpPacket.parse(p) for p in sent]
    assert [p.payload for p in packets] == [VP8_KEY, VP8_DELTA, VP8_KEY, VP8_DELTA]
    seqs = [p.sequence_number for p in packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(4)]
    assert ((packets[2].timestamp - packets[1].timestamp) & 0xFFFFFFFF) < 0x80000000


def test_without_instant_start_a_joining_viewer_gets_live_packets_only() -> None:
    track = _Track(instant_start=False)
    track.feed(1, 0, VP8_KEY)
    sent: list[bytes] = []
    track.forwarder.attach(_output(sent, track.stats))
    track.feed(2, 3000, VP8_DELTA)
    assert [RtpPacket.parse(p).payload for p in sent] == [VP8_DELTA]
    track.clock.advance(KEYFRAME_REQUEST_INTERVAL)
    assert len(track.requests) == 2  # the source's first packet, then the viewer's


def test_a_missed_keyframe_holds_media_back_only_for_a_while() -> None:
    track = _Track(instant_start=True)
    sent: list[bytes] = []
    track.forwarder.attach(_output(sent, track.stats))
    track.feed(1, 0, VP8_DELTA)  # held back: no keyframe seen yet
    track.clock.advance(KEYFRAME_WAIT_LIMIT)
    track.feed(2, 3000, VP8_DELTA)  # "a while" has passed
    track.feed(3, 6000, VP8_DELTA)
    assert [RtpPacket.parse(p).payload for p in sent] == [VP8_DELTA, VP8_DELTA]
    assert track.stats.packets_in == 3


def test_close_cancels_every_timer_and_detaches_everyone() -> None:
    track = _Track(instant_start=True)
    forwarder = track.forwarder
    track.feed(1, 0, VP8_KEY)
    forwarder.attach(_output([], track.stats))  # catching up: a timer
    forwarder.request_keyframe()  # within the interval: a timer
    assert track.clock.pending == 2
    forwarder.close()
    assert track.clock.pending == 0 and forwarder.outputs == [] and not forwarder.catch_up.joining


# --- audio level -----------------------------------------------------------------------------


def _ext_map(mid_id: int, level_id: int) -> HeaderExtensionsMap:
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


def test_audio_level_is_copied_under_the_viewers_id() -> None:
    stats = ForwardingStats()
    forwarder = TrackForwarder("audio", stats)
    forwarder.set_source(OPUS, lambda: None, audio_level_id=1)
    sent: list[bytes] = []
    output = Output(
        send=sent.append,
        report=SenderState(),
        codec=OPUS,
        ssrc=5,
        payload_type=111,
        rtx_ssrc=6,
        rtx_payload_type=None,
        header=header_template(4, "1", audio_level_id=10),
        stats=stats,
        audio_level_id=10,
    )
    forwarder.attach(output)
    publisher_map = _ext_map(mid_id=3, level_id=1)
    for seq, level in ((1, (True, 30)), (2, (False, 127)), (3, None)):
        packet = RtpPacket(payload_type=111, sequence_number=seq, timestamp=960 * seq, ssrc=9)
        packet.extensions.mid = "0"
        packet.extensions.audio_level = level
        packet.payload = b"opus"
        forwarder.receive(RtpView(packet.serialize(publisher_map)), False)
    received = [RtpPacket.parse(p, _ext_map(mid_id=4, level_id=10)) for p in sent]
    assert [p.extensions.audio_level for p in received] == [(True, 30), (False, 127), None]
    assert {p.extensions.mid for p in received} == {"1"}
    assert {p.payload for p in received} == {b"opus"}
    forwarder.detach(output)
    assert forwarder.fanout.level_slots == []


# --- layering ---------------------------------------------------------------------------------


def test_the_media_core_imports_no_aiortc() -> None:
    code = (
        "import sys, sfu.media, sfu.rtp, sfu.codecs\n"
        "import sfu.media.transport_cc, sfu.media.clock\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('aiortc', 'av', 'aioice')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# --- the publisher's ingress -------------------------------------------------------------------


async def test_the_publisher_ingress_parses_each_packet_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PublisherSession._on_rtp: one RtpView per packet, read by transport-cc and the track."""
    from sfu import media
    from sfu.media.transport_cc import TransportCcFeedback
    from sfu.room import Room
    from sfu.session import PublisherSession, SessionSettings
    from sfu.session import publisher as publisher_module

    parses: list[bytes] = []

    class CountingView(media.RtpView):
        __slots__ = ()

        def __init__(self, data: bytes) -> None:
            parses.append(data)
            super().__init__(data)

    monkeypatch.setattr(publisher_module, "RtpView", CountingView)
    settings = SessionSettings(connect_timeout=5, public_ip=None)
    room = Room("r", settings, instant_start=InstantStart(enabled=False))
    stats = room.stats
    publisher = room.open_session("publisher", "p1")
    assert isinstance(publisher, PublisherSession)
    forwarder = room.forwarder("video")
    forwarder.set_source(VP8, lambda: None)
    publisher._routes = {96: (forwarder, False)}
    publisher.transport_cc = TransportCcFeedback(3, 1, lambda rtcp: None)
    sent: list[bytes] = []
    forwarder.attach(_output(sent, stats))
    inbound = bytes.fromhex("90e01234 00015f90 cafebabe bede0002 4031 310102 000000 9000beef")
    publisher._on_rtp(inbound)
    publisher._on_rtp(inbound[:20])  # malformed: dropped, counted once
    publisher._on_rtp(bytes([0x80, 0x61]) + inbound[2:])  # an unrouted payload type
    assert parses == [inbound, inbound[:20], bytes([0x80, 0x61]) + inbound[2:]]
    assert len(sent) == 1 and stats.dropped == 2
    assert (
        publisher.transport_cc.flush() is not None
        and publisher.transport_cc.media_ssrc == 0xCAFEBABE
    )
    await publisher.pc.close()
