"""PacketCache: the last 1024 packets of a track and the answers to viewers' NACKs."""

from __future__ import annotations

from sfu.media.cache import CACHE_SIZE, CachedPacket, PacketCache
from sfu.media.source import REPLAY_WINDOW


def _packet(seq: int, epoch: int = 1) -> CachedPacket:
    return (seq, 3000 * seq, 0, 0, bytes([seq & 0xFF]), epoch)


class _Viewer:
    """A viewer whose sequence numbers are the source's + 100, on epoch 1."""

    def __init__(self, fail: bool = False) -> None:
        self.resent: list[CachedPacket] = []
        self.fail = fail

    def source_seq(self, out_seq: int) -> int:
        return (out_seq - 100) & 0xFFFF

    def retransmit(self, packet: CachedPacket) -> bool:
        if self.fail or packet[5] != 1:
            return False
        self.resent.append(packet)
        return True


def test_the_cache_fits_the_replay_window() -> None:
    assert CACHE_SIZE & (CACHE_SIZE - 1) == 0 and CACHE_SIZE <= REPLAY_WINDOW


def test_put_and_get_across_the_wrap() -> None:
    cache = PacketCache()
    for seq in range(65530, 65536):
        cache.put(_packet(seq))
    for seq in range(6):
        cache.put(_packet(seq))
    assert cache.get(65535) == _packet(65535)
    assert cache.get(3) == _packet(3)
    assert cache.get(3 + CACHE_SIZE) is None  # same slot, another packet
    cache.put(_packet(3 + CACHE_SIZE))
    assert cache.get(3) is None  # overwritten


def test_nacks_are_answered_in_the_viewers_numbering() -> None:
    cache = PacketCache()
    for seq in range(10):
        cache.put(_packet(seq))
    viewer = _Viewer()
    cache.answer_nack(viewer, [107, 108, 100 + 5000])  # 7, 8, and one never cached
    assert viewer.resent == [_packet(7), _packet(8)]
    assert (cache.hits, cache.misses) == (2, 1)


def test_a_packet_of_another_epoch_or_a_failed_send_is_a_miss() -> None:
    cache = PacketCache()
    cache.put(_packet(1, epoch=0))
    cache.put(_packet(2))
    cache.answer_nack(_Viewer(), [101])
    cache.answer_nack(_Viewer(fail=True), [102])
    assert (cache.hits, cache.misses) == (0, 2)


def test_a_nack_list_is_bounded_and_clear_forgets() -> None:
    cache = PacketCache()
    for seq in range(CACHE_SIZE):
        cache.put(_packet(seq))
    viewer = _Viewer()
    cache.answer_nack(viewer, [100 + (i % CACHE_SIZE) for i in range(3 * CACHE_SIZE)])
    assert len(viewer.resent) == CACHE_SIZE
    cache.clear()
    assert cache.get(5) is None
