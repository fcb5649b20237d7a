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

from gateway.cluster import CLUSTER_KEY
from gateway.config import GatewayConfig, IceConfig
from gateway.http.auth import AUTH_KEY, require_admin
from gateway.http.errors import HttpError
from gateway.metrics import TrafficTotals
from gateway.placement.directory import RoomEntry, SessionDirectory, SessionEntry
from gateway.placement.registry import Registry
from gateway.settings import ROOM_NAME_PATTERN
from ipc.channel import IpcError
from ipc.messages import TrackStats

log = logging.getLogger(__name__)

TurnCredentials = tuple[str, str]  # (username, credential)
# Session ids are shown by this many characters of their random part (the whole id is the
# session URL's capability: never shown).
SESSION_PREFIX = 8


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
        """Every room, sorted by name (live-webrtc-go's order was random); with several
        nodes (REDIS_URL), every node's, each with its `node`."""
        result = self.local_rooms()
        cluster = request.app.get(CLUSTER_KEY)
        if cluster is not None:
            for room in result:
                room["node"] = cluster.node_id
            seen = {room["name"] for room in result}
            for room in cluster.remote_rooms():  # as of each node's last heartbeat
                if room["name"] not in seen:
                    seen.add(room["name"])
                    result.append(room)
            result.sort(key=lambda room: str(room["name"]))
        return web.json_response(result)

    def local_rooms(self) -> list[dict[str, Any]]:
        """This node's rooms as /api/rooms lists them (also what its cluster record says)."""
        return [
            self._room_info(name, entry, detailed=False)
            for name, entry in sorted(self.directory.rooms.items())
        ]

    def _room_info(self, name: str, entry: RoomEntry, detailed: bool) -> dict[str, Any]:
        """A room as /api/rooms lists it; detailed: as /api/rooms/{room} shows it (every
        figure of each track, and the publisher's session id prefix)."""
        state = _publisher_state(self.directory, entry.publisher)
        report = self.totals.room_report(name, entry.home)
        live = report is not None and state != "none"
        tracks = report.tracks if report is not None and live else []
        measured = {t.kind: t for t in report.media} if report is not None and live else {}
        viewers: Counter[str] = Counter()
        for session_id in entry.subscribers:
            session = self.directory.get_session(session_id)
            if session is not None:
                viewers[session.worker_id] += 1
        media = []
        for kind, codec in tracks:
            item: dict[str, Any] = {"kind": kind, "codec": codec}
            track = measured.get(kind)
            if track is not None:
                item.update(_track_summary(track) if not detailed else _track_detail(track))
            media.append(item)
        info: dict[str, Any] = {
            "name": name,
            "hasPublisher": state != "none",
            "publisherState": state,
            "tracks": len(tracks),
            "media": media,
            "subscribers": len(entry.subscribers),
            # "worker" predates spreading; it is the room's home, as "home" says.
            "worker": entry.home,
            "home": entry.home,
            "viewersPerWorker": dict(sorted(viewers.items())),
        }
        if detailed:
            info["publisher"] = _short(entry.publisher) if entry.publisher else None
        return info

    async def room(self, request: web.Request) -> web.Response:
        """One room of this node, with every figure its home measured of each track."""
        name = _room_param(request)
        entry = self.directory.rooms.get(name)
        if entry is None:
            raise HttpError(404, "no_room", f"no room {name!r}")
        return web.json_response(self._room_info(name, entry, detailed=True))

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
        room = _room_param(request)
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

    async def room_sessions(self, request: web.Request) -> web.Response:
        """A room's sessions on this node, with their client addresses (personal data: this
        is why it is admin only) and how long they have existed."""
        room = _room_param(request)
        require_admin(request)
        entry = self.directory.rooms.get(room)
        if entry is None:
            raise HttpError(404, "no_room", f"no room {room!r}")
        now = time.monotonic()
        result = []
        for session_id in entry.session_ids:
            session = self.directory.get_session(session_id)
            if session is None:
                continue
            result.append(
                {
                    "id": _short(session_id),
                    "kind": session.kind,
                    "worker": session.worker_id,
                    "home": session.home or None,
                    "client": session.client,
                    "connected": session.connected,
                    "durationSeconds": round(max(now - session.created, 0.0), 3),
                }
            )
        return web.json_response(result)

    async def close_session(self, request: web.Request) -> web.Response:
        """Kick one session: by its id, or a prefix of at least SESSION_PREFIX characters
        (what the sessions list shows) that names one session. Closed on its worker and
        forgotten here, as the client's own DELETE does (its session URL answers 404, its
        WHEP event streams end)."""
        require_admin(request)
        session = self._find_session(request.match_info.get("session_id", ""))
        self.directory.remove_session(session.session_id)
        try:
            await self.registry.close_session(session)
        except IpcError as exc:
            # Gone either way: a dead worker took it along, a hung one is declared dead.
            log.info("close of %s on %s: %s", _short(session.session_id), session.worker_id, exc)
        log.info(
            "%s %s in room %s closed by an admin",
            session.kind,
            _short(session.session_id),
            session.room,
            extra={"room": session.room, "session": _short(session.session_id)},
        )
        return web.json_response(
            {"closed": _short(session.session_id), "kind": session.kind, "room": session.room}
        )

    def _find_session(self, wanted: str) -> SessionEntry:
        session = self.directory.get_session(wanted)
        if session is not None:
            return session
        if len(wanted.rpartition(".")[2]) >= SESSION_PREFIX:
            found = [s for i, s in self.directory.sessions.items() if i.startswith(wanted)]
            if len(found) > 1:
                raise HttpError(409, "ambiguous_session", "several sessions start with this prefix")
            if found:
                return found[0]
        raise HttpError(404, "unknown_session", "no such session")

    async def nodes(self, request: web.Request) -> web.Response:
        """The cluster's nodes and their load (REDIS_URL); [] for a gateway alone."""
        require_admin(request)
        cluster = request.app.get(CLUSTER_KEY)
        return web.json_response(cluster.node_list() if cluster is not None else [])


