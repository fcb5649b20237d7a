"""Where webhook events come from: the sessions the gateway creates and removes, and the
recording sidecars in RECORD_DIR.

Sessions (`SessionEvents`):

* `publisher_joined` / `viewer_joined`: the gateway answered the session's WHIP/WHEP POST
  with 201 (the offer was accepted; the client may still fail to connect, which then shows
  as a `*_left` with `connected: false`). The first in a room is preceded by `room_started`.
* `publisher_left` / `viewer_left`: the session left the directory, whatever the reason
  (DELETE, ICE or DTLS failure, connect timeout, room closed, its worker died, the gateway
  stopping). `room_finished` follows when the room's last session is gone.
* A gateway killed with SIGKILL cannot say so: the sessions and rooms it had announced are
  kept in the store, and the next start announces their end with `reason: gateway_restart`.

Recordings (`RecordingWatcher`), from the sidecars (common/sidecar.py) every SCAN_INTERVAL_S,
in a thread, re-reading only sidecars whose size or mtime changed:

* `recording_finished`: a recording became `complete`;
* `recording_failed`: a recording became `failed` (a write error; what was written is kept);
* `recording_uploaded`: its upload state became `uploaded` (gateway/uploader.py).

What was announced of each recording is stored, so a restart neither repeats nor misses
one; the first start with webhooks announces nothing for the recordings already there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from common.sidecar import COMPLETE, FAILED, UPLOADED, media_name_of, read_sidecar
from gateway.placement.directory import SessionDirectory, SessionEntry
from gateway.webhooks.dispatcher import Dispatcher
from gateway.webhooks.store import LiveEntry, Store

log = logging.getLogger(__name__)

SCAN_INTERVAL_S = 2.0
SHORT_ID = 8  # the session id as the logs show it; the full id is the session URL's secret
BASELINE = "recordings_baseline"
FINISHED, FAILED_STAGE, UPLOADED_STAGE = "finished", "failed", "uploaded"


def public_session_id(session_id: str) -> str:
    return session_id[:SHORT_ID]


@dataclass
class _Joined:
    room: str
    kind: str
    started: float  # unix time


class SessionEvents:
    def __init__(
        self,
        dispatcher: Dispatcher,
        directory: SessionDirectory,
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dispatcher = dispatcher
        self.directory = directory
        self.store = store
        self.clock = clock
        self._sessions: dict[str, _Joined] = {}  # session id -> what was announced
        self._rooms: dict[str, float] = {}  # room -> unix time of its room_started

    def restore(self, live: list[LiveEntry]) -> None:
        """End what a previous run announced and never ended (it was killed): sessions
        first, then their rooms."""
        now = self.clock()
        entries = sorted(live, key=lambda e: (e.kind == "room", e.started))
        for entry in entries:
            self.store.live_remove(entry.key)
            duration = round(max(now - entry.started, 0.0), 3)
            if entry.kind == "room":
                details: dict[str, Any] = {"duration": duration, "reason": "gateway_restart"}
                self.dispatcher.emit("room_finished", entry.room, details)
                continue
            event = "publisher_left" if entry.kind == "publisher" else "viewer_left"
            details = json.loads(entry.data or "{}")
            details.update({"duration": duration, "reason": "gateway_restart"})
            self.dispatcher.emit(event, entry.room, details)

    def session_created(self, session: SessionEntry) -> None:
        """Api.on_session_created: the 201 of `session` is being sent."""
        now = self.clock()
        room = session.room
        if room not in self._rooms:
            self._rooms[room] = now
            self.store.live_add(LiveEntry("room:" + room, room, "room", now, "{}"))
            self.dispatcher.emit("room_started", room, {})
        kind = session.kind
        self._sessions[session.session_id] = _Joined(room, kind, now)
        details = {
            "session_id": public_session_id(session.session_id),
            "worker": session.worker_id,
        }
        key = "session:" + session.session_id[:SHORT_ID]
        self.store.live_add(LiveEntry(key, room, kind, now, json.dumps(details)))
        event = "publisher_joined" if kind == "publisher" else "viewer_joined"
        self.dispatcher.emit(event, room, {**details, **self._counts(room)})

    def session_removed(self, session: SessionEntry) -> None:
        """Directory.on_session_removed."""
        now = self.clock()
        joined = self._sessions.pop(session.session_id, None)
        if joined is not None:
            self.store.live_remove("session:" + session.session_id[:SHORT_ID])
            event = "publisher_left" if joined.kind == "publisher" else "viewer_left"
            details = {
                "session_id": public_session_id(session.session_id),
                "worker": session.worker_id,
                "connected": session.connected,
                "duration": round(max(now - joined.started, 0.0), 3),
                **self._counts(session.room),
            }
            self.dispatcher.emit(event, session.room, details)
        room = session.room
        if room in self._rooms and room not in self.directory.rooms:
            started = self._rooms.pop(room)
            self.store.live_remove("room:" + room)
            duration = round(max(now - started, 0.0), 3)
            self.dispatcher.emit("room_finished", room, {"duration": duration})

    def _counts(self, room: str) -> dict[str, Any]:
        entry = self.directory.rooms.get(room)
        if entry is None:
            return {"has_publisher": False, "viewers": 0}
        return {"has_publisher": entry.publisher is not None, "viewers": len(entry.subscribers)}


def _iso(timestamp: float) -> str | None:
    if not timestamp:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


class RecordingWatcher:
    def __init__(self, record_dir: str, dispatcher: Dispatcher, store: Store) -> None:
        self.directory = record_dir
        self.dispatcher = dispatcher
        self.store = store
        self._announced: dict[str, set[str]] = {}
        self._seen: dict[str, tuple[int, int, int]] = {}  # sidecar -> (inode, size, mtime)
        self._baseline = False
        self._task: asyncio.Task[None] | None = None

    def start(self, announced: dict[str, str], meta: dict[str, str]) -> None:
        self._announced = {
            name: set(stages.split(",")) - {""} for name, stages in announced.items()
        }
        self._baseline = meta.get(BASELINE) == "1"
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                found = await asyncio.to_thread(self.scan)
                self._announce(found)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not end the watcher for the gateway's lifetime
                log.exception("recording scan for webhooks failed")
            await asyncio.sleep(SCAN_INTERVAL_S)

    def scan(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(stage, room, details) of every recording whose state moved on, oldest first.
        Runs in a thread: reads the directory and the sidecars that changed."""
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            return []
        found: list[tuple[float, str, str, dict[str, Any]]] = []
        for entry in entries:
            name = media_name_of(entry.name)
            if name is None:
                continue
            try:
                status = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            stamp = (status.st_ino, status.st_size, status.st_mtime_ns)
            if self._seen.get(entry.name) == stamp:
                continue
            info = read_sidecar(self.directory, name)
            if info is None:
                continue
            self._seen[entry.name] = stamp
            stages: list[str] = []
            if info.state == COMPLETE:
                stages.append(FINISHED)
            elif info.state == FAILED:
                stages.append(FAILED_STAGE)
            if info.upload.state == UPLOADED:
                stages.append(UPLOADED_STAGE)
            details: dict[str, Any] = {
                "name": info.name,
                "track_id": info.track_id,
                "kind": info.kind,
                "codec": info.codec,
                "duration": round(info.duration, 3),
                "size": info.bytes,
                "start_time": _iso(info.first_frame_at or info.started_at),
                "worker": info.worker,
            }
            for stage in stages:
                extra: dict[str, Any] = {}
                if stage == FAILED_STAGE:
                    extra = {"error": info.error}
                elif stage == UPLOADED_STAGE:
                    extra = {"key": info.upload.key, "local_deleted": info.upload.local_deleted}
                found.append((info.started_at, stage, info.room, {**details, **extra}))
        found.sort(key=lambda item: item[0])
        return [(stage, room, details) for _, stage, room, details in found]

    def _announce(self, found: list[tuple[str, str, dict[str, Any]]]) -> None:
        changed: dict[str, str] = {}
        for stage, room, details in found:
            name = details["name"]
            announced = self._announced.setdefault(name, set())
            if stage in announced:
                continue
            if self._baseline and stage == UPLOADED_STAGE and FINISHED not in announced:
                # A recording is finished before it is uploaded, even when one scan saw both.
                self.dispatcher.emit("recording_finished", room, details)
            announced.update((stage, FINISHED) if stage == UPLOADED_STAGE else (stage,))
            changed[name] = ",".join(sorted(announced))
            if self._baseline:  # the first start: what is already there is not news
                self.dispatcher.emit("recording_" + stage, room, details)
        if changed:
            self.store.set_recordings(changed)
        if not self._baseline:
            self._baseline = True
            self.store.set_meta(BASELINE, "1")
