"""Per-room traffic counters for the heartbeat, kept off the per-packet path.

Each Room owns a ForwardingStats that its forwarders, outputs and sessions increment (the
same attribute increments as before, on another object). The worker's totals are the sum of
its live rooms plus everything retired rooms counted, summed once per heartbeat.
"""

from __future__ import annotations

from collections.abc import Iterable

from ipc import messages as m
from sfu.forward import ForwardingStats
from sfu.room import Room
from sfu.session import PublisherSession, Session


def add_into(total: ForwardingStats, part: ForwardingStats) -> None:
    for name in ForwardingStats.__slots__:
        setattr(total, name, getattr(total, name) + getattr(part, name))


def worker_totals(retired: ForwardingStats, rooms: Iterable[Room]) -> ForwardingStats:
    total = ForwardingStats()
    add_into(total, retired)
    for room in rooms:
        add_into(total, room.stats)
    return total


def room_stats(room: Room, publisher: Session | None, closed: bool = False) -> m.RoomStats:
    if isinstance(publisher, PublisherSession) and not publisher.closed:
        state = "connected" if publisher.connected else "connecting"
        tracks = [
            (kind, codec.mimeType.partition("/")[2]) for kind, codec in publisher.codecs.items()
        ]
    else:
        state, tracks = "none", []
    stats = room.stats
    return m.RoomStats(
        name=room.name,
        publisher_state=state,
        tracks=sorted(tracks),
        subscribers=len(room.subscriber_ids),
        packets_in=stats.packets_in,
        bytes_in=stats.bytes_in,
        packets_out=stats.packets_out,
        bytes_out=stats.bytes_out,
        dropped_packets=stats.dropped,
        closed=closed,
    )
