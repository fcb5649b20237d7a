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

from aiohttp import web
from multidict import CIMultiDict

from gateway.config import GatewayConfig
from gateway.directory import SessionEntry, SessionKind
from gateway.errors import Handler, HttpError, error_middleware, json_error, unavailable
from gateway.registry import Registry
from gateway.sdpfrag import SdpFragment, parse_sdpfrag, summarize_offer
from ipc.channel import IpcError, RequestTimeout

log = logging.getLogger(__name__)

ROOM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
BODY_READ_TIMEOUT_S = 15.0  # a slow client must not hold a handler forever
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


def allowed_origin(request: web.Request) -> str:
    """The one place that picks Access-Control-Allow-Origin (ALLOWED_ORIGIN comes later)."""
    return "*"


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
    headers["Access-Control-Allow-Origin"] = allowed_origin(request)
    headers.update(CORS_HEADERS)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ice_server_links(config: GatewayConfig) -> list[str]:
    """RFC 9725 §4.6 Link headers, one per STUN/TURN URL."""
    links = [f'<{url}>; rel="ice-server"' for url in config.stun_urls]
    for url in config.turn_urls:
        link = f'<{url}>; rel="ice-server"'
        if config.turn_username or config.turn_password:
            link += (
                f"; username={_quote(config.turn_username)}"
                f"; credential={_quote(config.turn_password)}"
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


async def read_bounded_body(request: web.Request, limit: int) -> str:
    """The body as text; 413 past `limit` (announced or actual), 408 if it is too slow."""
    too_large = HttpError(413, "body_too_large", f"request body too large (limit {limit} bytes)")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_S):
            async for chunk in request.content.iter_chunked(READ_CHUNK):
                body += chunk
                if len(body) > limit:
                    raise too_large
    except TimeoutError:
        raise HttpError(408, "body_timeout", "request body not received in time") from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError(400, "bad_encoding", "request body is not UTF-8 text") from None


class Api:
    def __init__(self, config: GatewayConfig, registry: Registry) -> None:
        self.config = config
        self.registry = registry
        self.directory = registry.directory
        self.links = ice_server_links(config)
        self.draining = False
        self._background: set[asyncio.Task[None]] = set()

    def start_draining(self) -> None:
        """Graceful shutdown: refuse new sessions, keep serving the existing ones."""
        self.draining = True

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
        # ICE servers only on a plain OPTIONS, never on a CORS preflight (RFC 9725 §4.6).
        if "Access-Control-Request-Method" not in request.headers:
            for link in self.links:
                headers.add("Link", link)
        return web.Response(status=204, headers=headers)

    async def _create_session(self, kind: SessionKind, request: web.Request) -> web.Response:
        room = request.match_info["room"]
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
        # Reserved before the first await: a concurrent second publisher sees it (409) and
        # the subscriber limit counts it.
        if kind == "publisher":
            session = self.directory.reserve_publisher(room, session_id, etag, ufrag, pwd)
        else:
            session = self.directory.reserve_subscriber(
                room, session_id, etag, ufrag, pwd, self.config.max_subs_per_room
            )
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
        for link in self.links:
            headers.add("Link", link)
        # body= rather than text= keeps Content-Type exactly application/sdp (no charset).
        return web.Response(
            status=201, body=answer.answer.encode(), content_type=SDP, headers=headers
        )

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


def _add_static_ui(app: web.Application) -> None:
    if not WEB_DIR.is_dir():
        return
    app.router.add_get("/web", _redirect_to_web)
    if (WEB_DIR / "index.html").is_file():
        app.router.add_get("/web/", _web_index)
    app.router.add_static("/web/", WEB_DIR, follow_symlinks=False)


def make_app(config: GatewayConfig, registry: Registry) -> web.Application:
    # client_max_size bounds aiohttp's own readers; ours enforce max_body_bytes themselves.
    app = web.Application(
        middlewares=[cors_middleware, error_middleware],
        client_max_size=config.max_body_bytes,
    )
    api = Api(config, registry)
    app[API_KEY] = api
    for kind, (endpoint_prefix, session_prefix) in PREFIXES.items():
        endpoint_handler = partial(api.endpoint, kind)
        # The bare prefix and an empty room reach the handler too, for a 400 "invalid room".
        app.router.add_route("*", endpoint_prefix.rstrip("/"), endpoint_handler)
        app.router.add_route("*", endpoint_prefix + "{room:.*}", endpoint_handler)
        app.router.add_route("*", session_prefix + "{session_id}", partial(api.session, kind))
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/readyz", api.readyz)
    app.router.add_get("/", _redirect_to_web)
    _add_static_ui(app)
    return app
