"""The last CACHE_SIZE packets of a track, and the answers to viewers' NACKs.

Packets are cached once per track, in the source's numbering; each viewer's NACK names its
own (rewritten) sequence numbers, which its output maps back (`source_seq`) and, when the
packet is still cached and of the viewer's current epoch, resends (`retransmit`: as RTX
where the viewer negotiated it).
"""

from __future__ import annotations

from typing import Protocol

CACHE_SIZE = 1024  # a power of two, and no more than the viewers' SRTP replay window
_MASK = CACHE_SIZE - 1

# A cached packet: (seq, timestamp, padding flag, marker, payload, epoch). A plain tuple:
# one is built per inbound packet, and the fan-out unpacks it.
CachedPacket = tuple[int, int, int, int, bytes, int]


class Retransmitter(Protocol):
    """A viewer's side of NACK answering (sfu.media.fanout.Output)."""

    def source_seq(self, out_seq: int) -> int: ...

    def retransmit(self, packet: CachedPacket) -> bool: ...


class PacketCache:
    __slots__ = ("slots", "hits", "misses")

    def __init__(self) -> None:
        self.slots: list[CachedPacket | None] = [None] * CACHE_SIZE
        self.hits = 0
        self.misses = 0

    def put(self, packet: CachedPacket) -> None:
        self.slots[packet[0] & _MASK] = packet

    def get(self, seq: int) -> CachedPacket | None:
        packet = self.slots[seq & _MASK]
        return packet if packet is not None and packet[0] == seq else None

    def clear(self) -> None:
        self.slots = [None] * CACHE_SIZE

    def answer_nack(self, viewer: Retransmitter, lost: list[int]) -> None:
        """Resend what `viewer` lost (its own sequence numbers) from the cache."""
        slots = self.slots
        for out_seq in lost[:CACHE_SIZE]:
            seq = viewer.source_seq(out_seq)
            packet = slots[seq & _MASK]
            if packet is not None and packet[0] == seq and viewer.retransmit(packet):
                self.hits += 1
            else:
                self.misses += 1
