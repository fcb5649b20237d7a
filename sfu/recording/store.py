"""Recording files on disk: creation under a lock, the PyAV container, crash repair.

A media file is created with O_EXCL|O_NOFOLLOW and flock()ed for as long as it is being
written, so another worker sharing RECORD_DIR can tell a live recording from one whose worker
died. The container is written through that same descriptor with FFmpeg's `flush_packets`,
so everything the muxer has emitted is in the kernel when `mux()` returns; the muxers are told
to emit at least every half second (Ogg pages, Matroska clusters; IVF writes every frame).
A SIGKILLed worker therefore leaves a file whose first `durable_bytes` (from the last
checkpoint in the sidecar) are complete container data. Repair truncates there and remuxes
with PyAV, which also rewrites the headers a crash left unfinished (IVF frame count,
Matroska duration and cues, Ogg end of stream). Power loss is not covered: nothing is fsynced.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from fractions import Fraction
from typing import Any

import av

from common.sidecar import (
    COMPLETE,
    FAILED,
    RECORDING,
    RecordingInfo,
    media_name_of,
    read_sidecar,
    write_sidecar,
)
from sfu.recording.codecs import CodecFormat

log = logging.getLogger(__name__)

# The muxers emit a unit (Ogg page, Matroska cluster) at least this often.
EMIT_INTERVAL_MS = 500
_CONTAINER_OPTIONS = {
    "ogg": {"flush_packets": "1", "page_duration": str(EMIT_INTERVAL_MS * 1000)},
    "matroska": {"flush_packets": "1", "cluster_time_limit": str(EMIT_INTERVAL_MS)},
    "ivf": {"flush_packets": "1"},
}
_TRACK_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")
MAX_NAME_ATTEMPTS = 100

# What PyAV raises for an FFmpeg error (av.error.FFmpegError subclasses OSError for I/O).
WRITE_ERRORS: tuple[type[BaseException], ...] = (OSError, av.FFmpegError, ValueError)


class LockedElsewhere(Exception):
    """Another process (or file description) holds the recording's lock: it is live."""


def safe_track_id(track_id: str, fallback: str) -> str:
    """Reduce a publisher's track id (e.g. Firefox's "{uuid}") to [A-Za-z0-9_-], ≤ 64."""
    cleaned = _TRACK_ID_CHARS.sub("", track_id)[:64]
    return cleaned or fallback


def create_media_file(
    directory: str, room: str, track_id: str, extension: str, timestamp: int
) -> tuple[str, int]:
    """Create and lock `{room}_{track}_{timestamp}.{ext}` (a -N suffix on a name clash).

    Returns (name, descriptor). Raises OSError when the directory cannot be written.
    """
    os.makedirs(directory, mode=0o755, exist_ok=True)
    base = f"{room}_{track_id}_{timestamp}"
    for attempt in range(MAX_NAME_ATTEMPTS):
        name = f"{base}.{extension}" if attempt == 0 else f"{base}-{attempt}.{extension}"
        try:
            fd = os.open(
                os.path.join(directory, name),
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o644,
            )
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new file: nobody else has it
        return name, fd
    raise FileExistsError(f"{base}.{extension} and {MAX_NAME_ATTEMPTS - 1} variants exist")


class ContainerWriter:
    """One track's container, written through an already-open, locked descriptor."""

    def __init__(
        self, fd: int, codec: CodecFormat, width: int, height: int, metadata: dict[str, str]
    ) -> None:
        self.fd = fd
        self.codec = codec
        self.time_base = Fraction(1, codec.clock_rate)
        # buffering=0: every write FFmpeg's flush makes goes straight to the kernel.
        self.file = open(fd, "wb", buffering=0, closefd=False)
        options = _CONTAINER_OPTIONS[codec.container]
        self.container: Any = av.open(self.file, "w", format=codec.container, options=options)
        self.container.metadata.update(metadata)
        self.stream: Any
        if codec.extension == "ogg":
            # An encoder context (never fed frames) makes PyAV build the OpusHead header that
            # the Ogg muxer requires: 2 channels, 48 kHz, the standard pre-skip.
            self.stream = self.container.add_stream(codec.stream_codec, rate=codec.clock_rate)
        else:
            self.stream = self.container.add_mux_stream(
                codec.stream_codec, width=width, height=height
            )
        self.stream.time_base = self.time_base

    def write(self, data: bytes, pts: int, duration: int, keyframe: bool) -> None:
        packet = av.Packet(data)
        packet.stream = self.stream
        packet.time_base = self.time_base
        packet.pts = packet.dts = pts
        if duration:
            packet.duration = duration
        packet.is_keyframe = keyframe
        self.container.mux(packet)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        """Write the trailer; raises what the muxer raises (the descriptor stays open)."""
        try:
            self.container.close()
        finally:
            self.file.close()


