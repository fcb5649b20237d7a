"""Webhook delivery: each event to every WEBHOOK_URLS entry, in order per room and URL.

An event becomes one delivery per URL, queued in memory and in the persistent store
(store.py) in the same turn of the loop. Each (URL, room) pair is a *lane*: one task POSTs
its head, and only a 2xx moves on to the next event, so a receiver sees a room's events in
the order they happened. A failure (any other status, a timeout, a connection error) is
retried after 1 s, doubling up to RETRY_MAX_S, until the event is older than
WEBHOOK_MAX_AGE: then it is dropped (`expired`) and the lane goes on. At most
CONCURRENT_PER_URL requests go to one URL at a time. Delivery is at least once: an event
whose 2xx came just before a crash is sent again, with the same `Live-Sfu-Delivery` id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp

from gateway.config import WebhookConfig
from gateway.webhooks.signing import DELIVERY_HEADER, EVENT_HEADER, HEADER, sign
from gateway.webhooks.store import Delivery, Store

log = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 60.0
REQUEST_TIMEOUT_S = 10.0
CONCURRENT_PER_URL = 8
MAX_QUEUED = 100_000  # deliveries kept at most; newer events are dropped beyond it
STOP_GRACE_S = 2.0  # a stop lets the lanes deliver for this long before it cancels them
USER_AGENT = "live-sfu-webhooks"

DELIVERED, FAILED, EXPIRED, DROPPED = "delivered", "failed", "expired", "dropped"


def retry_delay(attempts: int) -> float:
    """After the n-th failed attempt: 1, 2, 4 … 60 s, plus up to 10 % of jitter."""
    base = min(RETRY_FIRST_S * 2 ** max(attempts - 1, 0), RETRY_MAX_S)
    return float(base * random.uniform(1.0, 1.1))


def url_key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def iso_now(now: float) -> str:
    return (
        datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _ignore(_outcome: str, _latency: float | None) -> None:
    return None


class Dispatcher:
    def __init__(
        self,
        config: WebhookConfig,
        store: Store,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret = config.secret
        self.max_age = config.max_age
        self.urls = {url_key(url): url for url in config.urls}
        self.store = store
        self.clock = clock
        self._seq = 0
        self._depth = 0
        self._lanes: dict[tuple[str, str], deque[Delivery]] = {}
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._waiting: set[tuple[str, str]] = set()  # lanes sleeping until a retry
        self._limits = {key: asyncio.Semaphore(CONCURRENT_PER_URL) for key in self.urls}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._last_failure_log = 0.0
        # Metrics: (outcome, seconds from the event to its delivery or None).
        self.observe: Callable[[str, float | None], None] = _ignore

    @property
    def depth(self) -> int:
        """Deliveries waiting, over every lane."""
        return self._depth

    def start(self, pending: list[Delivery]) -> None:
        """Take the deliveries a previous run left (in order), and start delivering."""
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        )
        stale = 0
        for delivery in pending:
            self._seq = max(self._seq, delivery.seq)
            if delivery.target not in self.urls:
                stale += 1
                self.store.delete(delivery.seq)
                continue
            delivery.next_attempt = 0.0  # a start tries again at once (attempts are kept)
            self._enqueue(delivery)
        if stale:
            log.warning("dropped %d queued webhook events for URLs no longer configured", stale)
        if pending:
            log.info("%d webhook deliveries left by the previous run", len(pending) - stale)

    def emit(self, event: str, room: str, details: dict[str, Any] | None = None) -> str:
        """Queue `event` of `room` for every URL; returns its id. Never waits."""
        now = self.clock()
        event_id = "evt_" + secrets.token_hex(12)
        payload: dict[str, Any] = {
            "id": event_id,
            "event": event,
            "created_at": iso_now(now),
            "room": room,
        }
        payload.update(details or {})
        body = json.dumps(payload, separators=(",", ":")).encode()
        if self._closed:
            log.warning("webhook event %s of room %s after the stop: not sent", event, room)
            return event_id
        deliveries: list[Delivery] = []
        for target in self.urls:
            if self.depth >= MAX_QUEUED:
                self.observe(DROPPED, None)
                log.warning(
                    "webhook queue full (%d): %s of room %s dropped", MAX_QUEUED, event, room
                )
                continue
            self._seq += 1
            delivery = Delivery(self._seq, target, room, event, event_id, body, now)
            deliveries.append(delivery)
            self._enqueue(delivery)
        if deliveries:
            self.store.insert(deliveries)
        return event_id

    def _enqueue(self, delivery: Delivery) -> None:
        key = (delivery.target, delivery.room)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
        lane.append(delivery)
        self._depth += 1
        if key not in self._tasks:
            task = asyncio.get_running_loop().create_task(self._run_lane(key, lane))
            self._tasks[key] = task

    async def _run_lane(self, key: tuple[str, str], lane: deque[Delivery]) -> None:
        try:
            while lane:
                delivery = lane[0]
                now = self.clock()
                if now - delivery.created > self.max_age:
                    lane.popleft()
                    self._depth -= 1
                    self.store.delete(delivery.seq)
                    self.observe(EXPIRED, None)
                    log.warning(
                        "webhook %s of room %s given up after %d attempts (WEBHOOK_MAX_AGE)",
                        delivery.event,
                        delivery.room,
                        delivery.attempts,
                    )
                    continue
                if delivery.next_attempt > now:
                    if self._closed:
                        return  # stopping: the store keeps it for the next start
                    self._waiting.add(key)
                    try:
                        await asyncio.sleep(delivery.next_attempt - now)
                    finally:
                        self._waiting.discard(key)
                    continue
                async with self._limits[delivery.target]:
                    ok = await self._post(delivery)
                if ok:
                    lane.popleft()
                    self._depth -= 1
                    self.store.delete(delivery.seq)
                    self.observe(DELIVERED, max(self.clock() - delivery.created, 0.0))
                else:
                    delivery.attempts += 1
                    delivery.next_attempt = self.clock() + retry_delay(delivery.attempts)
                    self.store.retry_at(delivery.seq, delivery.attempts, delivery.next_attempt)
                    self.observe(FAILED, None)
        finally:
            # No await between the empty check above and here: nothing was appended since.
            if not lane:
                self._lanes.pop(key, None)
            self._tasks.pop(key, None)

    async def _post(self, delivery: Delivery) -> bool:
        session = self._session
        if session is None:
            return False
        url = self.urls[delivery.target]
        headers = {
            "Content-Type": "application/json",
            HEADER: sign(self.secret, delivery.body, int(self.clock())),
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: delivery.event_id,
        }
        try:
            async with session.post(
                url, data=delivery.body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._log_failure(delivery, type(exc).__name__)
            return False
        except Exception:  # a bug must not stop the lane for good: retried like a failure
            log.exception("webhook %s of room %s: unexpected error", delivery.event, delivery.room)
            return False
        if 200 <= status < 300:
            return True
        self._log_failure(delivery, f"status {status}")
        return False

    def _log_failure(self, delivery: Delivery, why: str) -> None:
        now = time.monotonic()
        level = logging.WARNING if now - self._last_failure_log > 10.0 else logging.DEBUG
        if level == logging.WARNING:
            self._last_failure_log = now
        # The URL is not logged (it may carry a secret); its key's prefix tells which one.
        log.log(
            level,
            "webhook %s of room %s to URL %s… failed (%s, attempt %d); retried",
            delivery.event,
            delivery.room,
            delivery.target[:8],
            why,
            delivery.attempts + 1,
        )

    async def stop(self) -> None:
        """Let the lanes deliver for up to STOP_GRACE_S (a lane waiting to retry stops at
        once), then stop; what is left stays in the store for the next start."""
        self._closed = True
        for key in list(self._waiting):
            self._tasks[key].cancel()  # nothing in flight: it stays queued
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE_S)
        for task in list(self._tasks.values()):
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None
