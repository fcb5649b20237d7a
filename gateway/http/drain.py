"""Draining: a stopping gateway answers every request it started; request bodies are read with
a size limit and a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import HttpVersion10, web

from gateway.http.errors import Handler, HttpError, json_error, unavailable

BODY_READ_TIMEOUT_S = 15.0  # a slow client must not hold a handler forever
# Once the gateway stops, a body still on its way gets this long before the 503.
DRAIN_BODY_GRACE_S = 2.0
READ_CHUNK = 64 * 1024


class Drain:
    """The requests in flight, so that a stopping gateway answers every request it started.

    A stop has two phases. `start` (draining): new sessions are refused with 503, /readyz
    says 503, every other request is served as usual, so live sessions can trickle and end
    (DELETE) by themselves for up to DRAIN_TIMEOUT. `close` (closing, the listener is about
    to go): a body still being received gets DRAIN_BODY_GRACE_S more, then a 503; everything
    else runs to its answer (a worker's included, bounded by IPC_TIMEOUT).
    """

    def __init__(self) -> None:
        self.draining = False
        self.closing = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._body_reads: set[asyncio.Timeout] = set()
        # Called once each: at `start` (WHEP events send `reconnect`) and at `close` (they end
        # their streams, which would otherwise count as requests in flight).
        self.on_start: list[Callable[[], None]] = []
        self.on_close: list[Callable[[], None]] = []

    def start(self) -> None:
        first = not self.draining
        self.draining = True
        if first:
            for callback in self.on_start:
                callback()

    def close(self) -> None:
        if not self.draining:
            self.start()
        first = not self.closing
        self.draining = self.closing = True
        for timeout in self._body_reads:
            self._shorten(timeout)
        if first:
            for callback in self.on_close:
                callback()

    async def wait_idle(self, timeout: float) -> bool:
        """True once no request is in flight; False if `timeout` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _shorten(self, timeout: asyncio.Timeout) -> None:
        deadline = asyncio.get_running_loop().time() + DRAIN_BODY_GRACE_S
        when = timeout.when()
        timeout.reschedule(deadline if when is None else min(when, deadline))

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    def watch_body(self, timeout: asyncio.Timeout) -> None:
        self._body_reads.add(timeout)
        if self.closing:
            self._shorten(timeout)

    def unwatch_body(self, timeout: asyncio.Timeout) -> None:
        self._body_reads.discard(timeout)


DRAIN_KEY = web.AppKey("drain", Drain)


@web.middleware
async def drain_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.version < HttpVersion10:
        # aiohttp would answer an HTTP/0.9 request line; nothing of ours speaks it.
        return json_error(505, "http_version_not_supported", "HTTP/1.0 or HTTP/1.1 required")
    drain = request.app[DRAIN_KEY]
    drain.enter()
    try:
        return await handler(request)
    finally:
        drain.leave()


async def read_bounded_body(request: web.Request, limit: int) -> str:
    """The body as text; 413 past `limit` (announced or actual), 408 if it is too slow, 503
    if it is still arriving when the gateway stops."""
    too_large = HttpError(413, "body_too_large", f"request body too large (limit {limit} bytes)")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    drain = request.app.get(DRAIN_KEY)
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_S) as timeout:
            if drain is not None:
                drain.watch_body(timeout)
            try:
                async for chunk in request.content.iter_chunked(READ_CHUNK):
                    body += chunk
                    if len(body) > limit:
                        raise too_large
            finally:
                if drain is not None:
                    drain.unwatch_body(timeout)
    except TimeoutError:
        if drain is not None and drain.closing:
            raise unavailable("shutting_down", "the gateway is shutting down") from None
        raise HttpError(408, "body_timeout", "request body not received in time") from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "bad_encoding", "request body is not UTF-8 text") from None
