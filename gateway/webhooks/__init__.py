"""Signed event webhooks (WEBHOOK_URLS, WEBHOOK_SECRET, WEBHOOK_QUEUE, WEBHOOK_MAX_AGE).

Room, publisher, viewer and recording events (sources.py) are POSTed as JSON to every URL,
signed (signing.py), in order per room and URL, retried with backoff from a persistent
SQLite queue (dispatcher.py, store.py) so that a restart, even after SIGKILL, loses none.
Nothing here is on the media path: the workers never see it, and the gateway's loop only
appends to memory and to the writer thread's queue. docs/auth-and-webhooks.md has the
bodies and how to verify a signature.
"""

from __future__ import annotations

import logging
import os
import sqlite3

from aiohttp import web

from common.settings import die
from gateway.config import GatewayConfig
from gateway.http.whip_whep import API_KEY
from gateway.metrics import COUNTERS_KEY, GatewayCounters
from gateway.placement.directory import Directory
from gateway.settings import PROG
from gateway.webhooks.dispatcher import DELIVERED, Dispatcher
from gateway.webhooks.signing import sign, verify
from gateway.webhooks.sources import RecordingWatcher, SessionEvents
from gateway.webhooks.store import Store

__all__ = ["DISPATCHER_KEY", "Dispatcher", "setup_webhooks", "sign", "verify"]

log = logging.getLogger(__name__)

DISPATCHER_KEY = web.AppKey("webhooks", Dispatcher)


def _metrics(dispatcher: Dispatcher, counters: GatewayCounters) -> None:
    def observe(outcome: str, latency: float | None) -> None:
        counters.webhook_deliveries.labels(outcome).inc()
        if outcome == DELIVERED and latency is not None:
            counters.webhook_delivery_seconds.observe(latency)

    dispatcher.observe = observe
    counters.webhook_queue_depth.set_function(lambda: float(dispatcher.depth))


def setup_webhooks(app: web.Application, config: GatewayConfig, directory: Directory) -> None:
    """With WEBHOOK_URLS: open the queue (exit 2 when it cannot be), watch the sessions and
    the recordings, and deliver from app start to app cleanup."""
    webhooks = config.webhooks
    if not webhooks.urls:
        return
    store = Store(webhooks.queue)
    try:
        loaded = store.load()  # blocking, once, before the gateway serves
    except (OSError, sqlite3.Error) as exc:
        die(PROG, f"WEBHOOK_QUEUE={webhooks.queue!r} cannot be opened: {exc}")
    dispatcher = app[DISPATCHER_KEY] = Dispatcher(webhooks, store)
    counters = app.get(COUNTERS_KEY)
    if counters is not None:
        _metrics(dispatcher, counters)
    sessions = SessionEvents(dispatcher, directory, store)
    app[API_KEY].on_session_created = sessions.session_created
    directory.on_session_removed = sessions.session_removed
    record_dir = os.path.abspath(config.recording.record_dir)
    recordings = RecordingWatcher(record_dir, dispatcher, store)

    async def start(app: web.Application) -> None:
        store.start()
        dispatcher.start(loaded.deliveries)
        sessions.restore(loaded.live)
        recordings.start(loaded.recordings, loaded.meta)
        log.info("webhooks to %d URLs, queue %s", len(webhooks.urls), webhooks.queue)

    async def stop(app: web.Application) -> None:
        await recordings.stop()
        await dispatcher.stop()
        await store.close()

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
