"""Instant start: the group-of-pictures cache, the keyframe gate, the paced catch-up."""

from __future__ import annotations

from sfu.media.cache import CachedPacket
from sfu.media.clock import ManualClock
from sfu.media.fanout import Fanout
from sfu.media.instant_start import (
    CATCH_UP_PACKETS,
    CATCH_UP_PAUSE,
    KEYFRAME_WAIT_LIMIT,
    CatchUp,
    GopCache,
)
from sfu.media.keyframes import h264_keyframe, vp8_keyframe
from sfu.media.stats import ForwardingStats

VP8_KEY = b"\x10\x00keyframe"  # descriptor: start of partition 0; payload header: P bit clear
VP8_DELTA = b"\x10\x01delta"  # P bit set: an inter frame
VP8_MORE = b"\x00more"  # a continuation packet of a frame


def _packet(seq: int, ts: int, payload: bytes, epoch: int = 1) -> CachedPacket:
    return (seq, ts, 0, 0, payload, epoch)


def _seqs(gop: GopCache) -> list[int]:
    return [packet[0] for packet in gop.packets or []]


def test_the_group_starts_at_the_latest_keyframe() -> None:
    gop = GopCache(vp8_keyframe, max_bytes=1 << 20)
    assert not gop.add(_packet(1, 0, VP8_DELTA), now=0.0)  # before any keyframe: held back
    assert gop.packets is None
    assert gop.add(_packet(2, 3000, VP8_KEY), now=0.0)
    gop.add(_packet(3, 3000, VP8_MORE), now=0.0)
    gop.add(_packet(4, 6000, VP8_DELTA), now=0.0)
    assert _seqs(gop) == [2, 3, 4]
    assert gop.size == len(VP8_KEY + VP8_MORE + VP8_DELTA)
    gop.add(_packet(5, 9000, VP8_KEY), now=0.0)
    assert _seqs(gop) == [5]


def test_one_keyframe_in_several_packets_is_one_group() -> None:
    """H264: SPS, PPS and IDR share a timestamp; each SPS/IDR packet tests as a keyframe."""
    gop = GopCache(h264_keyframe, max_bytes=1 << 20)
    gop.add(_packet(1, 3000, b"\x67sps"), now=0.0)
    gop.add(_packet(2, 3000, b"\x68pps"), now=0.0)
    gop.add(_packet(3, 3000, b"\x65idr"), now=0.0)
    assert _seqs(gop) == [1, 2, 3]


def test_a_group_over_the_cap_is_dropped_until_the_next_keyframe() -> None:
    gop = GopCache(vp8_keyframe, max_bytes=100)
    gop.add(_packet(1, 0, VP8_KEY + bytes(60)), now=0.0)
    assert gop.add(_packet(2, 3000, VP8_DELTA + bytes(60)), now=0.0)  # still forwarded
    assert gop.packets is None
    gop.add(_packet(3, 6000, VP8_DELTA), now=0.0)
    assert gop.packets is None
    gop.add(_packet(4, 9000, VP8_KEY), now=0.0)
    assert gop.packets is not None and len(gop.packets) == 1


def test_a_missed_keyframe_holds_media_back_only_for_a_while() -> None:
    gop = GopCache(vp8_keyframe, max_bytes=1 << 20)
    assert not gop.add(_packet(1, 0, VP8_DELTA), now=50.0)
    assert not gop.add(_packet(2, 3000, VP8_DELTA), now=50.0 + KEYFRAME_WAIT_LIMIT)
    assert gop.add(_packet(3, 6000, VP8_DELTA), now=50.0 + KEYFRAME_WAIT_LIMIT + 0.1)
    assert gop.packets is None  # nothing to replay without a keyframe


def test_restart_waits_for_the_new_epochs_keyframe() -> None:
    gop = GopCache(vp8_keyframe, max_bytes=1 << 20)
    gop.add(_packet(1, 0, VP8_KEY), now=0.0)
    gop.restart()
    assert not gop.keyed and gop.packets is None
    assert not gop.add(_packet(9, 77, VP8_DELTA, epoch=2), now=0.0)
    assert gop.add(_packet(10, 3077, VP8_KEY, epoch=2), now=0.0)


class _Viewer:
    def __init__(self) -> None:
        self.received: list[tuple[int, float, int]] = []  # (seq, now, epoch)

    def forward(
        self, seq: int, ts: int, flags: int, marker: int, payload: bytes, now: float, epoch: int
    ) -> None:
        self.received.append((seq, now, epoch))

    def retransmit(self, packet: CachedPacket) -> bool:
        return False

    def source_seq(self, out_seq: int) -> int:
        return out_seq

    def level_slot(self) -> tuple[bytearray, int] | None:
        return None


def test_a_joiner_is_paced_then_goes_live_without_a_gap() -> None:
    clock = ManualClock(now=10.0)
    stats = ForwardingStats()
    fanout = Fanout(stats)
    catch_up = CatchUp(fanout, clock=clock, scheduler=clock)
    viewer = _Viewer()
    backlog = [_packet(100 + i, 3000 * i, VP8_DELTA) for i in range(40)]
    fanout.attach(viewer, live=False)
    catch_up.join(viewer, backlog)
    assert viewer in catch_up and viewer.received == []  # nothing before the loop turns
    clock.advance(0)
    assert len(viewer.received) == CATCH_UP_PACKETS
    catch_up.add(_packet(140, 200000, VP8_DELTA))  # live while catching up
    clock.advance(CATCH_UP_PAUSE)
    assert len(viewer.received) == 2 * CATCH_UP_PACKETS and viewer not in fanout.outputs
    clock.advance(CATCH_UP_PAUSE)
    assert [seq for seq, _, _ in viewer.received] == list(range(100, 141))
    assert viewer in fanout.outputs and viewer not in catch_up
    assert clock.pending == 0
    assert stats.packets_out == 41 and stats.bytes_out == 41 * len(VP8_DELTA)
    fanout.forward(141, 203000, 0, 0, VP8_DELTA, clock(), 1)
    assert viewer.received[-1][0] == 141


def test_a_viewer_that_leaves_while_catching_up_gets_nothing_more() -> None:
    clock = ManualClock()
    fanout = Fanout(ForwardingStats())
    catch_up = CatchUp(fanout, clock=clock, scheduler=clock)
    viewer, other = _Viewer(), _Viewer()
    catch_up.join(viewer, [_packet(i, 0, VP8_DELTA) for i in range(40)])
    catch_up.join(other, [_packet(i, 0, VP8_DELTA) for i in range(2)])
    clock.advance(0)
    catch_up.leave(viewer)
    clock.advance(1)
    assert len(viewer.received) == CATCH_UP_PACKETS
    assert fanout.outputs == [other]
    catch_up.join(viewer, [_packet(1, 0, VP8_DELTA)])
    catch_up.close()
    clock.advance(1)
    assert len(viewer.received) == CATCH_UP_PACKETS and clock.pending == 0
