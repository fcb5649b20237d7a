"""The JSON control API: rooms, bootstrap, admin; and ICE server configuration for clients.

Paths and field names are live-webrtc-go's (`/api/rooms`, `/api/bootstrap`,
`/api/admin/rooms/{room}/close`); the additions (`/api/admin/workers`, extra fields) never
change the meaning of an existing field.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections import Counter
from typing import Any

from aiohttp import web

from gateway.config import GatewayConfig, IceConfig
from gateway.http.auth import AUTH_KEY, require_admin
from gateway.http.errors import HttpError
from gateway.metrics import TrafficTotals
from gateway.placement.directory import SessionDirectory
from gateway.placement.registry import Registry
from gateway.settings import ROOM_NAME_PATTERN

log = logging.getLogger(__name__)

TurnCredentials = tuple[str, str]  # (username, credential)


def turn_credentials(
    ice: IceConfig, room: str = "", now: float | None = None
) -> TurnCredentials | None:
    """The TURN username and credential to hand out, or None when TURN has none.

    With TURN_SECRET, time-limited TURN REST API credentials (coturn's use-auth-secret):
    username `expiry:room` (just `expiry` without a room), credential
    base64(HMAC-SHA1(TURN_SECRET, username)). Otherwise the static TURN_USERNAME/PASSWORD.
    """
    if ice.turn_secret:
        expiry = int(now if now is not None else time.time()) + ice.turn_ttl
        username = f"{expiry}:{room}" if room else str(expiry)
        mac = hmac.new(ice.turn_secret.encode(), username.encode(), hashlib.sha1)
        return username, base64.b64encode(mac.digest()).decode()
    if ice.turn_username or ice.turn_password:
        return ice.turn_username, ice.turn_password
    return None


def ice_servers(ice: IceConfig, room: str, with_turn: bool) -> list[dict[str, Any]]:
    """RTCPeerConnection's iceServers; TURN only for a caller allowed to use `room`."""
    servers: list[dict[str, Any]] = []
    if ice.stun_urls:
        servers.append({"urls": list(ice.stun_urls)})
    credentials = turn_credentials(ice, room) if with_turn else None
    if ice.turn_urls and credentials is not None:
        username, credential = credentials
        servers.append(
            {"urls": list(ice.turn_urls), "username": username, "credential": credential}
        )
    elif ice.turn_urls and with_turn:
        servers.append({"urls": list(ice.turn_urls)})
    return servers


def _publisher_state(directory: SessionDirectory, session_id: str | None) -> str:
    if session_id is None:
        return "none"
    session = directory.get_session(session_id)
    if session is None:
        return "none"
    return "connected" if session.connected else "connecting"


class ControlApi:
    def __init__(self, config: GatewayConfig, registry: Registry, totals: TrafficTotals) -> None:
        self.config = config
        self.registry = registry
        self.directory: SessionDirectory = registry.directory
        self.totals = totals

    # --- public -----------------------------------------------------------------------------

    async def rooms(self, request: web.Request) -> web.Response:
        """Every room, sorted by name (live-webrtc-go's order was random)."""
        result = []
        for name, entry in sorted(self.directory.rooms.items()):
            state = _publisher_state(self.directory, entry.publisher)
            report = self.totals.room_report(name, entry.home)
            tracks = report.tracks if report is not None and state != "none" else []
            viewers: Counter[str] = Counter()
            for session_id in entry.subscribers:
                session = self.directory.get_session(session_id)
                if session is not None:
                    viewers[session.worker_id] += 1
            result.append(
                {
                    "name": name,
                    "hasPublisher": state != "none",
                    "publisherState": state,
                    "tracks": len(tracks),
                    "media": [{"kind": kind, "codec": codec} for kind, codec in tracks],
                    "subscribers": len(entry.subscribers),
                    # "worker" predates spreading; it is the room's home, as "home" says.
                    "worker": entry.home,
                    "home": entry.home,
                    "viewersPerWorker": dict(sorted(viewers.items())),
                }
            )
        return web.json_response(result)

    async def bootstrap(self, request: web.Request) -> web.Response:
        """What a web client needs before it creates its RTCPeerConnection.

        TURN credentials are only given to a caller that may use the room named by `?room=`
        (any caller when the server is open), and with TURN_SECRET they expire.
        """
        room = request.query.get("room", "")
        if room and not ROOM_NAME_PATTERN.match(room):
            raise HttpError(400, "invalid_room", "invalid room: use 1 to 64 of A-Z a-z 0-9 _ -")
        auth = request.app[AUTH_KEY]
        if room:
            with_turn = auth.may_use_room(request, room)
        else:
            with_turn = not self.config.auth.enabled
        recording = self.config.recording.record_enabled
        return web.json_response(
            {
                "authEnabled": self.config.auth.enabled,
                "recordEnabled": recording,
                "iceServers": ice_servers(self.config.ice, room, with_turn),
                "features": {"rooms": True, "records": recording, "trickleIce": True},
            }
        )

    # --- admin ------------------------------------------------------------------------------

    async def close_room(self, request: web.Request) -> web.Response:
        room = request.match_info.get("room", "")
        if not ROOM_NAME_PATTERN.match(room):
            raise HttpError(400, "invalid_room", "invalid room: use 1 to 64 of A-Z a-z 0-9 _ -")
        require_admin(request)
        entry = self.directory.rooms.get(room)
        if entry is None:
            raise HttpError(404, "no_room", f"no room {room!r}")
        session_ids = entry.session_ids
        # On its home and every edge; failures are logged (a dead worker took the room along,
        # a hung one is declared dead by its heartbeats).
        await self.registry.close_room(room)
        for session_id in session_ids:
            self.directory.remove_session(session_id)
        log.info("room %s closed by an admin (%d sessions)", room, len(session_ids))
        return web.json_response({"closed": room, "sessions": len(session_ids)})

    async def workers(self, request: web.Request) -> web.Response:
        require_admin(request)
        now = time.monotonic()
        result = []
        for worker_id, worker in sorted(self.directory.workers.items()):
            sessions = [s for s in self.directory.sessions.values() if s.worker_id == worker_id]
            rooms = sorted({s.room for s in sessions})  # home or edge
            report = self.totals.reports.get(worker_id)
            heartbeat = report.heartbeat if report is not None else None
            result.append(
                {
                    "id": worker_id,
                    "local": worker.local,
                    "pid": worker.pid,
                    "hostname": worker.hostname,
                    "rooms": rooms,
                    "sessions": len(sessions),
                    "pendingSessions": sum(1 for s in sessions if not s.connected),
                    "load": {
                        "cpu": worker.cpu,
                        "forwardedPacketsPerSecond": worker.forwarded_packets_per_s,
                        "eventLoopLagSeconds": heartbeat.loop_lag_s if heartbeat else 0.0,
                        "ipcRoundTripSeconds": heartbeat.ipc_round_trip_s if heartbeat else 0.0,
                        "rssBytes": heartbeat.rss_bytes if heartbeat else 0,
                    },
                    "uptimeSeconds": round(now - report.started, 3) if report else 0.0,
                    "lastHeartbeatSecondsAgo": round(now - worker.last_heartbeat, 3),
                }
            )
        return web.json_response(result)


async def options(request: web.Request) -> web.Response:
    """OPTIONS on a JSON API path (CORS preflight): the CORS middleware adds the rest."""
    return web.Response(status=204)


def add_routes(app: web.Application, api: ControlApi) -> None:
    app.router.add_get("/api/rooms", api.rooms, allow_head=False)
    app.router.add_get("/api/bootstrap", api.bootstrap, allow_head=False)
    app.router.add_get("/api/admin/workers", api.workers, allow_head=False)
    # {room:.*} so that an invalid name still reaches the handler (400, as in live-webrtc-go).
    app.router.add_post("/api/admin/rooms/{room:[\\s\\S]*}/close", api.close_room)
    for path in (
        "/api/rooms",
        "/api/bootstrap",
        "/api/admin/workers",
        "/api/admin/rooms/{room:[\\s\\S]*}/close",
    ):
        app.router.add_route("OPTIONS", path, options)
