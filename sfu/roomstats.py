"""Per-room traffic counters for the heartbeat, kept off the per-packet path.

Each Room owns a ForwardingStats that its forwarders, outputs and sessions increment (the
same attribute increments as before, on another object). The worker's totals are the sum of
its live rooms plus everything retired rooms counted, summed once per heartbeat.

Per track (`track_stats`): the counters the source stage and the per-frame hook keep
(sfu.media.source.SourceState, sfu.media.stats.TrackStats) become rates here, from their
deltas over at least RATE_WINDOW_S, once per heartbeat: nothing is computed per packet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TypeVar

from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from ipc import messages as m
from sfu.media.stats import ForwardingStats
from sfu.media.track import TrackForwarder
from sfu.room import Room
from sfu.sdp import describe_codec

# Rates (bitrate, frame rate, loss ratio) are over at least this long: with a short
# HEARTBEAT_INTERVAL a window of a few frames would make the frame rate jump by steps.
RATE_WINDOW_S = 1.0

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


def track_stats(
    forwarder: TrackForwarder, codec: RTCRtpCodecParameters, now: float
) -> m.TrackStats:
    """One track's figures; advances its rate window when RATE_WINDOW_S has passed."""
    source = forwarder.state
    stats = forwarder.track_stats
    expected, lost = source.loss()
    elapsed = now - stats.sampled_at
    if elapsed >= RATE_WINDOW_S:
        if stats.sampled_at:
            window_expected = expected - stats.sampled_expected
            stats.bitrate_bps = max(source.bytes - stats.sampled_bytes, 0) * 8 / elapsed
            stats.frame_rate = max(stats.frames - stats.sampled_frames, 0) / elapsed
            stats.loss_ratio = (
                min(max(lost - stats.sampled_lost, 0) / window_expected, 1.0)
                if window_expected > 0
                else 0.0
            )
        stats.sampled_at = now
        stats.sampled_bytes = source.bytes
        stats.sampled_frames = stats.frames
        stats.sampled_lost = lost
        stats.sampled_expected = expected
    video = forwarder.kind == "video"
    keyed = stats.last_keyframe_at > 0
    return m.TrackStats(
        kind=forwarder.kind,
        codec=describe_codec(codec),
        bitrate_bps=round(stats.bitrate_bps, 1),
        frame_rate=round(stats.frame_rate, 2) if video else 0.0,
        width=stats.width,
        height=stats.height,
        packets_received=source.packets,
        packets_lost=lost,
        loss_ratio=round(stats.loss_ratio, 5),
        keyframes=stats.keyframes,
        keyframe_interval_s=round(stats.keyframe_interval, 3),
        keyframe_age_s=round(max(now - stats.last_keyframe_at, 0.0), 3) if keyed else -1.0,
    )


def room_stats(room: Room, closed: bool = False, now: float | None = None) -> m.RoomStats:
    """now: the forwarders' wall clock (time.time)."""
    state: m.PublisherState = "none"
    tracks: list[tuple[str, str]] = []
    media: list[m.TrackStats] = []
    publisher = room.publisher
    if publisher is not None and not publisher.closed:
        state = "connected" if publisher.connected else "connecting"
        tracks = [
            (kind, codec.mimeType.partition("/")[2]) for kind, codec in publisher.codecs.items()
        ]
        when = time.time() if now is None else now
        for kind, codec in sorted(publisher.codecs.items()):
            forwarder = room.forwarders.get(kind)
            if forwarder is not None:
                media.append(track_stats(forwarder, codec, when))
    message = m.RoomStats(
        name=room.name,
        publisher_state=state,
        tracks=sorted(tracks),
        subscribers=room.subscribers,
        closed=closed,
        media=media,
    )
    return with_counters(message, room.stats)
