"""Per-room traffic counters for the heartbeat, kept off the per-packet path.

Each Room owns a ForwardingStats that its forwarders, outputs and sessions increment (the
same attribute increments as before, on another object). The worker's totals are the sum of
its live rooms plus everything retired rooms counted, summed once per heartbeat.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from ipc import messages as m
from sfu.media.stats import ForwardingStats
from sfu.room import Room

CountersT = TypeVar("CountersT", bound=m.Counters)


def add_into(total: ForwardingStats, part: ForwardingStats) -> None:
    for name in ForwardingStats.__slots__:
        setattr(total, name, getattr(total, name) + getattr(part, name))


def worker_totals(retired: ForwardingStats, rooms: Iterable[Room]) -> ForwardingStats:
    total = ForwardingStats()
    add_into(total, retired)
    for room in rooms:
        add_into(total, room.stats)
    return total


def with_counters(message: CountersT, stats: ForwardingStats) -> CountersT:
    """`message` (a Heartbeat or a RoomStats) carrying the counters of `stats`."""
    message.packets_in = stats.packets_in
    message.bytes_in = stats.bytes_in
    message.packets_out = stats.packets_out
    message.bytes_out = stats.bytes_out
    message.dropped_packets = stats.dropped
    return message


def room_stats(room: Room, closed: bool = False) -> m.RoomStats:
    state: m.PublisherState = "none"
    tracks: list[tuple[str, str]] = []
    publisher = room.publisher
    if publisher is not None and not publisher.closed:
        state = "connected" if publisher.connected else "connecting"
        tracks = [
            (kind, codec.mimeType.partition("/")[2]) for kind, codec in publisher.codecs.items()
        ]
    message = m.RoomStats(
        name=room.name,
        publisher_state=state,
        tracks=sorted(tracks),
        subscribers=room.subscribers,
        closed=closed,
    )
    return with_counters(message, room.stats)
