"""The persistent webhook queue: one SQLite file (WEBHOOK_QUEUE) in WAL mode.

It holds the deliveries not made yet (one row per event and URL), the sessions and rooms
announced as joined/started and not yet as left/finished (so that a gateway killed with
SIGKILL announces their end when it starts again), and what was announced of each
recording. The event loop never touches the file: reads happen once, at start (`load`),
and every write is queued to one writer thread, which commits what has accumulated in one
transaction (a batch). WAL with synchronous=NORMAL: a commit survives the process being
killed; only an OS crash or power loss can lose the last ones.

A URL is stored as its SHA-256 only (a webhook URL may carry a secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    room TEXT NOT NULL,
    event TEXT NOT NULL,
    event_id TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS live (
    key TEXT PRIMARY KEY,
    room TEXT NOT NULL,
    kind TEXT NOT NULL,
    started REAL NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS recordings (
    name TEXT PRIMARY KEY,
    announced TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
MAX_BATCH = 500  # writes per transaction at most


@dataclass
class Delivery:
    """One event on its way to one URL."""

    seq: int
    target: str  # SHA-256 of the URL
    room: str
    event: str
    event_id: str
    body: bytes
    created: float  # unix time the event was made
    attempts: int = 0
    next_attempt: float = 0.0  # unix time


@dataclass(frozen=True)
class LiveEntry:
    key: str  # "session:<id>" or "room:<name>"
    room: str
    kind: str  # "publisher", "subscriber" or "room"
    started: float
    data: str


@dataclass
class Loaded:
    deliveries: list[Delivery] = field(default_factory=list)
    live: list[LiveEntry] = field(default_factory=list)
    recordings: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)


Write = Callable[[sqlite3.Connection], object]


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._writes: queue.SimpleQueue[Write | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self.write_errors = 0

    # --- start and stop -----------------------------------------------------------------------

    def load(self) -> Loaded:
        """Open (or create, mode 0600) the file and read what it holds; raises OSError or
        sqlite3.Error. Blocking: at start, before the writer runs."""
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            loaded = Loaded()
            rows = db.execute(
                "SELECT seq, target, room, event, event_id, body, created, attempts, "
                "next_attempt FROM deliveries ORDER BY seq"
            )
            loaded.deliveries = [Delivery(*row) for row in rows]
            rows = db.execute("SELECT key, room, kind, started, data FROM live ORDER BY started")
            loaded.live = [LiveEntry(*row) for row in rows]
            loaded.recordings = dict(db.execute("SELECT name, announced FROM recordings"))
            loaded.meta = dict(db.execute("SELECT key, value FROM meta"))
        except BaseException:
            db.close()
            raise
        self._db = db
        return loaded

    def start(self) -> None:
        """Start the writer thread (after `load`)."""
        self._thread = threading.Thread(target=self._run, name="webhook-queue", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Commit every queued write, then close the file."""
        if self._thread is not None:
            self._writes.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._db is not None:
            self._db.close()
            self._db = None

    async def flush(self) -> None:
        """Wait until every write queued so far is committed."""
        if self._thread is None:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def mark(_db: sqlite3.Connection) -> None:
            loop.call_soon_threadsafe(_resolve, done)

        self._writes.put(mark)
        await done

    # --- writes (queued; the caller never waits) -------------------------------------------

    def insert(self, deliveries: list[Delivery]) -> None:
        rows = [
            (d.seq, d.target, d.room, d.event, d.event_id, d.body, d.created, d.attempts, 0.0)
            for d in deliveries
        ]
        self._writes.put(
            lambda db: db.executemany(
                "INSERT OR REPLACE INTO deliveries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
        )

    def delete(self, seq: int) -> None:
        self._writes.put(lambda db: db.execute("DELETE FROM deliveries WHERE seq = ?", (seq,)))

    def retry_at(self, seq: int, attempts: int, next_attempt: float) -> None:
        self._writes.put(
            lambda db: db.execute(
                "UPDATE deliveries SET attempts = ?, next_attempt = ? WHERE seq = ?",
                (attempts, next_attempt, seq),
            )
        )

    def live_add(self, entry: LiveEntry) -> None:
        row = (entry.key, entry.room, entry.kind, entry.started, entry.data)
        self._writes.put(
            lambda db: db.execute("INSERT OR REPLACE INTO live VALUES (?, ?, ?, ?, ?)", row)
        )

    def live_remove(self, key: str) -> None:
        self._writes.put(lambda db: db.execute("DELETE FROM live WHERE key = ?", (key,)))

    def set_recordings(self, announced: dict[str, str]) -> None:
        rows = list(announced.items())
        self._writes.put(
            lambda db: db.executemany("INSERT OR REPLACE INTO recordings VALUES (?, ?)", rows)
        )

    def set_meta(self, key: str, value: str) -> None:
        self._writes.put(
            lambda db: db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        )

    # --- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        db = self._db
        assert db is not None
        stop = False
        while not stop:
            batch: list[Write] = []
            item = self._writes.get()
            while True:
                if item is None:
                    stop = True
                    break
                batch.append(item)
                if len(batch) >= MAX_BATCH:
                    break
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
            self._commit(db, batch)

    def _commit(self, db: sqlite3.Connection, batch: list[Write]) -> None:
        try:
            db.execute("BEGIN")
            for write in batch:
                write(db)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.write_errors += 1
            log.error("webhook queue %s: write failed: %s", self.path, exc)
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            # The markers of flush() must still fire, even when the writes failed.
            for write in batch:
                if getattr(write, "__name__", "") == "mark":
                    write(db)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