def _short(session_id: str) -> str:
    """The id as the API shows it: SESSION_PREFIX characters of its random part, after the
    node's id when there are several nodes (`<node id>.<random>`)."""
    node, dot, random_part = session_id.rpartition(".")
    return node + dot + random_part[:SESSION_PREFIX]


def _room_param(request: web.Request) -> str:
    room = request.match_info.get("room", "")
    if not ROOM_NAME_PATTERN.match(room):
        raise HttpError(400, "invalid_room", "invalid room: use 1 to 64 of A-Z a-z 0-9 _ -")
    return room


def _track_summary(track: TrackStats) -> dict[str, Any]:
    """What /api/rooms says of a track besides its kind and codec name."""
    summary: dict[str, Any] = {"bitrateBps": round(track.bitrate_bps)}
    if track.kind == "video":
        summary["frameRate"] = track.frame_rate
        summary["width"] = track.width or None
        summary["height"] = track.height or None
    return summary


def _track_detail(track: TrackStats) -> dict[str, Any]:
    """Every figure of a track, for /api/rooms/{room}; null where unknown."""
    detail = _track_summary(track)
    detail["codecDetail"] = track.codec
    detail["packetsReceived"] = track.packets_received
    detail["packetsLost"] = track.packets_lost
    detail["lossRatio"] = track.loss_ratio
    if track.kind == "video":
        detail["keyframes"] = track.keyframes
        detail["keyframeIntervalSeconds"] = track.keyframe_interval_s or None
        age = track.keyframe_age_s
        detail["lastKeyframeSecondsAgo"] = age if age >= 0 else None
    return detail


async def options(request: web.Request) -> web.Response:
    """OPTIONS on a JSON API path (CORS preflight): the CORS middleware adds the rest."""
    return web.Response(status=204)


def add_routes(app: web.Application, api: ControlApi) -> None:
    app.router.add_get("/api/rooms", api.rooms, allow_head=False)
    app.router.add_get("/api/rooms/{room:[\\s\\S]*}", api.room, allow_head=False)
    app.router.add_get("/api/bootstrap", api.bootstrap, allow_head=False)
    app.router.add_get("/api/admin/workers", api.workers, allow_head=False)
    app.router.add_get("/api/admin/nodes", api.nodes, allow_head=False)
    # {room:.*} so that an invalid name still reaches the handler (400, as in live-webrtc-go).
    app.router.add_post("/api/admin/rooms/{room:[\\s\\S]*}/close", api.close_room)
    app.router.add_get(
        "/api/admin/rooms/{room:[\\s\\S]*}/sessions", api.room_sessions, allow_head=False
    )
    app.router.add_delete("/api/admin/sessions/{session_id}", api.close_session)
    for path in (
        "/api/rooms",
        "/api/rooms/{room:[\\s\\S]*}",
        "/api/bootstrap",
        "/api/admin/workers",
        "/api/admin/nodes",
        "/api/admin/rooms/{room:[\\s\\S]*}/close",
        "/api/admin/rooms/{room:[\\s\\S]*}/sessions",
        "/api/admin/sessions/{session_id}",
    ):
        app.router.add_route("OPTIONS", path, options)
