"""Recording every publisher track to a file, without ever slowing forwarding down.

On the event loop, per packet, a recording is one tap on its TrackForwarder: a length check
and a deque append (no lock, no I/O, no parsing). One writer thread per worker drains the
deques every DRAIN_INTERVAL and does everything else: reorders packets by sequence number
within a small window, assembles frames, depacketises them (sfu.recording.codecs), muxes
them with PyAV (sfu.recording.store) and checkpoints the sidecar about once a second.

* A full deque (the writer fell behind) drops packets and marks a gap at that point; after
  a gap, and after network loss the window could not repair, video waits for the next
  keyframe, and the writer asks the publisher for one through the event loop.
* Every recording starts at a keyframe (one is requested when the recording starts).
* Timestamps: the audio and video recordings of a room share one wall-clock origin, the
  moment the publisher connected. A track's first packet is placed at its arrival time
  after that origin and later packets follow their RTP timestamps, so players and ffmpeg
  line the files up; a new source (SSRC) is placed by its arrival time again.
* A write error (disk full, RECORD_DIR unwritable) marks the recording failed, counts it and
  logs it once; forwarding goes on, and what was written before the error is kept.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.sidecar import COMPLETE, FAILED, RECORDING, RecordingInfo, write_sidecar
from sfu.media import TrackForwarder
from sfu.media.keyframes import keyframe_test
from sfu.recording.codecs import CodecFormat, codec_format, opus_samples
from sfu.recording.store import (
    WRITE_ERRORS,
    ContainerWriter,
    create_media_file,
    frame_size,
    repair,
    repair_unfinished,
    safe_track_id,
)

if TYPE_CHECKING:
    from aiortc import RTCRtpTransceiver

    from sfu.room import Room

log = logging.getLogger(__name__)

DRAIN_INTERVAL = 0.05  # seconds between two passes of the writer thread
CHECKPOINT_INTERVAL = 1.0  # seconds between sidecar checkpoints of a recording
QUEUE_LIMIT = 4096  # packets per track (~20 s of 1.5 Mbit/s video) before a gap is marked
REORDER_WAIT = 0.3  # seconds a missing packet is waited for (NACK/RTX repair it meanwhile)
START_HOLD = 0.1  # seconds a new source's first packets are held to find the oldest
REORDER_LIMIT = 512  # packets held behind a missing one, whatever the time
WRITER_STOP_TIMEOUT = 10.0

# Markers in a track's queue; packets are (seq, ts, marker, payload) with seq >= 0.
_GAP = -1
_EPOCH = -2
_CLOSE = -3
QueueItem = tuple[int, int, int, bytes] | tuple[int, int, float, bytes]


@dataclass(frozen=True)
class RecordingSettings:
    enabled: bool = False
    directory: str = "records"


class RecordingStats:
    """What the worker reports in its heartbeat."""

    __slots__ = ("active", "bytes_written", "write_errors", "completed")

    def __init__(self) -> None:
        self.active = 0
        self.bytes_written = 0
        self.write_errors = 0
        self.completed = 0


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


class TrackRecording:
    """One publisher track's recording: the tap (event loop) and the writer (thread)."""

    def __init__(
        self,
        recorder: Recorder,
        room: str,
        track_id: str,
        kind: str,
        codec: CodecFormat,
        forwarder: TrackForwarder,
        origin: float,
    ) -> None:
        self.recorder = recorder
        self.room = room
        self.track_id = track_id
        self.kind = kind
        self.codec = codec
        self.forwarder = forwarder
        self.origin = origin
        # --- shared: appended on the loop, drained by the writer (deque ops are atomic) ---
        self.queue: collections.deque[QueueItem] = collections.deque()
        self._overflowed = False
        self._tap_epoch = -1
        self.dropped = 0
        # --- writer thread only ---
        self.info: RecordingInfo | None = None
        self.fd = -1
        self.writer: ContainerWriter | None = None
        self.failed = False
        self.done = False
        self._is_key = keyframe_test(codec.mime_type)
        self._video = kind == "video"
        self._buffer: dict[int, tuple[int, int, bytes]] = {}
        self._expected: int | None = None
        self._hole_since: float | None = None
        self._frame_ts: int | None = None
        self._frame: list[bytes] = []
        self._frame_key = False
        self._waiting_for_keyframe = self._video
        self._epoch_wall = origin
        self._epoch_first: int | None = None  # unwrapped timestamp of the epoch's first packet
        self._last_ts: int | None = None
        self._unwrapped = 0
        self._first_pts: int | None = None
        self._last_pts = -1
        self._last_duration = 0
        self._last_checkpoint = 0.0
        self._bytes_reported = 0

    # --- event loop side -------------------------------------------------------------------

    def tap(self, seq: int, ts: int, marker: int, payload: bytes, epoch: int) -> None:
        """The forwarder's per-packet hook: O(1), never blocks, never raises."""
        queue = self.queue
        if len(queue) >= QUEUE_LIMIT:
            self._overflowed = True
            self.dropped += 1
            return
        if self._overflowed:
            self._overflowed = False
            queue.append((_GAP, 0, 0, b""))
        if epoch != self._tap_epoch:
            self._tap_epoch = epoch
            queue.append((_EPOCH, epoch, time.time(), b""))
        queue.append((seq, ts, marker, payload))

    def close(self) -> None:
        if self._overflowed:
            self.queue.append((_GAP, 0, 0, b""))
        self.queue.append((_CLOSE, 0, 0, b""))

    # --- writer thread ---------------------------------------------------------------------

    def begin(self) -> None:
        """Create the file and its sidecar (the file stays empty until the first keyframe)."""
        settings = self.recorder.settings
        track_id = safe_track_id(self.track_id, self.kind)
        name, self.fd = create_media_file(
            settings.directory, self.room, track_id, self.codec.extension, int(self.origin)
        )
        self.info = RecordingInfo(
            name=name,
            room=self.room,
            track_id=track_id,
            kind=self.kind,
            codec=self.codec.mime_type,
            state=RECORDING,
            started_at=self.origin,
            worker=self.recorder.worker_id,
        )
        write_sidecar(settings.directory, self.info)
        log.info("recording %s of room %s to %s", self.kind, self.room, name)

    def drain(self, now: float) -> None:
        queue = self.queue
        while queue and not self.done:
            item = queue.popleft()
            if self.failed and item[0] != _CLOSE:
                continue
            kind = item[0]
            if kind >= 0:
                self._packet(kind, item[1], int(item[2]), item[3])
            elif kind == _EPOCH:
                self._flush_buffer()
                self._new_source(float(item[2]))
            elif kind == _GAP:
                self._flush_buffer()
                self._expected = None
                self._loss()
            else:
                self._finish()
                return
        if self.failed:
            return
        # Release after the whole batch: packets that arrived out of order within one drain
        # interval are put back in order at no cost. A new source is held a little longer,
        # so that its first packet is known before anything is written.
        if self._expected is not None or (
            self._hole_since is not None and now - self._hole_since >= START_HOLD
        ):
            self._release()
        if self._buffer:
            if self._hole_since is None:
                self._hole_since = now
            elif now - self._hole_since > REORDER_WAIT or len(self._buffer) > REORDER_LIMIT:
                self._skip_hole()
        if now - self._last_checkpoint >= CHECKPOINT_INTERVAL:
            self._checkpoint(now)

    # reordering

    def _packet(self, seq: int, ts: int, marker: int, payload: bytes) -> None:
        expected = self._expected
        if expected is not None and (seq - expected) & 0xFFFF >= 0x8000:
            return  # older than what was already written or given up: a late duplicate
        self._buffer[seq] = (ts, marker, payload)

    def _oldest_buffered(self) -> int:
        reference = self._expected
        if reference is None:  # a new source: the oldest of what arrived so far
            reference = (next(iter(self._buffer)) - 0x4000) & 0xFFFF
        return min(self._buffer, key=lambda s: (s - reference) & 0xFFFF)

    def _release(self) -> None:
        buffer = self._buffer
        if self._expected is None and buffer:
            self._expected = self._oldest_buffered()
        expected = self._expected
        while expected is not None and expected in buffer:
            ts, marker, payload = buffer.pop(expected)
            expected = (expected + 1) & 0xFFFF
            self._expected = expected
            self._in_order(ts, marker, payload)
        if not buffer:
            self._hole_since = None

    def _skip_hole(self) -> None:
        """Give up on the missing packets: continue from the oldest one held."""
        self._expected = self._oldest_buffered()
        self._hole_since = None
        self._loss()
        self._release()

    def _flush_buffer(self) -> None:
        self._release()
        while self._buffer:
            self._skip_hole()

    def _new_source(self, arrival: float) -> None:
        self._expected = None
        self._drop_frame()
        self._epoch_wall = arrival
        self._epoch_first = None
        self._last_ts = None
        if self._video:
            self._waiting_for_keyframe = True
            self._request_keyframe()

    def _loss(self) -> None:
        self._drop_frame()
        if self.info is not None:
            self.info.gaps += 1
        if self._video:
            self._waiting_for_keyframe = True
            self._request_keyframe()

    def _request_keyframe(self) -> None:
        # The forwarder rate-limits requests to the publisher and never loses one.
        self.recorder.call_on_loop(self.forwarder.request_keyframe)

    # frames

    def _drop_frame(self) -> None:
        self._frame_ts = None
        self._frame = []
        self._frame_key = False

    def _in_order(self, ts: int, marker: int, payload: bytes) -> None:
        if self._frame_ts is not None and ts != self._frame_ts:
            self._end_frame()  # the previous frame's last packet carried no marker
        if self._frame_ts is None:
            self._frame_ts = ts
        self._frame.append(payload)
        if not self._frame_key and self._is_key(payload):
            self._frame_key = True
        if marker or not self._video:  # an audio packet is a frame; its marker means talkspurt
            self._end_frame()

    def _end_frame(self) -> None:
        ts, payloads, key = self._frame_ts, self._frame, self._frame_key
        self._drop_frame()
        if ts is None or not payloads:
            return
        data = self.codec.depacketize(payloads)
        if data is None:
            self._loss()
            return
        if self._waiting_for_keyframe and not key:
            return
        self._write(data, ts, key)

    def _pts(self, ts: int) -> int:
        if self._last_ts is None:
            self._unwrapped = ts
        else:
            self._unwrapped += _signed32(ts - self._last_ts)
        self._last_ts = ts
        if self._epoch_first is None:
            self._epoch_first = self._unwrapped
        base = round((self._epoch_wall - self.origin) * self.codec.clock_rate)
        return max(base, 0) + self._unwrapped - self._epoch_first

    def _write(self, data: bytes, ts: int, key: bool) -> None:
        info = self.info
        if info is None or self.failed:
            return
        if self.writer is None:
            if not self._open(data, key):
                return
        pts = self._pts(ts)
        if pts <= self._last_pts:
            pts = self._last_pts + 1  # containers need increasing timestamps
        duration = opus_samples(data) if not self._video else 0
        writer = self.writer
        assert writer is not None
        try:
            writer.write(data, pts, duration, key)
        except WRITE_ERRORS as exc:
            self.fail(f"write failed: {exc}")
            return
        self._waiting_for_keyframe = False
        if self._first_pts is None:
            self._first_pts = pts
            info.first_frame_at = self.origin + pts / self.codec.clock_rate
        self._last_pts = pts
        self._last_duration = duration
        info.frames += 1

    def _open(self, keyframe: bytes, key: bool) -> bool:
        info = self.info
        assert info is not None
        width = height = 0
        if self._video:
            size = frame_size(self.codec.decoder, keyframe) if key else None
            if size is None:
                self._waiting_for_keyframe = True
                self._request_keyframe()
                return False
            width, height = size
            info.width, info.height = width, height
        metadata = {"title": f"{self.room} {self.kind}", "room": self.room}
        try:
            self.writer = ContainerWriter(self.fd, self.codec, width, height, metadata)
        except WRITE_ERRORS as exc:
            self.fail(f"cannot open the container: {exc}")
            return False
        return True

    # checkpoints and the end

    def _checkpoint(self, now: float) -> None:
        self._last_checkpoint = now
        info = self.info
        if info is None:
            return
        self._update_sizes(info)
        try:
            write_sidecar(self.recorder.settings.directory, info)
        except OSError as exc:
            self.fail(f"cannot write the sidecar: {exc}")

    def _update_sizes(self, info: RecordingInfo) -> None:
        if self.writer is None:
            return
        size = self.writer.size()
        self.recorder.stats.bytes_written += size - self._bytes_reported
        self._bytes_reported = size
        info.bytes = info.durable_bytes = size
        if self._first_pts is not None:
            ticks = self._last_pts - self._first_pts + self._last_duration
            info.duration = ticks / self.codec.clock_rate

    def _finish(self) -> None:
        """The publisher left: write what is complete, the trailer, and the final sidecar."""
        self.done = True
        info = self.info
        opened = False
        if not self.failed:
            self._flush_buffer()
            self._drop_frame()  # a frame without its last packet is not written
            opened = self.writer is not None
            if info is not None:
                self._update_sizes(info)
            writer, self.writer = self.writer, None
            if writer is not None:
                try:
                    writer.close()
                except WRITE_ERRORS as exc:
                    self.fail(f"cannot finish the file: {exc}")
        if info is not None and not self.failed:
            if not opened or info.frames == 0:
                info.state = FAILED
                info.error = "no media was received"
            else:
                info.state = COMPLETE
                size = os.fstat(self.fd).st_size  # with the trailer and the last pages
                self.recorder.stats.bytes_written += size - self._bytes_reported
                self._bytes_reported = size
                info.bytes = info.durable_bytes = size
            try:
                write_sidecar(self.recorder.settings.directory, info)
            except OSError as exc:
                self.fail(f"cannot write the sidecar: {exc}")
        self._release_file()
        if info is not None and self.failed and info.frames:
            self._salvage(info.name)
        if info is not None:
            log.info(
                "recording %s %s: %d frames, %.1f s, %d gaps",
                info.name,
                "failed" if self.failed else "complete",
                info.frames,
                info.duration,
                info.gaps,
            )

    def fail(self, reason: str) -> None:
        """Stop this recording for good; forwarding is not affected."""
        if self.failed:
            return
        self.failed = True
        self.recorder.stats.write_errors += 1
        self.recorder.call_on_loop(self._remove_tap)
        name = self.info.name if self.info is not None else f"{self.room} {self.kind}"
        log.error("recording %s failed: %s", name, reason)
        writer, self.writer = self.writer, None  # a failed container must never be used again
        if writer is not None:
            try:
                writer.close()
            except WRITE_ERRORS:
                pass  # the muxer cannot finish the file; the repair rebuilds it
        if self.info is not None:
            self.info.state = FAILED
            self.info.error = reason
            try:
                write_sidecar(self.recorder.settings.directory, self.info)
            except OSError:
                pass  # the disk is full or gone: the metric and the log line say so

    def _salvage(self, name: str) -> None:
        """Keep what was written before a write error (a repair, as after a crash)."""
        try:
            repair(self.recorder.settings.directory, name)
        except Exception as exc:  # noqa: BLE001 - salvage is best effort; the next start retries
            log.warning("could not salvage %s now: %s", name, exc)

    def _remove_tap(self) -> None:
        self.forwarder.remove_tap(self.tap)

    def _release_file(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # also releases the lock
            self.fd = -1


def publisher_track_ids(
    transceivers: list[RTCRtpTransceiver], kinds: Collection[str]
) -> dict[str, str]:
    """kind -> the publisher's track id (its msid), for the kinds it sends."""
    ids: dict[str, str] = {}
    for transceiver in transceivers:
        kind = transceiver.kind
        if kind in ids or kind not in kinds:
            continue
        track = transceiver.receiver.track
        ids[kind] = track.id if track is not None else kind
    return ids


class Recorder:
    """The worker's recordings: started when a publisher connects, finished when it goes."""

    def __init__(self, settings: RecordingSettings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.stats = RecordingStats()
        self.rooms: dict[str, list[TrackRecording]] = {}
        self._tracks: list[TrackRecording] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def start(self) -> None:
        """Start the writer thread; it first repairs what crashed workers left behind."""
        if not self.enabled or self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def call_on_loop(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(callback)
            except RuntimeError:
                pass  # the loop is shutting down

    # --- event loop: room lifecycle ----------------------------------------------------------

    def publisher_connected(self, room: Room, track_ids: dict[str, str]) -> None:
        """Record the tracks of a publisher that just connected: `track_ids` maps each kind
        it sends to its track id (msid)."""
        if not self.enabled or self._thread is None:
            return
        self.publisher_gone(room.name)
        origin = time.time()
        tracks = []
        for kind, track_id in track_ids.items():
            forwarder = room.forwarders.get(kind)
            if forwarder is None or forwarder.codec is None:
                continue
            codec = codec_format(forwarder.codec.mime_type)
            if codec is None:
                log.warning("room %s: %s is not recordable", room.name, forwarder.codec.describe())
                continue
            track = TrackRecording(self, room.name, track_id, kind, codec, forwarder, origin)
            tracks.append(track)
            forwarder.add_tap(track.tap)
            forwarder.request_keyframe()
        if not tracks:
            return
        self.rooms[room.name] = tracks
        with self._lock:
            self._tracks.extend(tracks)
        self._wake.set()

    def publisher_gone(self, room_name: str) -> None:
        for track in self.rooms.pop(room_name, []):
            track._remove_tap()
            track.close()
        self._wake.set()

    async def close(self) -> None:
        """Finish every recording and stop the writer thread (worker shutdown)."""
        for room_name in list(self.rooms):
            self.publisher_gone(room_name)
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        await asyncio.to_thread(thread.join, WRITER_STOP_TIMEOUT)
        if thread.is_alive():
            log.error("the recording writer did not stop within %g s", WRITER_STOP_TIMEOUT)

    # --- writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        directory = self.settings.directory
        try:
            repair_unfinished(directory)
        except Exception:
            log.exception("repairing unfinished recordings in %s failed", directory)
        while True:
            with self._lock:
                tracks = list(self._tracks)
            if not tracks and self._stopping:
                return
            now = time.monotonic()
            for track in tracks:
                self._serve(track, now)
            active = [t for t in tracks if not t.done]
            with self._lock:
                finished = [t for t in tracks if t.done]
                for track in finished:
                    self._tracks.remove(track)
            self.stats.active = sum(1 for t in active if not t.failed and t.info is not None)
            self._wake.wait(DRAIN_INTERVAL)
            self._wake.clear()

    def _serve(self, track: TrackRecording, now: float) -> None:
        try:
            if track.info is None and not track.failed:
                try:
                    track.begin()
                except OSError as exc:
                    track.fail(f"cannot create a file in {self.settings.directory}: {exc}")
            track.drain(now)
            if track.done:
                self.stats.completed += 1
        except Exception as exc:  # a bug must cost one recording, never the writer thread
            log.exception("recording %s %s crashed", track.room, track.kind)
            track.fail(f"internal error: {type(exc).__name__}: {exc}")
            track.done = True
            track._release_file()
