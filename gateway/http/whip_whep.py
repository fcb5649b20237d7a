"""WHIP (RFC 9725) and WHEP endpoints and their session resources.

Paths are live-webrtc-go's (/api/whip/publish/{room}, /api/whep/play/{room}) plus the session
URLs it never had. Every check that can fail cheaply runs before a worker is asked anything.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.config import GatewayConfig, IceConfig
from gateway.http import whep_events
from gateway.http.auth import AUTH_KEY, require_session
from gateway.http.control import turn_credentials
from gateway.http.drain import Drain, read_bounded_body
from gateway.http.errors import RETRY_AFTER_SECONDS, HttpError, json_error, unavailable
from gateway.http.ratelimit import request_client_key
from gateway.metrics import COUNTERS_KEY
from gateway.placement.directory import (
    NodeDirectory,
    SessionDirectory,
    SessionEntry,
    SingleNode,
)
from gateway.placement.registry import Registry
from gateway.sdpfrag import SdpFragment, parse_sdpfrag, summarize_offer
from gateway.settings import ROOM_NAME_PATTERN
from ipc.channel import IpcError, RequestTimeout
from ipc.messages import SessionKind

log = logging.getLogger(__name__)

ROOM_NAME = ROOM_NAME_PATTERN
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"

ENDPOINT_METHODS = ("GET", "HEAD", "OPTIONS", "POST")
# A POST that arrives before the first local worker registered (a gateway that just started)
# waits this long for one instead of failing with 503 no_worker at once.
FIRST_WORKER_WAIT_S = 5.0
SESSION_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH")
# Where each kind of session lives: (endpoint prefix, session prefix).
PREFIXES: dict[SessionKind, tuple[str, str]] = {
    "publisher": ("/api/whip/publish/", "/api/whip/session/"),
    "subscriber": ("/api/whep/play/", "/api/whep/session/"),
}


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ice_server_links(ice: IceConfig, room: str = "", with_turn: bool = True) -> list[str]:
    """RFC 9725 §4.6 Link headers, one per STUN/TURN URL.

    TURN entries (and their credentials: TURN REST ones with TURN_SECRET) only `with_turn`,
    i.e. for a caller allowed to use the room.
    """
    links = [f'<{url}>; rel="ice-server"' for url in ice.stun_urls]
    if not with_turn:
        return links
    credentials = turn_credentials(ice, room)
    for url in ice.turn_urls:
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


class Api:
    """The WHIP and WHEP endpoints and session resources, and the health checks."""

    def __init__(self, config: GatewayConfig, registry: Registry, drain: Drain) -> None:
        self.config = config
        self.registry = registry
        self.directory: SessionDirectory = registry.directory
        self.drain = drain
        self._background: set[asyncio.Task[None]] = set()
        # Called once a session was created (its 201 is being sent): webhooks' *_joined.
        self.on_session_created: Callable[[SessionEntry], None] = _ignore_session
        # Cluster (issue 13): which node serves a room or session; one node unless REDIS_URL.
        self.nodes: NodeDirectory = SingleNode()

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
            for link in ice_server_links(self.config.ice, room, with_turn):
                headers.add("Link", link)
        return web.Response(status=204, headers=headers)

    async def _create_session(self, kind: SessionKind, request: web.Request) -> web.Response:
        received = time.monotonic()  # live_session_setup_seconds: from here to the 201
        room = request.match_info["room"]
        if kind == "publisher":
            await require_session(request, room, "publish", "whip")
        else:
            await require_session(request, room, "play", "whep")
        _check_content_type(request, SDP)
        offer = await read_bounded_body(request, self.config.http.max_body_bytes)
        try:
            summary = summarize_offer(offer)
        except ValueError as exc:
            raise HttpError(400, "bad_offer", str(exc)) from None
        # --- cluster: a room served by another node is answered 307 there (issue 13) ---
        redirect = await self.nodes.route_endpoint(kind, room, request.path_qs)
        if redirect is not None:
            return temporary_redirect(redirect)
        # ---
        if self.draining:
            raise unavailable("shutting_down", "the gateway is shutting down")
        await self._await_first_worker()
        session_id, etag = self.nodes.new_session_id(), new_etag()
        ufrag, pwd = summary.ice_ufrag or "", summary.ice_pwd or ""
        client = request_client_key(request, self.config.limits.trusted_proxies)
        self._check_caps(request, room, client, kind)
        # Reserved before the first await: a concurrent second publisher sees it (409) and
        # the subscriber limit counts it; the caps above count it too.
        if kind == "publisher":
            session = self.directory.reserve_publisher(room, session_id, etag, ufrag, pwd)
        else:
            session = self.directory.reserve_subscriber(
                room, session_id, etag, ufrag, pwd, self.config.limits.max_subs_per_room
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
        self.on_session_created(session)
        log.info(
            "%s %s in room %s on %s%s",
            kind,
            session_id[:8],
            room,
            session.worker_id,
            f" (edge of {session.home})" if session.home else "",
            extra={"room": room, "session": session_id[:8], "worker": session.worker_id},
        )
        if kind == "publisher" and self.directory.workers_of_room(room) - {session.worker_id}:
            # Viewers of the room on other workers (edges) read their media from this one now.
            self._in_background(self.registry.follow_room(room))
        headers: CIMultiDict[str] = CIMultiDict()
        headers["Location"] = self.nodes.location(PREFIXES[kind][1] + session_id)  # cluster
        headers["ETag"] = etag
        for link in ice_server_links(self.config.ice, room):
            headers.add("Link", link)
        if kind == "subscriber" and whep_events.EVENTS_KEY in request.app:
            headers.add("Link", whep_events.link_header(session_id))
        # body= rather than text= keeps Content-Type exactly application/sdp (no charset).
        response = web.Response(
            status=201, body=answer.answer.encode(), content_type=SDP, headers=headers
        )
        setup = request.app[COUNTERS_KEY].session_setup
        setup.labels(kind).observe(time.monotonic() - received)
        return response

    async def _await_first_worker(self) -> None:
        """Until the first worker registered, wait up to FIRST_WORKER_WAIT_S for one (placement
        then answers 503 no_worker if none came); afterwards this costs nothing. Only with
        local workers, which are on their way: remote ones come when they come."""
        if self.config.workers.count == 0:
            return
        deadline = time.monotonic() + FIRST_WORKER_WAIT_S
        while not self.registry.ever_registered and not self.draining:
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.05)

    def _check_caps(self, request: web.Request, room: str, client: str, kind: SessionKind) -> None:
        """MAX_SESSIONS_PER_IP, MAX_PENDING_SESSIONS_PER_IP, MAX_PENDING_SESSIONS and
        MAX_SESSIONS_PER_WORKER, before reserving. Counted by walking the sessions, and only
        for the caps that are set."""
        config = self.config.limits
        if not (
            config.max_pending_sessions
            or config.max_pending_sessions_per_ip
            or config.max_sessions_per_worker
            or config.max_sessions_per_ip
        ):
            return
        worker_id = self.directory.worker_for_room(room, kind)
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

        self._in_background(close())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
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
        if session is None:
            # --- cluster: a session held by another node is answered 307 there (issue 13) ---
            session_id = request.match_info["session_id"]
            redirect = await self.nodes.route_session(session_id, request.path_qs)
            if redirect is not None:
                return temporary_redirect(redirect)
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
        text = await read_bounded_body(request, self.config.http.max_body_bytes)
        try:
            fragment = parse_sdpfrag(text)
        except ValueError as exc:
            raise HttpError(400, "bad_fragment", str(exc)) from None
        restart = _is_ice_restart(fragment, session)
        if if_match.strip() == "*":
            # RFC 9725 §4.3.2: "*" only ever asks for a restart, which needs new credentials.
            if not restart:
                raise HttpError(
                    400,
                    "bad_fragment",
                    "If-Match: * is for an ICE restart; the fragment needs a new ice-ufrag "
                    "and ice-pwd",
                )
        elif not etag_matches(if_match, session.etag):
            raise HttpError(412, "precondition_failed", "If-Match does not match the session ETag")
        if not restart:
            await self.registry.add_candidates(session, fragment)
            return web.Response(status=204)
        if not fragment.ice_ufrag or not fragment.ice_pwd:
            raise HttpError(400, "bad_fragment", "an ICE restart needs both ice-ufrag and ice-pwd")
        body = await self.registry.restart_ice(session, fragment)
        session.ice_ufrag, session.ice_pwd = fragment.ice_ufrag, fragment.ice_pwd
        session.etag = new_etag()
        return web.Response(
            status=200,
            body=body.encode(),
            headers={"Content-Type": SDPFRAG, "ETag": session.etag},
        )

    # --- health ----------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return json_error(503, "shutting_down", "the gateway is shutting down")
        if self.registry.live_worker_count() == 0:
            return json_error(503, "no_worker", "no media worker is registered")
        cluster_problem = self.nodes.not_ready()  # cluster: Redis unreachable
        if cluster_problem is not None:
            return json_error(503, "cluster_unavailable", cluster_problem)
        return web.Response(text="ready")


def _ignore_session(_session: SessionEntry) -> None:
    return None


def temporary_redirect(location: str) -> web.Response:
    """Cluster (issue 13): 307, never 301/302, which turn a POST into a GET (RFC 9725 §4.4)."""
    return web.Response(status=307, headers={"Location": location, "Cache-Control": "no-store"})


def _is_ice_restart(fragment: SdpFragment, session: SessionEntry) -> bool:
    """New client credentials mean a restart (RFC 9725 §4.3.2 overrides RFC 8840's discard)."""
    changed_ufrag = fragment.ice_ufrag not in (None, session.ice_ufrag)
    changed_pwd = fragment.ice_pwd not in (None, session.ice_pwd)
    # An offer without credentials gives nothing to compare against.
    return bool(session.ice_ufrag) and (changed_ufrag or changed_pwd)


API_KEY = web.AppKey("api", Api)


def add_routes(app: web.Application, api: Api) -> None:
    for kind, (endpoint_prefix, session_prefix) in PREFIXES.items():
        endpoint_handler = partial(api.endpoint, kind)
        # The bare prefix and an empty room reach the handler too, for a 400 "invalid room".
        app.router.add_route("*", endpoint_prefix.rstrip("/"), endpoint_handler)
        app.router.add_route("*", endpoint_prefix + "{room:[\\s\\S]*}", endpoint_handler)
        app.router.add_route("*", session_prefix + "{session_id}", partial(api.session, kind))
