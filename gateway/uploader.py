"""Uploads finished recordings to S3 (or MinIO, or any S3-compatible store) with minio.

The queue is RECORD_DIR itself: every recording whose sidecar (common.sidecar) says
"complete" and whose upload state is not "uploaded" is pending, so the queue survives
restarts of the gateway and of the workers with nothing else to persist. A recording left
"uploading" by a gateway that stopped mid-upload is simply uploaded again.

One upload at a time, in a thread (minio is blocking). minio splits a file larger than its
part size (5 MiB at least) into a multipart upload by itself. A failure is recorded in the
sidecar with its reason and retried with exponential backoff (RETRY_FIRST_S doubling up to
RETRY_MAX_S), forever: the file stays on disk until the object is confirmed. Only after
stat_object reports the same size is the upload "uploaded", and only then, with
DELETE_RECORDING_AFTER_UPLOAD, is the local file deleted; its sidecar stays so that the
listing keeps the object key.

Only the gateway's own RECORD_DIR is uploaded: it is shared with its local workers. A
remote worker (sfu-worker --connect tcp://...) records into its own host's RECORD_DIR.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable

import urllib3
from minio import Minio
from minio.error import S3Error

from common.sidecar import (
    COMPLETE,
    CONTENT_TYPES,
    UPLOAD_FAILED,
    UPLOADED,
    UPLOADING,
    media_name_of,
    read_sidecar,
    write_sidecar,
)
from gateway.config import GatewayConfig

log = logging.getLogger(__name__)

SCAN_INTERVAL_S = 1.0
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 300.0
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
MAX_REASON_LENGTH = 300


class SizeMismatch(Exception):
    """The object in the bucket does not have the local file's size."""


def retry_delay(attempts: int) -> float:
    """1 s after the first failure, doubling, at most 5 minutes."""
    return float(min(RETRY_FIRST_S * 2 ** max(attempts - 1, 0), RETRY_MAX_S))


def object_key(prefix: str, name: str) -> str:
    """live-webrtc-go's key: trim(prefix, "/") + "/" + name, or the name alone."""
    trimmed = prefix.strip("/")
    return f"{trimmed}/{name}" if trimmed else name


def make_client(config: GatewayConfig) -> Minio:
    """Raises ValueError for settings minio refuses."""
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        # Our own backoff retries; minio's default would spend ~6 s per refused connection.
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    upload = config.upload
    client = Minio(
        upload.s3_endpoint,
        access_key=upload.s3_access_key,
        secret_key=upload.s3_secret_key,
        secure=upload.s3_use_ssl,
        region=upload.s3_region or None,
        http_client=http,
    )
    if upload.s3_path_style is True:
        client.disable_virtual_style_endpoint()  # type: ignore[no-untyped-call]  # minio: untyped
    elif upload.s3_path_style is False:
        client.enable_virtual_style_endpoint()  # type: ignore[no-untyped-call]  # minio: untyped
    return client


def describe(exc: BaseException) -> str:
    if isinstance(exc, S3Error):
        text = f"S3 error {exc.code}: {exc.message}"
    elif isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        text = f"S3 endpoint unreachable: {exc.reason}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:MAX_REASON_LENGTH]


class Uploader:
    def __init__(
        self,
        config: GatewayConfig,
        client: Minio,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = os.path.abspath(config.recording.record_dir)
        self.client = client
        self.bucket = config.upload.s3_bucket
        self.prefix = config.upload.s3_prefix
        self.delete_after = config.upload.delete_recording_after_upload
        self.clock = clock
        # Metrics: recordings waiting (gauge); uploads done and attempts failed (counters).
        self.pending = 0
        self.uploaded = 0
        self.failed = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop scanning. An upload in flight finishes in its thread or is redone next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                due = await asyncio.to_thread(self.scan)
                for name in due:
                    await asyncio.to_thread(self.upload, name)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end uploads for the gateway's lifetime
                log.exception("upload pass failed")
            await asyncio.sleep(SCAN_INTERVAL_S)

    def scan(self) -> list[str]:
        """Names due for an upload attempt now, oldest first; updates `pending`."""
        try:
            entries = os.listdir(self.directory)
        except OSError:
            self.pending = 0
            return []
        now = self.clock()
        pending: list[tuple[float, str]] = []
        due: list[tuple[float, str]] = []
        for entry in entries:
            name = media_name_of(entry)
            if name is None:
                continue
            info = read_sidecar(self.directory, name)
            if info is None or info.state != COMPLETE or info.upload.state == UPLOADED:
                continue
            pending.append((info.started_at, name))
            if info.upload.next_attempt <= now:
                due.append((info.started_at, name))
        self.pending = len(pending)
        return [name for _, name in sorted(due)]

    def upload(self, name: str) -> bool:
        """One attempt; the outcome is written to the sidecar. True when uploaded."""
        directory = self.directory
        info = read_sidecar(directory, name)
        if info is None or info.state != COMPLETE or info.upload.state == UPLOADED:
            return False
        key = object_key(self.prefix, name)
        state = info.upload
        state.state, state.key, state.reason = UPLOADING, key, ""
        write_sidecar(directory, info)
        path = os.path.join(directory, name)
        try:
            size = _regular_file_size(path)
            extension = name.rsplit(".", 1)[1]
            result = self.client.fput_object(
                self.bucket, key, path, content_type=CONTENT_TYPES[extension]
            )
            stored = self.client.stat_object(self.bucket, key)
            if stored.size != size:
                raise SizeMismatch(f"the object has {stored.size} bytes, the file {size}")
        except Exception as exc:  # noqa: BLE001 - every failure is recorded and retried
            state.attempts += 1
            state.state, state.reason = UPLOAD_FAILED, describe(exc)
            delay = retry_delay(state.attempts)
            state.next_attempt = self.clock() + delay
            write_sidecar(directory, info)
            self.failed += 1
            log.warning(
                "upload of %s failed (attempt %d, next in %g s): %s",
                name,
                state.attempts,
                delay,
                state.reason,
            )
            return False
        state.state, state.etag, state.uploaded_at = UPLOADED, result.etag or "", self.clock()
        state.next_attempt = 0.0
        write_sidecar(directory, info)
        self.uploaded += 1
        self.pending = max(self.pending - 1, 0)
        log.info("uploaded %s to s3://%s/%s (%d bytes)", name, self.bucket, key, size)
        if self.delete_after:
            try:
                os.unlink(path)
            except OSError as exc:
                log.warning("uploaded %s but could not delete it: %s", name, exc)
            else:
                state.local_deleted = True
                write_sidecar(directory, info)
        return True


def _regular_file_size(path: str) -> int:
    """The size of a regular file that is not a symlink (never upload what a link points to)."""
    status = os.lstat(path)
    if not stat.S_ISREG(status.st_mode):
        raise OSError(f"{os.path.basename(path)} is not a regular file")
    return status.st_size
