"""The WHEP server-sent events extension (`urn:ietf:params:whep:ext:core:server-sent-events`).

A WHEP 201 carries `Link: </api/whep/session/{id}/events>; rel="<EXTENSION>";
events="active,inactive,viewercount,reconnect"`. The player POSTs a JSON array of the events
it wants there (201 + Location of a stream), then GETs the stream as `text/event-stream`;
DELETE ends it, and it ends with its session. A GET straight on the events URL (Broadcast Box
style, without the POST) is a stream of every offered event. The session URL is the
capability, as for PATCH and DELETE: no token is consulted. With several nodes
(gateway/cluster/), the events URLs of a session held by another node answer 307 to it.

State comes from the Directory (`on_room_change`, called on every session reserved,
connected or removed) and from the Drain (`reconnect` at its start, every stream ended when
it closes). Producers only append to a bounded per-stream queue: a reader that falls
MAX_QUEUED_EVENTS behind loses its stream, and the gateway never waits for a reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.http.cors import add_cors
from gateway.http.drain import Drain, read_bounded_body
from gateway.http.errors import HttpError
from gateway.placement.directory import Directory, NodeDirectory, SingleNode

log = logging.getLogger(__name__)

EXTENSION = "urn:ietf:params:whep:ext:core:server-sent-events"
# What live-sfu can produce now; `layers` needs simulcast, `scte35` a source of it.
OFFERED_EVENTS = ("active", "inactive", "viewercount", "reconnect")
SESSION_PREFIX = "/api/whep/session/"
WHEP_ENDPOINT = "/api/whep/play/"
JSON_TYPE = "application/json"

MAX_STREAMS_PER_SESSION = 4
MAX_QUEUED_EVENTS = 64
MAX_REQUEST_BYTES = 1024
KEEPALIVE_S = 15.0
WRITE_TIMEOUT_S = 10.0  # a reader that takes no bytes for this long loses its stream
VIEWERCOUNT_INTERVAL_S = 0.25  # viewercount changes are coalesced to at most 4 a second
STREAM_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS")
EVENTS_METHODS = ("GET", "HEAD", "OPTIONS", "POST")


def events_url(session_id: str) -> str:
    return f"{SESSION_PREFIX}{session_id}/events"


def link_header(session_id: str) -> str:
    return f'<{events_url(session_id)}>; rel="{EXTENSION}"; events="{",".join(OFFERED_EVENTS)}"'


def sse_record(event: str, data: dict[str, Any]) -> bytes:
    """One SSE record: the JSON on a single `data:` line (json.dumps escapes newlines)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass
class EventStream:
    stream_id: str
    session_id: str
    room: str
    events: frozenset[str]
    queue: deque[bytes] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    reading: bool = False
    active: bool = False  # the last active/inactive state this stream was told (or assumed)
    viewercount: int | None = None  # the last viewercount it was told

    def push(self, event: str, data: dict[str, Any]) -> bool:
        """Queue an event it asked for; False when that overflowed the queue."""
        if self.closed or event not in self.events:
            return True
        if len(self.queue) >= MAX_QUEUED_EVENTS:
            return False
        self.queue.append(sse_record(event, data))
        self.wakeup.set()
        return True

    def end(self) -> None:
        self.closed = True
        self.wakeup.set()


def _method_not_allowed(allowed: tuple[str, ...]) -> HttpError:
    return HttpError(405, "method_not_allowed", "method not allowed", {"Allow": ", ".join(allowed)})


def parse_event_list(text: str) -> frozenset[str]:
    """The POSTed JSON array of event names; HttpError 400 for anything else."""
    try:
        value = json.loads(text)
    except ValueError:
        raise HttpError(400, "bad_json", "the body is not JSON") from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise HttpError(400, "bad_event_list", "the body must be a JSON array of event names")
    if not value:
        raise HttpError(400, "bad_event_list", "ask for at least one event")
    unknown = sorted(set(value) - set(OFFERED_EVENTS))
    if unknown:
        raise HttpError(
            400,
            "unsupported_event",
            f"events not offered: {', '.join(unknown)} (offered: {', '.join(OFFERED_EVENTS)})",
        )
    return frozenset(value)


