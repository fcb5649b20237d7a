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


class TrackStats:
    """What one track measured of its source, for the room stats API (sfu.roomstats).

    Per packet only the source stage's counters change (SourceState: packets, bytes, loss);
    these fields change once per frame (the marker bit) or per keyframe, and the `sampled_*`
    fields once per heartbeat, when sfu.roomstats turns counter deltas into rates.
    """

    __slots__ = (
        "frames",
        "frame_end_seq",
        "key_packet",
        "keyframes",
        "last_keyframe_at",
        "keyframe_interval",
        "width",
        "height",
        "sampled_at",
        "sampled_bytes",
        "sampled_frames",
        "sampled_lost",
        "sampled_expected",
        "bitrate_bps",
        "frame_rate",
        "loss_ratio",
    )

    def __init__(self) -> None:
        self.frames = 0  # packets with the marker bit: the last packet of a video frame
        self.frame_end_seq = -1  # the sequence number of the latest one
        self.key_packet: object = None  # the first packet of the latest keyframe
        self.keyframes = 0
        self.last_keyframe_at = 0.0  # the track's wall clock; 0: none yet
        self.keyframe_interval = 0.0  # seconds between the last two keyframes; 0: unknown
        self.width = 0  # of the latest keyframe; 0: unknown (a codec we do not parse)
        self.height = 0
        self.sampled_at = 0.0
        self.sampled_bytes = 0
        self.sampled_frames = 0
        self.sampled_lost = 0
        self.sampled_expected = 0
        self.bitrate_bps = 0.0
        self.frame_rate = 0.0
        self.loss_ratio = 0.0

    def keyframe(self, now: float, size: tuple[int, int] | None) -> None:
        """A keyframe ended at `now`; size: its (width, height) when the codec says it."""
        if self.last_keyframe_at:
            self.keyframe_interval = now - self.last_keyframe_at
        self.last_keyframe_at = now
        self.keyframes += 1
        if size is not None:
            self.width, self.height = size
