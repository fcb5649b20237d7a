"""The recording sidecar: the contract between the worker that records and the gateway that
lists and uploads.

Every recording `NAME.EXT` in RECORD_DIR has a sidecar `NAME.EXT.json` next to it. The worker
writes it while recording (a checkpoint about once a second) and when the recording ends; the
gateway then owns it and writes the upload state into it. The sidecar is what survives a
crash: `durable_bytes` is how much of the media file was complete container data at the last
checkpoint, and a sidecar still in state "recording" whose media file nobody holds locked
belongs to a crashed worker and is repaired by the next worker that starts.

Sidecars are replaced atomically (write a temporary file, then rename), so a reader sees the
old or the new content, never a torn one. After an upload with DELETE_RECORDING_AFTER_UPLOAD
the media file is gone but the sidecar stays, so the listing keeps the object key.
"""

from __future__ import annotations

import os
import re

import msgspec

SIDECAR_SUFFIX = ".json"
# A recording's file name: {room}_{trackID}_{unixTimestamp}.{ext}. Rooms are [A-Za-z0-9_-]
# already; track ids are reduced to the same alphabet before they get here.
MEDIA_NAME = re.compile(
    r"^[A-Za-z0-9_-]{1,64}_[A-Za-z0-9_-]{1,64}_[0-9]{1,12}(-[0-9]{1,3})?\.(ivf|ogg|mkv)\Z"
)
MEDIA_EXTENSIONS = ("ivf", "ogg", "mkv")
CONTENT_TYPES = {"ivf": "video/x-ivf", "ogg": "audio/ogg", "mkv": "video/x-matroska"}

# Recording states.
RECORDING = "recording"  # being written (or its worker crashed: repaired on the next start)
COMPLETE = "complete"  # closed and valid; ready for upload
FAILED = "failed"  # could not be written (see `error`); whatever is valid was kept

# Upload states.
LOCAL = "local"  # not uploaded (uploads off, or the recording is not complete)
UPLOADING = "uploading"  # queued or in progress
UPLOADED = "uploaded"  # the object is in the bucket with the same size
UPLOAD_FAILED = "failed"  # the last attempt failed (`reason`); retried at `next_attempt`


class UploadState(msgspec.Struct, forbid_unknown_fields=False):
    state: str = LOCAL
    key: str = ""
    reason: str = ""
    attempts: int = 0
    next_attempt: float = 0.0  # unix time of the next try after a failure
    uploaded_at: float = 0.0  # unix time
    etag: str = ""
    local_deleted: bool = False  # DELETE_RECORDING_AFTER_UPLOAD removed the media file


class RecordingInfo(msgspec.Struct, forbid_unknown_fields=False):
    name: str  # media file name, relative to RECORD_DIR
    room: str
    track_id: str
    kind: str  # "audio" | "video"
    codec: str  # lower-case MIME type, e.g. "video/vp8"
    state: str = RECORDING
    started_at: float = 0.0  # unix time of the room's recording origin (timestamp 0)
    first_frame_at: float = 0.0  # unix time of the first frame written
    duration: float = 0.0  # seconds of media written (at the last checkpoint)
    frames: int = 0
    bytes: int = 0  # media file size
    durable_bytes: int = 0  # file prefix that is complete container data
    width: int = 0
    height: int = 0
    gaps: int = 0  # times frames were lost (network loss or the writer falling behind)
    error: str = ""
    repaired: bool = False  # rebuilt after a crash or a write error
    worker: str = ""
    upload: UploadState = msgspec.field(default_factory=UploadState)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(RecordingInfo)


def sidecar_name(media_name: str) -> str:
    return media_name + SIDECAR_SUFFIX


def media_name_of(sidecar: str) -> str | None:
    """The media file a sidecar describes, or None when the name is not one of ours."""
    if not sidecar.endswith(SIDECAR_SUFFIX):
        return None
    name = sidecar[: -len(SIDECAR_SUFFIX)]
    return name if MEDIA_NAME.match(name) else None


def read_sidecar(directory: str, media_name: str) -> RecordingInfo | None:
    """The sidecar of `media_name`, or None when it is missing or unreadable."""
    try:
        with open(
            os.path.join(directory, sidecar_name(media_name)),
            "rb",
            opener=_nofollow_opener,
        ) as file:
            data = file.read(1 << 20)
        return _decoder.decode(data)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def write_sidecar(directory: str, info: RecordingInfo) -> None:
    """Replace the sidecar of `info.name` atomically; raises OSError (disk full...)."""
    final = os.path.join(directory, sidecar_name(info.name))
    temporary = os.path.join(directory, f".{sidecar_name(info.name)}.tmp")
    data = _encoder.encode(info)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)
    os.replace(temporary, final)


def _nofollow_opener(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)