class EventHub:
    """Every event stream of the gateway, indexed by session and by room."""

    def __init__(self, directory: Directory, drain: Drain) -> None:
        self.directory = directory
        self.drain = drain
        self.streams: dict[str, EventStream] = {}
        self._by_room: dict[str, set[str]] = {}
        self._viewercount_flush: dict[str, asyncio.TimerHandle] = {}
        self._reconnect_sent = False
        # Cluster (issue 13): a session held by another node is answered 307 there.
        self.nodes: NodeDirectory = SingleNode()
        directory.on_room_change = self.room_changed
        drain.on_start.append(self.reconnect_all)
        drain.on_close.append(self.close_all)

    # --- state ------------------------------------------------------------------------------

    def _room_state(self, room: str) -> tuple[bool, int]:
        """(the publisher is connected, connected viewers)."""
        entry = self.directory.rooms.get(room)
        if entry is None:
            return False, 0
        sessions = self.directory.sessions
        publisher = sessions.get(entry.publisher) if entry.publisher is not None else None
        viewers = sum(
            1 for s in entry.subscribers if (v := sessions.get(s)) is not None and v.connected
        )
        return publisher is not None and publisher.connected, viewers

    def _push(self, stream: EventStream, event: str, data: dict[str, Any]) -> None:
        if not stream.push(event, data):
            log.info("event stream %s overflowed: closed", stream.stream_id[:8])
            self._remove(stream)

    def room_changed(self, room: str) -> None:
        """Directory hook: a session of `room` was reserved, connected or removed."""
        ids = self._by_room.get(room)
        if not ids:
            return
        active, _ = self._room_state(room)
        for stream in [self.streams[i] for i in ids]:
            if self.directory.get_session(stream.session_id) is None:
                self._remove(stream)  # its session ended
            elif stream.active != active:
                stream.active = active
                self._push(stream, "active" if active else "inactive", {})
        if room in self._by_room and room not in self._viewercount_flush:
            loop = asyncio.get_running_loop()
            self._viewercount_flush[room] = loop.call_later(
                VIEWERCOUNT_INTERVAL_S, self._flush_viewercount, room
            )

    def _flush_viewercount(self, room: str) -> None:
        self._viewercount_flush.pop(room, None)
        _, viewers = self._room_state(room)
        for stream in [self.streams[i] for i in self._by_room.get(room, ())]:
            if stream.viewercount != viewers:
                stream.viewercount = viewers
                self._push(stream, "viewercount", {"viewercount": viewers})

    def reconnect_all(self) -> None:
        """Drain hook: every stream is told to reconnect (to the same WHEP endpoint, which a
        load balancer sends to a gateway that is not draining)."""
        if self._reconnect_sent:
            return
        self._reconnect_sent = True
        for stream in list(self.streams.values()):
            self._push(stream, "reconnect", {"url": WHEP_ENDPOINT + stream.room})

    def close_all(self) -> None:
        """Drain hook (the listener is about to go): end every stream."""
        for stream in list(self.streams.values()):
            self._remove(stream)

    # --- streams ----------------------------------------------------------------------------

    def _open(self, session_id: str, room: str, events: frozenset[str]) -> EventStream:
        if sum(s.session_id == session_id for s in self.streams.values()) >= (
            MAX_STREAMS_PER_SESSION
        ):
            raise HttpError(
                429,
                "too_many_event_streams",
                f"a session has at most {MAX_STREAMS_PER_SESSION} event streams; delete one",
            )
        stream = EventStream(secrets.token_urlsafe(16), session_id, room, events)
        self.streams[stream.stream_id] = stream
        self._by_room.setdefault(room, set()).add(stream.stream_id)
        active, viewers = self._room_state(room)
        if active:  # never an initial `inactive` (the extension says so)
            stream.active = True
            self._push(stream, "active", {})
        stream.viewercount = viewers
        self._push(stream, "viewercount", {"viewercount": viewers})
        if self.drain.draining:
            self._reconnect_sent = True
            self._push(stream, "reconnect", {"url": WHEP_ENDPOINT + room})
        return stream

    def _remove(self, stream: EventStream) -> None:
        stream.end()
        self.streams.pop(stream.stream_id, None)
        ids = self._by_room.get(stream.room)
        if ids is not None:
            ids.discard(stream.stream_id)
            if not ids:
                del self._by_room[stream.room]
                handle = self._viewercount_flush.pop(stream.room, None)
                if handle is not None:
                    handle.cancel()

    def _whep_session(self, request: web.Request) -> tuple[str, str]:
        session_id = request.match_info["session_id"]
        session = self.directory.get_session(session_id)
        if session is None or session.kind != "subscriber":
            raise HttpError(404, "unknown_session", "no such session")
        return session_id, session.room

    async def _elsewhere(self, request: web.Request) -> web.Response | None:
        """Cluster (issue 13): the 307 to the node that holds the session, when this one does
        not (as for the session's PATCH/DELETE: a player that resolved the relative events
        URL against the first node it posted to lands here); None: served (or 404) here."""
        session_id = request.match_info["session_id"]
        if self.directory.get_session(session_id) is not None:
            return None
        location = await self.nodes.route_session(session_id, request.path_qs)
        if location is None:
            return None
        return web.Response(status=307, headers={"Location": location, "Cache-Control": "no-store"})

    # --- handlers ---------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """/api/whep/session/{id}/events: POST a JSON array → 201 + Location; GET → a stream
        of every offered event at once (Broadcast Box style)."""
        method = request.method
        if method == "OPTIONS":
            return web.Response(status=204, headers={"Accept-Post": JSON_TYPE})
        if method not in EVENTS_METHODS:
            raise _method_not_allowed(EVENTS_METHODS)
        redirect = await self._elsewhere(request)  # cluster
        if redirect is not None:
            return redirect
        session_id, room = self._whep_session(request)
        if method == "HEAD":
            return web.Response(status=200, content_type="text/event-stream")
        if method == "GET":
            stream = self._open(session_id, room, frozenset(OFFERED_EVENTS))
            try:
                return await self._serve(stream, request)
            finally:
                self._remove(stream)  # nobody can come back to a stream without a URL
        if request.content_type.lower() != JSON_TYPE:
            raise HttpError(415, "unsupported_media_type", f"Content-Type must be {JSON_TYPE}")
        events = parse_event_list(await read_bounded_body(request, MAX_REQUEST_BYTES))
        if self.directory.get_session(session_id) is None:  # it ended while the body came
            raise HttpError(404, "unknown_session", "no such session")
        stream = self._open(session_id, room, events)
        location = f"{events_url(session_id)}/{stream.stream_id}"
        return web.Response(status=201, headers={"Location": location})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """/api/whep/session/{id}/events/{stream_id}: GET reads it, DELETE ends it."""
        method = request.method
        if method == "OPTIONS":
            return web.Response(status=204)
        if method not in STREAM_METHODS:
            raise _method_not_allowed(STREAM_METHODS)
        stream = self.streams.get(request.match_info["stream_id"])
        if stream is None or stream.session_id != request.match_info["session_id"]:
            redirect = await self._elsewhere(request)  # cluster
            if redirect is not None:
                return redirect
            raise HttpError(404, "unknown_event_stream", "no such event stream")
        if method == "DELETE":
            self._remove(stream)
            return web.Response(status=200)
        if method == "HEAD":
            return web.Response(status=200, content_type="text/event-stream")
        if stream.reading:
            raise HttpError(409, "event_stream_in_use", "this event stream is already being read")
        return await self._serve(stream, request)

    async def _serve(self, stream: EventStream, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        response.content_type = "text/event-stream"
        add_cors(request, response.headers)  # EventSource from another origin needs them
        stream.reading = True
        try:
            await response.prepare(request)
            await self._pump(stream, response)
        except (ConnectionError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):  # the reader took nothing for WRITE_TIMEOUT_S
                self._remove(stream)
            return response
        finally:
            stream.reading = False
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response

    async def _pump(self, stream: EventStream, response: web.StreamResponse) -> None:
        """Write queued events until the stream ends; a comment every KEEPALIVE_S."""
        while True:
            if stream.queue:
                chunk = b"".join(stream.queue)
                stream.queue.clear()
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await response.write(chunk)
                continue
            if stream.closed:
                return
            stream.wakeup.clear()
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    await stream.wakeup.wait()
            except TimeoutError:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await response.write(b": keep-alive\n\n")


EVENTS_KEY = web.AppKey("whep_events", EventHub)


def add_routes(app: web.Application, hub: EventHub) -> None:
    app.router.add_route("*", SESSION_PREFIX + "{session_id}/events", hub.events)
    app.router.add_route("*", SESSION_PREFIX + "{session_id}/events/{stream_id}", hub.stream)