def frame_size(decoder: str, keyframe: bytes) -> tuple[int, int] | None:
    """Decode one keyframe to learn the picture size (IVF and Matroska headers need it)."""
    try:
        context: Any = av.CodecContext.create(decoder, "r")
        frames = list(context.decode(av.Packet(keyframe)))
        frames += list(context.decode(None))
    except (av.FFmpegError, ValueError):
        return None
    for frame in frames:
        if frame.width and frame.height:
            return int(frame.width), int(frame.height)
    return None


# --- repair ---------------------------------------------------------------------------------


def remux(source: str, target: str, container: str) -> tuple[int, float]:
    """Copy every readable packet of `source` into a new `target`: (packets, seconds)."""
    packets = 0
    first: float | None = None
    last = 0.0
    with av.open(source) as src:
        stream = src.streams[0]
        with av.open(target, "w", format=container) as out:
            out_stream = out.add_stream_from_template(stream, opaque=True)
            try:
                for packet in src.demux(stream):
                    if packet.pts is None or packet.dts is None or packet.size == 0:
                        continue  # the demuxer's end-of-stream packet
                    start = float(packet.pts * packet.time_base)
                    end = start + float((packet.duration or 0) * packet.time_base)
                    packet.stream = out_stream
                    out.mux(packet)
                    packets += 1
                    first = start if first is None else min(first, start)
                    last = max(last, end, start)
            except av.FFmpegError as exc:
                # A damaged tail: keep what came before it.
                log.warning("repair of %s stopped at packet %d: %s", source, packets, exc)
    return packets, (last - first) if first is not None else 0.0


def needs_repair(info: RecordingInfo) -> bool:
    return info.state == RECORDING or (info.state == FAILED and not info.repaired)


def repair(directory: str, name: str) -> RecordingInfo | None:
    """Rebuild a recording whose writer died. None when it is live elsewhere or not ours.

    Raises OSError when the directory cannot be written (the recording stays as it was and
    the next start tries again).
    """
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise LockedElsewhere(name) from None
        # Read again under the lock: another worker may have repaired it meanwhile.
        info = read_sidecar(directory, name)
        if info is None or not needs_repair(info):
            return None
        original_error = info.error
        info.repaired = True
        kept = min(info.durable_bytes, os.fstat(fd).st_size) if fd >= 0 else 0
        packets, duration = 0, 0.0
        if kept > 0 and info.frames > 0:
            os.ftruncate(fd, kept)
            container = {"ivf": "ivf", "ogg": "ogg", "mkv": "matroska"}[name.rsplit(".", 1)[1]]
            temporary = os.path.join(directory, f".{name}.repair")
            try:
                packets, duration = remux(path, temporary, container)
                if packets:
                    os.replace(temporary, path)
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
        if packets:
            info.state = COMPLETE
            info.frames = packets
            info.duration = duration
            info.bytes = info.durable_bytes = os.stat(path).st_size
            info.error = original_error
        else:
            info.state = FAILED
            info.error = original_error or "the worker stopped before any media was flushed"
            info.bytes = kept
        write_sidecar(directory, info)
        return info
    finally:
        if fd >= 0:
            os.close(fd)


def repair_unfinished(directory: str) -> list[RecordingInfo]:
    """Repair every recording in `directory` whose writer is gone; returns what was repaired."""
    repaired: list[RecordingInfo] = []
    try:
        entries = os.listdir(directory)
    except OSError:
        return repaired
    for entry in sorted(entries):
        name = media_name_of(entry)
        if name is None:
            continue
        info = read_sidecar(directory, name)
        if info is None or not needs_repair(info):
            continue
        try:
            result = repair(directory, name)
        except LockedElsewhere:
            continue
        except (OSError, av.FFmpegError) as exc:
            log.error("cannot repair recording %s: %s", name, exc)
            continue
        if result is not None:
            log.info("repaired recording %s: %s, %.1f s", name, result.state, result.duration)
            repaired.append(result)
    return repaired
