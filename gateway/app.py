"""The HTTP surface: WHIP (RFC 9725) and WHEP endpoints, session resources, health, static UI.

Paths are live-webrtc-go's (/api/whip/publish/{room}, /api/whep/play/{room}) plus the session
URLs it never had. Every check that can fail cheaply runs before a worker is asked anything.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from aiohttp import HttpVersion10, web
from aiohttp.abc import AbstractAccessLogger
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from gateway import api as control_api
from gateway.auth import AUTH_KEY, Authenticator, require_room
from gateway.config import ROOM_NAME_PATTERN, GatewayConfig
from gateway.directory import SessionEntry, SessionKind
from gateway.errors import (
    RETRY_AFTER_SECONDS,
    Handler,
    HttpError,
    error_middleware,
    json_error,
    unavailable,
)
from gateway.metrics import COUNTERS_KEY, REGISTRY_KEY, metrics_handler, setup_metrics
from gateway.openapi import openapi_handler
from gateway.ratelimit import TokenBuckets, rate_limit_middleware, request_client_key
from gateway.recordings import setup_recordings
from gateway.registry import Registry
from gateway.sdpfrag import SdpFragment, parse_sdpfrag, summarize_offer
from ipc.channel import IpcError, RequestTimeout

log = logging.getLogger(__name__)

ROOM_NAME = ROOM_NAME_PATTERN
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
BODY_READ_TIMEOUT_S = 15.0  # a slow client must not hold a handler forever
# Once the gateway stops, a body still on its way gets this long before the 503.
DRAIN_BODY_GRACE_S = 2.0
READ_CHUNK = 64 * 1024
WEB_DIR = Path(__file__).resolve().parent / "web"

ENDPOINT_METHODS = ("GET", "HEAD", "OPTIONS", "POST")
SESSION_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH")
CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match, X-Auth-Token",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, Accept-Post",
    "Access-Control-Max-Age": "600",
}
# Where each kind of session lives: (endpoint prefix, session prefix).
PREFIXES: dict[SessionKind, tuple[str, str]] = {
    "publisher": ("/api/whip/publish/", "/api/whip/session/"),
    "subscriber": ("/api/whep/play/", "/api/whep/session/"),
}


ORIGINS_KEY = web.AppKey("allowed_origins", frozenset)


def allowed_origin(request: web.Request) -> str | None:
    """The one place that picks Access-Control-Allow-Origin; None: no CORS headers at all.

    ALLOWED_ORIGIN is `*` or a list of exact origins (live-webrtc-go also took a bare host
    and matched any scheme and port of it: not any more).
    """
    origins = request.app[ORIGINS_KEY]
    if "*" in origins:
        return "*"
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() in origins:
        return origin
    return None


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/api/"):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # only non-errors get here; errors are already JSON
        _add_cors(request, exc.headers)
        raise
    _add_cors(request, response.headers)
    return response


def _add_cors(request: web.Request, headers: CIMultiDict[str]) -> None:
    origin = allowed_origin(request)
    if origin != "*":
        headers.add("Vary", "Origin")  # the answer depends on Origin: caches must know
    if origin is None:
        return
    headers["Access-Control-Allow-Origin"] = origin
    if origin != "*":
        headers["Access-Control-Allow-Credentials"] = "true"
    headers.update(CORS_HEADERS)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ice_server_links(config: GatewayConfig, room: str = "", with_turn: bool = True) -> list[str]:
    """RFC 9725 §4.6 Link headers, one per STUN/TURN URL.

    TURN entries (and their credentials: TURN REST ones with TURN_SECRET) only `with_turn`,
    i.e. for a caller allowed to use the room.
    """
    links = [f'<{url}>; rel="ice-server"' for url in config.stun_urls]
    if not with_turn:
        return links
    credentials = control_api.turn_credentials(config, room)
    for url in config.turn_urls:
        link = f'<{url}>; rel="ice-server"'
        if credentials is not None:
            username, credential = credentials
            link += (
                f"; username={_quote(username)}"
                f"; credential={_quote(credential)}"
                '; credential-type="password"'
            )
        links.append(link)
    return links


def etag_matches(if_match: str, etag: str) -> bool:
    """Strong comparison against a comma separated If-Match list (weak tags never match)."""
    return any(candidate.strip() == etag for candidate in if_match.split(","))


def new_session_id() -> str:
    return secrets.token_urlsafe(24)  # 192 random bits: the URL is the session's credential


def new_etag() -> str:
    return _quote(secrets.token_urlsafe(12))


def _method_not_allowed(allowed: Iterable[str]) -> HttpError:
    allow = ", ".join(allowed)
    return HttpError(405, "method_not_allowed", "method not allowed", {"Allow": allow})


def _check_room(room: str) -> None:
    if not ROOM_NAME.match(room):
        raise HttpError(400, "invalid_room", "invalid room: use 1 to 64 of A-Z a-z 0-9 _ -")


def _check_content_type(request: web.Request, expected: str) -> None:
    if request.content_type.lower() != expected:
        raise HttpError(415, "unsupported_media_type", f"Content-Type must be {expected}")


class Drain:
    """The requests in flight, so that a stopping gateway answers every request it started.

    A body still being received when the stop begins gets DRAIN_BODY_GRACE_S more, then a
    503; everything else runs to its answer (a worker's included, bounded by IPC_TIMEOUT).
    """

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._body_reads: set[asyncio.Timeout] = set()

    def start(self) -> None:
        self.draining = True
        for timeout in self._body_reads:
            self._shorten(timeout)

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
        if self.draining:
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
        if drain is not None and drain.draining:
            raise unavailable("shutting_down", "the gateway is shutting down") from None
        raise HttpError(408, "body_timeout", "request body not received in time") from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "bad_encoding", "request body is not UTF-8 text") from None


class Api:
    def __init__(self, config: GatewayConfig, registry: Registry, drain: Drain) -> None:
        self.config = config
        self.registry = registry
        self.directory = registry.directory
        self.drain = drain
        self._background: set[asyncio.Task[None]] = set()

    @property
    def draining(self) -> bool:
        return self.drain.draining

    def start_draining(self) -> None:
        """Graceful shutdown: refuse new sessions, answer every request already started."""
        self.drain.start()

    # --- endpoints (POST creates a session) ----------------------------------------------

    async def endpoint(self, kind: SessionKind, request: web.Request) -> web.StreamResponse:
        method = request.method
        if method == "OPTIONS":
            return self._endpoint_options(request)
        if method not in ENDPOINT_METHODS:
            raise _method_not_allowed(ENDPOINT_METHODS)
        _check_room(request.match_info.get("room", ""))
        if method == "POST":
            return await self._create_session(kind, request)
        if method == "HEAD" and kind == "subscriber":
            # WHEP discoverability: HEAD tells players "this URL speaks SDP".
            return web.Response(status=200, content_type=SDP)
        return web.Response(status=204)  # GET: RFC 9725 asks for 2xx without content

    def _endpoint_options(self, request: web.Request) -> web.Response:
        headers: CIMultiDict[str] = CIMultiDict({"Accept-Post": SDP})
        # ICE servers only on a plain OPTIONS, never on a CORS preflight (RFC 9725 §4.6),
        # and TURN only to a caller whose credentials grant the room.
        room = request.match_info.get("room", "")
        if "Access-Control-Request-Method" not in request.headers and ROOM_NAME.match(room):
            with_turn = request.app[AUTH_KEY].may_use_room(request, room)
            for link in ice_server_links(self.config, room, with_turn):
                headers.add("Link", link)
        return web.Response(status=204, headers=headers)

    async def _create_session(self, kind: SessionKind, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        require_room(request, room)
        _check_content_type(request, SDP)
        offer = await read_bounded_body(request, self.config.max_body_bytes)
        try:
            summary = summarize_offer(offer)
        except ValueError as exc:
            raise HttpError(400, "bad_offer", str(exc)) from None
        if self.draining:
            raise unavailable("shutting_down", "the gateway is shutting down")
        session_id, etag = new_session_id(), new_etag()
        ufrag, pwd = summary.ice_ufrag or "", summary.ice_pwd or ""
        client = request_client_key(request, self.config.trusted_proxies)
        self._check_caps(request, room, client)
        # Reserved before the first await: a concurrent second publisher sees it (409) and
        # the subscriber limit counts it; the caps above count it too.
        if kind == "publisher":
            session = self.directory.reserve_publisher(room, session_id, etag, ufrag, pwd)
        else:
            session = self.directory.reserve_subscriber(
                room, session_id, etag, ufrag, pwd, self.config.max_subs_per_room
            )
        session.client = client
        try:
            answer = await self.registry.open_session(session, offer)
        except BaseException as exc:
            self.directory.remove_session(session_id)
            if isinstance(exc, RequestTimeout | asyncio.CancelledError):
                # The worker may still create it after we stopped waiting; do not leak it.
                self._close_in_background(session)
            raise
        if self.directory.get_session(session_id) is None:
            # Its worker died (or closed it) while the answer was on its way.
            raise unavailable("worker_gone", "the media worker went away; try again")
        log.info("%s %s in room %s on %s", kind, session_id[:8], room, session.worker_id)
        headers: CIMultiDict[str] = CIMultiDict()
        headers["Location"] = PREFIXES[kind][1] + session_id
        headers["ETag"] = etag
        for link in ice_server_links(self.config, room):
            headers.add("Link", link)
        # body= rather than text= keeps Content-Type exactly application/sdp (no charset).
        return web.Response(
            status=201, body=answer.answer.encode(), content_type=SDP, headers=headers
        )

    def _check_caps(self, request: web.Request, room: str, client: str) -> None:
        """MAX_SESSIONS_PER_IP, MAX_PENDING_SESSIONS_PER_IP, MAX_PENDING_SESSIONS and
        MAX_SESSIONS_PER_WORKER, before reserving. Counted by walking the sessions, and only
        for the caps that are set."""
        config = self.config
        if not (
            config.max_pending_sessions
            or config.max_pending_sessions_per_ip
            or config.max_sessions_per_worker
            or config.max_sessions_per_ip
        ):
            return
        worker_id = self.directory.worker_for_room(room)
        pending = on_worker = from_client = pending_from_client = 0
        for session in self.directory.sessions.values():
            pending += not session.connected
            on_worker += session.worker_id == worker_id
            if session.client == client:
                from_client += 1
                pending_from_client += not session.connected
        refusal: HttpError | None = None
        if config.max_sessions_per_ip and from_client >= config.max_sessions_per_ip:
            refusal = HttpError(
                429,
                "too_many_sessions_from_client",
                f"this address already has {from_client} sessions "
                f"(MAX_SESSIONS_PER_IP={config.max_sessions_per_ip}); close one first",
            )
        elif (
            config.max_pending_sessions_per_ip
            and pending_from_client >= config.max_pending_sessions_per_ip
        ):
            # One address must not fill MAX_PENDING_SESSIONS and shut everyone else out.
            refusal = HttpError(
                429,
                "too_many_pending_sessions_from_client",
                f"this address already has {pending_from_client} sessions still connecting "
                f"(MAX_PENDING_SESSIONS_PER_IP={config.max_pending_sessions_per_ip}); "
                "let them connect or close them first",
                {"Retry-After": RETRY_AFTER_SECONDS},
            )
        elif config.max_pending_sessions and pending >= config.max_pending_sessions:
            refusal = unavailable(
                "too_many_pending_sessions",
                f"{pending} sessions are still connecting (MAX_PENDING_SESSIONS); try again",
            )
        elif (
            worker_id is not None
            and config.max_sessions_per_worker
            and on_worker >= config.max_sessions_per_worker
        ):
            refusal = unavailable(
                "worker_full",
                f"the media worker for room {room!r} holds {on_worker} sessions "
                f"(MAX_SESSIONS_PER_WORKER); try again later",
            )
        if refusal is not None:
            request.app[COUNTERS_KEY].sessions_refused.labels(refusal.code).inc()
            raise refusal

    def _close_in_background(self, session: SessionEntry) -> None:
        async def close() -> None:
            try:
                await self.registry.close_session(session)
            except IpcError as exc:
                log.debug("background close of %s: %s", session.session_id[:8], exc)

        task = asyncio.get_running_loop().create_task(close())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- session resources ---------------------------------------------------------------

    async def session(self, kind: SessionKind, request: web.Request) -> web.StreamResponse:
        method = request.method
        if method == "OPTIONS":
            return web.Response(status=204, headers={"Accept-Patch": SDPFRAG})
        if method not in SESSION_METHODS:
            raise _method_not_allowed(SESSION_METHODS)
        session = self.directory.get_session(request.match_info["session_id"])
        if session is None or session.kind != kind:
            raise HttpError(404, "unknown_session", "no such session")
        if method == "DELETE":
            return await self._delete(session)
        if method == "PATCH":
            return await self._patch(session, request)
        return web.Response(status=204)  # GET/HEAD: 2xx without content

    async def _delete(self, session: SessionEntry) -> web.Response:
        # Forget it first so that concurrent requests on this URL already see 404.
        self.directory.remove_session(session.session_id)
        try:
            await self.registry.close_session(session)
        except IpcError as exc:
            # The session is gone from the client's point of view either way: a dead worker
            # took it along, and a hung one is declared dead by the heartbeat check.
            log.info("close of %s on %s: %s", session.session_id[:8], session.worker_id, exc)
        return web.Response(status=200)

    async def _patch(self, session: SessionEntry, request: web.Request) -> web.Response:
        _check_content_type(request, SDPFRAG)
        if_match = request.headers.get("If-Match")
        if if_match is None:
            raise HttpError(428, "precondition_required", "PATCH needs an If-Match header")
        text = await read_bounded_body(request, self.config.max_body_bytes)
        try:
            fragment = parse_sdpfrag(text)
        except ValueError as exc:
            raise HttpError(400, "bad_fragment", str(exc)) from None
        if if_match.strip() == "*" or _is_ice_restart(fragment, session):
            raise HttpError(
                422,
                "ice_restart_unsupported",
                "ICE restart is not supported; start a new session",
            )
        if not etag_matches(if_match, session.etag):
            raise HttpError(412, "precondition_failed", "If-Match does not match the session ETag")
        await self.registry.add_candidates(session, fragment)
        return web.Response(status=204)

    # --- health ----------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return json_error(503, "shutting_down", "the gateway is shutting down")
        if self.registry.live_worker_count() == 0:
            return json_error(503, "no_worker", "no media worker is registered")
        return web.Response(text="ready")


def _is_ice_restart(fragment: SdpFragment, session: SessionEntry) -> bool:
    """New client credentials mean a restart (RFC 9725 §4.3.2 overrides RFC 8840's discard)."""
    changed_ufrag = fragment.ice_ufrag not in (None, session.ice_ufrag)
    changed_pwd = fragment.ice_pwd not in (None, session.ice_pwd)
    # An offer without credentials gives nothing to compare against.
    return bool(session.ice_ufrag) and (changed_ufrag or changed_pwd)


API_KEY = web.AppKey("api", Api)


async def _redirect_to_web(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/web/")


async def _web_index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(WEB_DIR / "index.html")


async def _web_file(request: web.Request) -> web.StreamResponse:
    """A file of the UI, or our JSON 404 (aiohttp's static route answers an empty one)."""
    name = request.match_info["name"]
    path = WEB_DIR / name
    try:
        # No symlinks and nothing outside WEB_DIR, however the name is spelled.
        found = (
            "\x00" not in name
            and not path.is_symlink()
            and path.resolve().is_relative_to(WEB_DIR)
            and path.is_file()
        )
    except (OSError, ValueError):  # a name too long for the file system, and the like
        found = False
    if not found:
        raise HttpError(404, "not_found", "no such file")
    return web.FileResponse(path)


def _add_static_ui(app: web.Application) -> None:
    if not WEB_DIR.is_dir():
        return
    app.router.add_get("/web", _redirect_to_web)
    if (WEB_DIR / "index.html").is_file():
        app.router.add_get("/web/", _web_index)
    app.router.add_get("/web/{name:.+}", _web_file)


_SESSION_PATH = re.compile(r"^(/api/wh[ie]p/session/)([^/]{8})[^/]+")


def redact_target(path: str, query: str) -> str:
    """A request target fit for a log: session ids cut to 8 characters (the URL is the
    session's credential) and every query value replaced (clients put tokens there)."""
    safe = _SESSION_PATH.sub(r"\g<1>\g<2>…", path)
    if query:
        keys = [part.partition("=")[0] for part in query.split("&") if part]
        safe += "?" + "&".join(f"{key}=REDACTED" for key in keys)
    return safe


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log without secrets: no headers, redacted paths and queries."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.1fms "%s"',
            request.remote or "-",
            request.method,
            redact_target(request.path, request.query_string),
            response.status,
            response.body_length,
            time * 1000,
            request.headers.get("User-Agent", "-"),
        )


def make_metrics_app(registry: CollectorRegistry) -> web.Application:
    """The METRICS_ADDR listener: /metrics alone."""
    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/metrics", metrics_handler(registry))
    return app


def make_app(config: GatewayConfig, registry: Registry) -> web.Application:
    # client_max_size bounds aiohttp's own readers; ours enforce max_body_bytes themselves.
    app = web.Application(
        middlewares=[drain_middleware, cors_middleware, error_middleware],
        client_max_size=config.max_body_bytes,
    )
    drain = app[DRAIN_KEY] = Drain()
    # The metrics registry exists before any route, so every setup below can add collectors.
    totals = setup_metrics(app, registry.directory)
    registry.on_heartbeat = totals.observe
    if config.rate_limit_rps > 0:
        buckets = TokenBuckets(config.rate_limit_rps, config.rate_limit_burst)
        on_refused = app[COUNTERS_KEY].rate_limited.inc
        app.middlewares.append(
            rate_limit_middleware(buckets, config.trusted_proxies, on_refused)
        )
    app[ORIGINS_KEY] = frozenset(config.allowed_origin)
    app[AUTH_KEY] = Authenticator(config)
    api = Api(config, registry, drain)
    app[API_KEY] = api
    for kind, (endpoint_prefix, session_prefix) in PREFIXES.items():
        endpoint_handler = partial(api.endpoint, kind)
        # The bare prefix and an empty room reach the handler too, for a 400 "invalid room".
        app.router.add_route("*", endpoint_prefix.rstrip("/"), endpoint_handler)
        app.router.add_route("*", endpoint_prefix + "{room:[\\s\\S]*}", endpoint_handler)
        app.router.add_route("*", session_prefix + "{session_id}", partial(api.session, kind))
    control_api.add_routes(app, control_api.ControlApi(config, registry, totals))
    setup_recordings(app, config)
    app.router.add_get("/api/openapi.json", openapi_handler)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    if config.metrics_addr is None:
        app.router.add_get("/metrics", metrics_handler(app[REGISTRY_KEY]))
    app.router.add_get("/", _redirect_to_web)
    _add_static_ui(app)
    return app
