"""Counters of the forwarding path."""

from __future__ import annotations


class ForwardingStats:
    """Counters a worker aggregates into its heartbeat (sfu.roomstats sums `__slots__`)."""

    __slots__ = ("packets_in", "bytes_in", "packets_out", "bytes_out", "dropped", "send_errors")

    def __init__(self) -> None:
        self.packets_in = 0
        self.bytes_in = 0
        self.packets_out = 0
        self.bytes_out = 0
        self.dropped = 0
        self.send_errors = 0
