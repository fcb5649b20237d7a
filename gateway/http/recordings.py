"""The recordings API (admin only), the uploader's lifecycle and the recording metrics.

`GET /api/records` lists RECORD_DIR: every recording described by a sidecar (common.sidecar),
plus bare .ivf/.ogg/.mkv files without one (e.g. left by live-webrtc-go), newest first;
`[]` when there is nothing (or no directory). `GET /api/records/{name}` downloads a local
file. Both need an admin credential (gateway.http.auth). A name must match the recording name
pattern (no path separators, no dot segments) or it is refused with 400 before the disk is
touched; the file is opened with O_NOFOLLOW, so a symlink planted in RECORD_DIR is never
followed, and only a regular file is served.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.settings import die
from common.sidecar import (
    COMPLETE,
    CONTENT_TYPES,
    LOCAL,
    MEDIA_EXTENSIONS,
    MEDIA_NAME,
    UPLOADING,
    RecordingInfo,
    media_name_of,
    read_sidecar,
)
from gateway.config import GatewayConfig
from gateway.http.auth import require_admin
from gateway.http.errors import HttpError
from gateway.metrics import REGISTRY_KEY, TOTALS_KEY, TrafficTotals
from gateway.settings import PROG
from gateway.uploader import Uploader, make_client

log = logging.getLogger(__name__)

UPLOADER_KEY = web.AppKey("uploader", Uploader)
DOWNLOAD_PREFIX = "/api/records/"


def _iso(timestamp: float) -> str | None:
    if not timestamp:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


def _upload_view(info: RecordingInfo, uploads_enabled: bool) -> dict[str, Any]:
    upload = info.upload
    state = upload.state
    if state == LOCAL and uploads_enabled and info.state == COMPLETE:
        state = UPLOADING  # queued: the uploader picks it up within a second
    view: dict[str, Any] = {"state": state}
    if upload.key:
        view["key"] = upload.key
    if state == "failed":
        view["reason"] = upload.reason
        view["attempts"] = upload.attempts
        view["next_attempt"] = _iso(upload.next_attempt)
    if state == "uploaded":
        view["uploaded_at"] = _iso(upload.uploaded_at)
        view["local_deleted"] = upload.local_deleted
    return view


def _entry(
    directory: str, info: RecordingInfo, uploads_enabled: bool
) -> tuple[float, dict[str, Any]]:
    path = os.path.join(directory, info.name)
    try:
        status = os.lstat(path)
        local = stat.S_ISREG(status.st_mode)
        size = status.st_size if local else info.bytes
    except OSError:
        local, size = False, info.bytes
    started = info.first_frame_at or info.started_at
    return started, {
        "name": info.name,
        "room": info.room,
        "track_id": info.track_id,
        "kind": info.kind,
        "codec": info.codec,
        "state": info.state,
        "size": size,
        "duration": round(info.duration, 3),
        "start_time": _iso(started),
        "width": info.width or None,
        "height": info.height or None,
        "frames": info.frames,
        "gaps": info.gaps,
        "repaired": info.repaired,
        "error": info.error or None,
        "local": local,
        "url": DOWNLOAD_PREFIX + info.name if local else None,
        "upload": _upload_view(info, uploads_enabled),
    }


def _bare_entry(directory: str, name: str) -> tuple[float, dict[str, Any]] | None:
    """A media file without a sidecar: what the directory alone can tell."""
    try:
        status = os.lstat(os.path.join(directory, name))
    except OSError:
        return None
    if not stat.S_ISREG(status.st_mode):
        return None
    extension = name.rsplit(".", 1)[1]
    return status.st_mtime, {
        "name": name,
        "room": None,
        "track_id": None,
        "kind": "audio" if extension == "ogg" else "video",
        "codec": None,
        "state": COMPLETE,
        "size": status.st_size,
        "duration": None,
        "start_time": _iso(status.st_mtime),
        "local": True,
        "url": DOWNLOAD_PREFIX + name,
        "upload": {"state": LOCAL},
    }


def list_recordings(directory: str, uploads_enabled: bool) -> list[dict[str, Any]]:
    try:
        entries = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    names = set(entries)
    listed: list[tuple[float, dict[str, Any]]] = []
    for entry in entries:
        name = media_name_of(entry)
        if name is not None:
            info = read_sidecar(directory, name)
            if info is not None:
                listed.append(_entry(directory, info, uploads_enabled))
        elif entry.rsplit(".", 1)[-1].lower() in MEDIA_EXTENSIONS:
            if entry + ".json" in names or not _safe_name(entry):
                continue
            bare = _bare_entry(directory, entry)
            if bare is not None:
                listed.append(bare)
    listed.sort(key=lambda item: (-item[0], item[1]["name"]))
    return [item for _, item in listed]


def _safe_name(name: str) -> bool:
    """A name we can put in a URL and open inside RECORD_DIR: no separators, no dot segments."""
    return (
        0 < len(name) <= 255
        and "/" not in name
        and "\0" not in name
        and not name.startswith(".")
        and name.rsplit(".", 1)[-1].lower() in MEDIA_EXTENSIONS
        and all(c.isalnum() or c in "_-." for c in name)
    )


class RecordingsApi:
    def __init__(self, config: GatewayConfig) -> None:
        self.directory = os.path.abspath(config.recording.record_dir)
        self.uploads_enabled = config.upload.upload_recordings

    async def index(self, request: web.Request) -> web.Response:
        require_admin(request)
        items = await asyncio.to_thread(list_recordings, self.directory, self.uploads_enabled)
        return web.json_response(items)

    async def download(self, request: web.Request) -> web.StreamResponse:
        require_admin(request)
        name = request.match_info["name"]
        if not (MEDIA_NAME.match(name) or _safe_name(name)):
            raise HttpError(400, "invalid_name", "not a recording name")
        file = await asyncio.to_thread(self._open, name)
        extension = name.rsplit(".", 1)[1].lower()
        return web.Response(
            body=file,
            content_type=CONTENT_TYPES[extension],
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    def _open(self, name: str) -> Any:
        path = os.path.join(self.directory, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR):
                raise HttpError(404, "unknown_recording", "no such recording") from None
            raise HttpError(403, "forbidden", "the recording cannot be read") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise HttpError(404, "unknown_recording", "no such recording")
        return os.fdopen(fd, "rb")


class RecordingCollector(Collector):
    """Recording metrics from the workers' heartbeats and upload metrics from the uploader."""

    def __init__(self, totals: TrafficTotals | None, uploader: Uploader | None) -> None:
        self.totals = totals
        self.uploader = uploader

    def collect(self) -> Iterable[Metric]:
        active = GaugeMetricFamily(
            "live_recordings_active", "Recordings being written, by worker", labels=["worker"]
        )
        written = CounterMetricFamily(
            "live_recording_bytes_written",
            "Bytes written to recording files since the worker started",
            labels=["worker"],
        )
        errors = CounterMetricFamily(
            "live_recording_write_errors",
            "Recordings stopped by a write error (disk full, RECORD_DIR unwritable)",
            labels=["worker"],
        )
        reports = self.totals.reports if self.totals is not None else {}
        for worker_id, report in sorted(reports.items()):
            heartbeat = report.heartbeat
            active.add_metric([worker_id], heartbeat.recordings_active)
            written.add_metric([worker_id], heartbeat.recording_bytes)
            errors.add_metric([worker_id], heartbeat.recording_write_errors)
        yield from (active, written, errors)
        uploader = self.uploader
        yield GaugeMetricFamily(
            "live_uploads_pending",
            "Finished recordings not uploaded yet",
            value=uploader.pending if uploader else 0,
        )
        yield CounterMetricFamily(
            "live_uploads", "Recordings uploaded", value=uploader.uploaded if uploader else 0
        )
        yield CounterMetricFamily(
            "live_upload_failures",
            "Upload attempts that failed (each is retried)",
            value=uploader.failed if uploader else 0,
        )


def setup_recordings(app: web.Application, config: GatewayConfig) -> None:
    """Routes, the uploader (started and stopped with the app) and the metrics."""
    api = RecordingsApi(config)
    app.router.add_get("/api/records", api.index, allow_head=False)
    app.router.add_get(DOWNLOAD_PREFIX + "{name}", api.download, allow_head=False)
    uploader: Uploader | None = None
    if config.upload.upload_recordings:
        try:
            client = make_client(config)
        except ValueError as exc:
            die(PROG, f"S3 settings refused: {exc}")
        uploader = Uploader(config, client)
        app[UPLOADER_KEY] = uploader

        async def start_uploads(app: web.Application) -> None:
            uploader.start()

        async def stop_uploads(app: web.Application) -> None:
            await uploader.stop()

        app.on_startup.append(start_uploads)
        app.on_cleanup.append(stop_uploads)
    registry = app.get(REGISTRY_KEY)
    if registry is not None:
        registry.register(RecordingCollector(app.get(TOTALS_KEY), uploader))
