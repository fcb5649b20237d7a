"""The OpenAPI 3.0 description of the HTTP API, served at /api/openapi.json.

Built from plain Python data, once per process; served with a strong ETag (and 304 for a
matching If-None-Match). The static UI (`/`, `/web/...`) and the bare endpoint prefixes
(`/api/whip/publish`, `/api/whep/play`: always 400 `invalid_room`) are left out.
tests/adversarial/test_openapi_schemathesis.py checks it against the routes and a live gateway.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from typing import Any

from aiohttp import web

from gateway.http.whep_events import OFFERED_EVENTS
from gateway.settings import ROOM_NAME_PATTERN

Obj = dict[str, Any]

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
JSON = "application/json"
TEXT = "text/plain"

# Every error status the gateway answers with, and what it means here.
ERRORS: dict[int, str] = {
    400: "Malformed request: invalid room or name, bad SDP offer or fragment, non-UTF-8 body",
    401: "Missing or unrecognised credential",
    403: "Credential does not grant this room or the admin API (or admin API disabled), "
    "subscriber limit reached, or the recording cannot be read",
    404: "No such session, room, publisher or recording",
    405: "Method not allowed on this path (no operation answers it: see each path's methods)",
    408: "Request body not received in time",
    409: "The room already has a publisher, the event stream is already being read, an "
    "ICE restart of a session whose ICE is not connected, or a session id prefix that names "
    "several sessions",
    412: "If-Match does not match the session's ETag",
    413: "Request body larger than MAX_BODY_BYTES",
    415: "Wrong Content-Type",
    428: "PATCH without If-Match",
    429: "Rate limited (with Retry-After), too many sessions from this address, or too many "
    "event streams on a WHEP session",
    503: "Temporarily unable: shutting down, no or busy media worker, worker timeout, or the "
    "auth hook (AUTH_HOOK_URL) failed, timed out or is unreachable; with several nodes, the "
    "cluster's Redis is unreachable (cluster_unavailable) or a room moved while a redirect "
    "was followed (room_moved)",
}


def _header(description: str, required: bool = False, **schema: Any) -> Obj:
    return {
        "description": description,
        "required": required,
        "schema": {"type": "string", **schema},
    }


ERROR_HEADERS: dict[int, Obj] = {
    401: {"WWW-Authenticate": _header("Bearer challenge", required=True)},
    405: {"Allow": _header("The methods this path allows", required=True)},
    429: {"Retry-After": _header("Seconds to wait (rate limiting only)", pattern=r"^\d+$")},
    503: {"Retry-After": _header("Seconds to wait", required=True, pattern=r"^\d+$")},
}


def _ref(kind: str, name: str) -> Obj:
    return {"$ref": f"#/components/{kind}/{name}"}


def _errors(*statuses: int) -> Obj:
    return {str(status): _ref("responses", f"Error{status}") for status in statuses}


def _json(schema: Obj, description: str = "OK") -> Obj:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _empty(description: str, headers: Obj | None = None) -> Obj:
    return (
        {"description": description, "headers": headers}
        if headers
        else {"description": description}
    )


def _string(**extra: Any) -> Obj:
    return {"type": "string", **extra}


def _nullable(schema: Obj) -> Obj:
    return {**schema, "nullable": True}


def _object(required: list[str], properties: Obj, closed: bool = True) -> Obj:
    schema: Obj = {"type": "object", "required": required, "properties": properties}
    if closed:
        schema["additionalProperties"] = False
    return schema


def _path_param(name: str, schema: Obj, description: str) -> Obj:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


# JSON Schema patterns are ECMA-262: no \Z (Python's "end of string, no newline before").
ROOM = _string(pattern=ROOM_NAME_PATTERN.pattern.replace("\\Z", "$"))
ROOM_PARAM = _path_param("room", _ref("schemas", "Room"), "Room name")
ANY_ROOM_PARAM = _path_param("room", _string(), "Room name (OPTIONS does not check it)")
SESSION_PARAM = _path_param(
    "session_id", _string(), "The session id from the Location of the 201 (a capability)"
)
INT = {"type": "integer", "minimum": 0}
NUMBER = {"type": "number"}
ADMIN_SECURITY: list[Obj] = [{"bearerAuth": []}, {"tokenHeader": []}]
# Rooms are open unless AUTH_TOKEN, ROOM_TOKENS or JWT_SECRET say otherwise.
ROOM_SECURITY: list[Obj] = [{}, *ADMIN_SECURITY]
LINK = _header('RFC 9725 ICE servers, `<url>; rel="ice-server"`, one per STUN/TURN URL')
WHEP_LINK = _header(
    'As LINK, plus on WHEP `<{session}/events>; rel="urn:ietf:params:whep:ext:core:'
    'server-sent-events"; events="active,inactive,viewercount,reconnect"`'
)
ACCEPT_POST = {"Accept-Post": _header("application/sdp", required=True)}
ACCEPT_PATCH = {"Accept-Patch": _header(SDPFRAG, required=True)}
# Several nodes (REDIS_URL, docs/cluster.md): where another node holds the room or session.
REDIRECT = {
    "description": "Several nodes: another node holds the room (or session). Location is the "
    "same path and query on that node's NODE_URL, plus the hop marker ?node=<id>; a request "
    "that carries the marker is never redirected again. Never 301/302. With NODE_TOKEN, a "
    "redirected WHIP/WHEP POST also carries &grant=<payload>.<signature>: a signed, 30 s, "
    "single-use grant for that room, right and node, which the target takes in place of the "
    "credential clients drop across hosts (401 invalid_grant, grant_expired, "
    "grant_other_node, grant_other_room, grant_other_right or grant_used when it is not "
    "valid)",
    "headers": {"Location": _header("Absolute URL on the node that holds it", required=True)},
}


# What the room's home measured of a track (sfu/roomstats.py), as of its last heartbeat;
# rates over at least the last second. Absent until the home reported the track.
TRACK_SUMMARY: Obj = {
    "bitrateBps": {**INT, "description": "Received RTP bits per second (headers and RTX in)"},
    "frameRate": {**NUMBER, "description": "Video: frames (marker bits) per second"},
    "width": _nullable({**INT, "description": "Video: of the latest keyframe; null: unknown"}),
    "height": _nullable(INT),
}
TRACK_DETAIL: Obj = {
    **TRACK_SUMMARY,
    "codecDetail": _string(description='e.g. "H264 (high, 64001f, packetization-mode=1)"'),
    "packetsReceived": {**INT, "description": "Media packets from the publisher (not RTX)"},
    "packetsLost": {
        **INT,
        "description": "Sequence gaps on the ingest leg (publisher to its worker), before "
        "retransmission, since the track began",
    },
    "lossRatio": {**NUMBER, "description": "Lost / expected packets over the last second"},
    "keyframes": INT,
    "keyframeIntervalSeconds": _nullable(
        {**NUMBER, "description": "Between the last two keyframes; null before the second"}
    ),
    "lastKeyframeSecondsAgo": _nullable(NUMBER),
}


def _room_schema(detailed: bool) -> Obj:
    """RoomInfo (/api/rooms) or RoomDetail (/api/rooms/{room})."""
    track = TRACK_DETAIL if detailed else TRACK_SUMMARY
    required = [
        "name",
        "hasPublisher",
        "publisherState",
        "tracks",
        "media",
        "subscribers",
        "worker",
        "home",
        "viewersPerWorker",
    ]
    extra: Obj = {}
    if detailed:
        required.append("publisher")
        extra["publisher"] = _nullable(
            _string(description="The first 8 characters of the publisher's session id")
        )
    return _object(
        required,
        {
            "name": ROOM,
            "hasPublisher": {"type": "boolean"},
            "publisherState": _string(enum=["none", "connecting", "connected"]),
            "tracks": INT,
            "media": {
                "type": "array",
                "items": _object(
                    ["kind", "codec"], {"kind": _string(), "codec": _string(), **track}
                ),
            },
            "subscribers": INT,
            "worker": _nullable(
                _string(description="The room's home (same as home), kept for old clients")
            ),
            "home": _nullable(
                _string(
                    description="The worker of the room's publisher; null while the room "
                    "waits for a new publisher after that worker died"
                )
            ),
            "viewersPerWorker": {
                "type": "object",
                "additionalProperties": INT,
                "description": "Subscribers by worker id: the home's and its edges' (other "
                "local workers that read the home's packets from shared memory)",
            },
            "node": _string(
                description="Several nodes (REDIS_URL): the room's home node (rooms of "
                "other nodes as of their last heartbeat)"
            ),
            **extra,
        },
    )


def _schemas() -> Obj:
    upload = _object(["state"], {"state": _string()}, closed=False)
    return {
        "Error": _object(["error", "code"], {"error": _string(), "code": _string()}),
        "Room": ROOM,
        "RoomInfo": _room_schema(detailed=False),
        "RoomDetail": _room_schema(detailed=True),
        "Session": _object(
            ["id", "kind", "worker", "home", "client", "connected", "durationSeconds"],
            {
                "id": _string(description="The first 8 characters of the session id"),
                "kind": _string(enum=["publisher", "subscriber"]),
                "worker": _string(),
                "home": _nullable(
                    _string(description="A viewer on an edge: the worker it reads from")
                ),
                "client": _string(
                    description="The client's address (an IPv6 client's /64), as the rate "
                    "limits key it; behind TRUSTED_PROXIES, from X-Forwarded-For"
                ),
                "connected": {"type": "boolean"},
                "durationSeconds": NUMBER,
            },
        ),
        "SessionClosed": _object(
            ["closed", "kind", "room"],
            {
                "closed": _string(description="The session id's first 8 characters"),
                "kind": _string(enum=["publisher", "subscriber"]),
                "room": ROOM,
            },
        ),
        "Node": _object(
            ["id", "url", "rooms", "sessions", "workers", "capacity", "draining", "self"],
            {
                "version": INT,
                "id": _string(),
                "url": _string(description="Its NODE_URL"),
                "rooms": INT,
                "sessions": INT,
                "workers": INT,
                "capacity": {**INT, "description": "Sessions it can take; 0 = no fixed limit"},
                "cpu": NUMBER,
                "draining": {"type": "boolean"},
                "started": NUMBER,
                "updated": NUMBER,
                "roomNames": {"type": "array", "items": ROOM},
                "self": {"type": "boolean", "description": "The node that answered"},
                "lastHeartbeatSecondsAgo": NUMBER,
            },
        ),
        "IceServer": _object(
            ["urls"],
            {
                "urls": {"type": "array", "items": _string()},
                "username": _string(),
                "credential": _string(),
            },
        ),
        "Bootstrap": _object(
            ["authEnabled", "recordEnabled", "iceServers", "features"],
            {
                "authEnabled": {"type": "boolean"},
                "recordEnabled": {"type": "boolean"},
                "iceServers": {"type": "array", "items": _ref("schemas", "IceServer")},
                "features": _object(
                    ["rooms", "records", "trickleIce"],
                    {key: {"type": "boolean"} for key in ("rooms", "records", "trickleIce")},
                ),
            },
        ),
        "Worker": _object(
            ["id", "local", "pid", "hostname", "rooms", "sessions", "pendingSessions", "load"],
            {
                "id": _string(),
                "local": {"type": "boolean"},
                "pid": {"type": "integer"},
                "hostname": _string(),
                "rooms": {
                    "type": "array",
                    "items": ROOM,
                    "description": "The rooms the worker holds sessions of, as home or edge",
                },
                "sessions": INT,
                "pendingSessions": INT,
                "load": _object(
                    ["cpu", "forwardedPacketsPerSecond", "eventLoopLagSeconds"],
                    {
                        "cpu": NUMBER,
                        "forwardedPacketsPerSecond": NUMBER,
                        "eventLoopLagSeconds": NUMBER,
                        "ipcRoundTripSeconds": NUMBER,
                        "rssBytes": INT,
                    },
                ),
                "uptimeSeconds": NUMBER,
                "lastHeartbeatSecondsAgo": NUMBER,
            },
        ),
        "RoomClosed": _object(["closed", "sessions"], {"closed": ROOM, "sessions": INT}),
        "Recording": _object(
            ["name", "kind", "state", "size", "local", "url", "upload"],
            {
                "name": _string(),
                "room": _nullable(_string()),
                "track_id": _nullable(_string()),
                "kind": _string(enum=["audio", "video"]),
                "codec": _nullable(_string()),
                "state": _string(),
                "size": INT,
                "duration": _nullable(NUMBER),
                "start_time": _nullable(_string()),
                "width": _nullable(INT),
                "height": _nullable(INT),
                "frames": INT,
                "gaps": INT,
                "repaired": {"type": "boolean"},
                "error": _nullable(_string()),
                "local": {"type": "boolean"},
                "url": _nullable(_string()),
                "upload": upload,
            },
        ),
    }


def _error_responses() -> Obj:
    responses: Obj = {}
    for status, description in ERRORS.items():
        response = _json(_ref("schemas", "Error"), description)
        if status in ERROR_HEADERS:
            response["headers"] = ERROR_HEADERS[status]
        responses[f"Error{status}"] = response
    return responses


def _op(summary: str, responses: Obj, **extra: Any) -> Obj:
    return {"summary": summary, "responses": responses, **extra}


def _endpoint(kind: str, protocol: str, tag: str) -> Obj:
    """WHIP (`publisher`) or WHEP (`subscriber`) endpoint: POST creates a session."""
    session_prefix = f"/api/{tag}/session/"
    created = _empty(
        f"Session created; the body is the SDP answer. Location: {session_prefix}{{id}}",
        {
            "Location": _header(
                "The session URL: relative on a gateway alone, absolute on the node's NODE_URL "
                "with several nodes",
                required=True,
                pattern=f"^(https?://[^?#]*)?{session_prefix}",
            ),
            "ETag": _header("Strong ETag of the session (for If-Match)", required=True),
            "Link": WHEP_LINK if kind == "subscriber" else LINK,
        },
    )
    created["content"] = {SDP: {"schema": _string()}}
    # WHIP: the room already has a publisher (409); WHEP: no publisher yet (404).
    placement = 409 if kind == "publisher" else 404
    post_errors = sorted({400, 401, 403, 408, 413, 415, 429, 503, placement})
    head_ok = (
        {"200": {"description": "This URL takes SDP", "content": {SDP: {}}}}
        if kind == "subscriber"
        else {"204": _empty("No content")}
    )
    common = {"tags": [tag], "parameters": [ROOM_PARAM]}
    return {
        "post": _op(
            f"{protocol}: send an SDP offer, get the answer and a session URL",
            {"201": created, "307": REDIRECT, **_errors(*post_errors)},
            requestBody={"required": True, "content": {SDP: {"schema": _string()}}},
            security=ROOM_SECURITY,
            **common,
        ),
        "options": _op(
            f"{protocol}: Accept-Post, and ICE servers (Link) unless a CORS preflight",
            {"204": _empty("No content", {**ACCEPT_POST, "Link": LINK})},
            tags=[tag],
            parameters=[ANY_ROOM_PARAM],
            security=ROOM_SECURITY,
        ),
        "get": _op(
            f"{protocol}: 2xx without content",
            {"204": _empty("No content"), **_errors(400, 429)},
            **common,
        ),
        "head": _op(f"{protocol}: discoverability", {**head_ok, **_errors(400, 429)}, **common),
    }


def _session(protocol: str, tag: str) -> Obj:
    common = {"tags": [tag], "parameters": [SESSION_PARAM]}
    if_match = {
        "name": "If-Match",
        "in": "header",
        "required": True,
        "schema": _string(),
        "description": "The session's ETag (428 without); `*` for an ICE restart (RFC 9725)",
    }
    return {
        "patch": _op(
            f"{protocol}: trickle ICE candidates (RFC 8840), or an ICE restart (new "
            "ice-ufrag and ice-pwd, RFC 9725 §4.3)",
            {
                "200": {
                    "description": "ICE restarted: the server's new credentials and candidates",
                    "headers": {"ETag": _header("The session's new strong ETag", required=True)},
                    "content": {SDPFRAG: {"schema": _string()}},
                },
                "204": _empty("Candidates forwarded"),
                "307": REDIRECT,
                **_errors(400, 404, 408, 409, 412, 413, 415, 428, 503),
            },
            requestBody={"required": True, "content": {SDPFRAG: {"schema": _string()}}},
            tags=[tag],
            parameters=[SESSION_PARAM, if_match],
        ),
        "delete": _op(
            f"{protocol}: end the session",
            {"200": _empty("Ended"), "307": REDIRECT, **_errors(404)},
            **common,
        ),
        "options": _op(
            f"{protocol}: Accept-Patch", {"204": _empty("No content", ACCEPT_PATCH)}, **common
        ),
        "get": _op(
            f"{protocol}: 2xx without content",
            {"204": _empty("Exists"), "307": REDIRECT, **_errors(404)},
            **common,
        ),
        "head": _op(
            f"{protocol}: 2xx without content",
            {"204": _empty("Exists"), "307": REDIRECT, **_errors(404)},
            **common,
        ),
    }


def _events() -> Obj:
    """The WHEP server-sent events extension: the per-session events URL."""
    event_list = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "enum": list(OFFERED_EVENTS)},
    }
    common = {"tags": ["whep"], "parameters": [SESSION_PARAM]}
    stream = {
        "description": "A text/event-stream of `event: <name>` + one `data: <json>` line",
        "content": {"text/event-stream": {"schema": _string()}},
    }
    accept_json = {"Accept-Post": _header(JSON, required=True)}
    return {
        "post": _op(
            "WHEP events: ask for a JSON array of events, get the stream's Location",
            {
                "201": _empty(
                    "Event stream created",
                    {"Location": _header("The event stream URL", required=True)},
                ),
                "307": REDIRECT,
                **_errors(400, 404, 408, 413, 415, 429),
            },
            requestBody={"required": True, "content": {JSON: {"schema": event_list}}},
            **common,
        ),
        "get": _op(
            "WHEP events: every offered event at once, without the POST (Broadcast Box style)",
            {"200": stream, "307": REDIRECT, **_errors(404, 429)},
            **common,
        ),
        "head": _op(
            "WHEP events: the URL exists",
            {
                "200": {"description": "Exists", "content": {"text/event-stream": {}}},
                **_errors(404),
            },
            **common,
        ),
        "options": _op(
            "WHEP events: Accept-Post", {"204": _empty("No content", accept_json)}, **common
        ),
    }


def _event_stream() -> Obj:
    stream_param = _path_param("stream_id", _string(), "From the Location of the events POST")
    common = {"tags": ["whep"], "parameters": [SESSION_PARAM, stream_param]}
    stream = {
        "description": "A text/event-stream of `event: <name>` + one `data: <json>` line",
        "content": {"text/event-stream": {"schema": _string()}},
    }
    return {
        "get": _op(
            "WHEP events: read the stream",
            {"200": stream, "307": REDIRECT, **_errors(404, 409)},
            **common,
        ),
        "head": _op(
            "WHEP events: the stream exists",
            {
                "200": {"description": "Exists", "content": {"text/event-stream": {}}},
                **_errors(404),
            },
            **common,
        ),
        "delete": _op(
            "WHEP events: end the stream", {"200": _empty("Ended"), **_errors(404)}, **common
        ),
        "options": _op("WHEP events: CORS preflight", {"204": _empty("No content")}, **common),
    }


def _preflight(tag: str, parameters: list[Obj] | None = None) -> Obj:
    extra: Obj = {"parameters": parameters} if parameters else {}
    return _op("CORS preflight", {"204": _empty("No content")}, tags=[tag], **extra)


def _array(name: str) -> Obj:
    return {"type": "array", "items": _ref("schemas", name)}


def _text(description: str) -> Obj:
    return {"description": description, "content": {TEXT: {"schema": _string()}}}


def _plain(summary: str, ok: Obj, *extra_errors: int, tag: str = "operations") -> Obj:
    """A GET route of aiohttp's add_get (so HEAD too); no rate limit outside /api/."""
    head_ok = {status: _empty(response["description"]) for status, response in ok.items()}
    errors = _errors(*extra_errors)
    return {
        "get": _op(summary, {**ok, **errors}, tags=[tag]),
        "head": _op(summary + " (headers only)", {**head_ok, **errors}, tags=[tag]),
    }


def _paths() -> Obj:
    recording_name = _path_param(
        "name",
        _string(pattern=r"^[A-Za-z0-9_.-]{1,255}$"),
        "A recording file name (.ivf, .ogg or .mkv); anything else is refused with 400",
    )
    download = {
        "description": "The media file",
        "headers": {"Content-Disposition": _header("attachment", required=True)},
        "content": {
            media: {"schema": _string(format="binary")}
            for media in ("video/x-ivf", "audio/ogg", "video/x-matroska")
        },
    }
    bootstrap_room = {
        "name": "room",
        "in": "query",
        "required": False,
        # An empty value is the same as none: no room.
        "schema": _string(pattern=r"^[A-Za-z0-9_-]{0,64}$"),
        "description": "Room the client is about to use (TURN credentials only if it may)",
    }
    admin = {"tags": ["admin"], "security": ADMIN_SECURITY}
    spec_etag = {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "schema": _string(),
    }
    readyz_503 = _json(
        _ref("schemas", "Error"),
        "Draining, or no media worker registered, or (several nodes) Redis unreachable",
    )
    openapi = _plain(
        "This document",
        {"200": {**_json({"type": "object"}), "headers": {"ETag": _header("Strong", True)}}},
        429,
    )
    for operation in openapi.values():
        operation["parameters"] = [spec_etag]
        operation["responses"]["304"] = _empty("Not modified (If-None-Match)")
    return {
        "/api/whip/publish/{room}": _endpoint("publisher", "WHIP", "whip"),
        "/api/whip/session/{session_id}": _session("WHIP", "whip"),
        "/api/whep/play/{room}": _endpoint("subscriber", "WHEP", "whep"),
        "/api/whep/session/{session_id}": _session("WHEP", "whep"),
        "/api/whep/session/{session_id}/events": _events(),
        "/api/whep/session/{session_id}/events/{stream_id}": _event_stream(),
        "/api/rooms": {
            "get": _op(
                "Every room, by name",
                {"200": _json(_array("RoomInfo")), **_errors(429)},
                tags=["control"],
            ),
            "options": _preflight("control"),
        },
        "/api/rooms/{room}": {
            "get": _op(
                "One room of this node, with every figure its home measured of each track",
                {"200": _json(_ref("schemas", "RoomDetail")), **_errors(400, 404, 429)},
                tags=["control"],
                parameters=[ROOM_PARAM],
            ),
            "options": _preflight("control", [ANY_ROOM_PARAM]),
        },
        "/api/bootstrap": {
            "get": _op(
                "What a web client needs before creating its RTCPeerConnection",
                {"200": _json(_ref("schemas", "Bootstrap")), **_errors(400, 429)},
                tags=["control"],
                parameters=[bootstrap_room],
                security=ROOM_SECURITY,
            ),
            "options": _preflight("control"),
        },
        "/api/admin/workers": {
            "get": _op(
                "The media workers",
                {"200": _json(_array("Worker")), **_errors(401, 403, 429)},
                **admin,
            ),
            "options": _preflight("admin"),
        },
        "/api/admin/nodes": {
            "get": _op(
                "Several nodes (REDIS_URL): the cluster's nodes and their load; [] for a "
                "gateway alone",
                {"200": _json(_array("Node")), **_errors(401, 403, 429)},
                **admin,
            ),
            "options": _preflight("admin"),
        },
        "/api/admin/rooms/{room}/close": {
            "post": _op(
                "Close a room and every session in it",
                {"200": _json(_ref("schemas", "RoomClosed")), **_errors(400, 401, 403, 404, 429)},
                parameters=[ROOM_PARAM],
                **admin,
            ),
            "options": _preflight("admin", [ANY_ROOM_PARAM]),
        },
        "/api/admin/rooms/{room}/sessions": {
            "get": _op(
                "A room's sessions on this node, with their client addresses (personal data: "
                "admin only) and durations",
                {"200": _json(_array("Session")), **_errors(400, 401, 403, 404, 429)},
                parameters=[ROOM_PARAM],
                **admin,
            ),
            "options": _preflight("admin", [ANY_ROOM_PARAM]),
        },
        "/api/admin/sessions/{session_id}": {
            "delete": _op(
                "Kick a session: closed on its worker and forgotten (its URL answers 404, its "
                "WHEP event streams end)",
                {
                    "200": _json(_ref("schemas", "SessionClosed")),
                    **_errors(401, 403, 404, 409, 429),
                },
                parameters=[
                    _path_param(
                        "session_id",
                        _string(),
                        "The session id, or a prefix of at least 8 characters that names one "
                        "session (409 ambiguous_session when several)",
                    )
                ],
                **admin,
            ),
            "options": _preflight("admin", [SESSION_PARAM]),
        },
        "/api/records": {
            "get": _op(
                "The recordings, newest first",
                {"200": _json(_array("Recording")), **_errors(401, 403, 429)},
                **admin,
            ),
        },
        "/api/records/{name}": {
            "get": _op(
                "Download a recording",
                {"200": download, **_errors(400, 401, 403, 404, 429)},
                parameters=[recording_name],
                **admin,
            ),
        },
        "/api/openapi.json": openapi,
        "/healthz": _plain("Liveness", {"200": _text("`ok`")}),
        "/readyz": {
            method: {**operation, "responses": {**operation["responses"], "503": readyz_503}}
            for method, operation in _plain("Readiness", {"200": _text("`ready`")}).items()
        },
        "/metrics": _plain("Prometheus metrics", {"200": _text("Prometheus text format")}),
    }


def build_spec() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "live-sfu",
            "version": "1",
            "description": "WHIP (RFC 9725) ingest, WHEP playback and the control API. "
            'Every error is JSON {"error": "...", "code": "..."}.',
        },
        "tags": [{"name": name} for name in ("whip", "whep", "control", "admin", "operations")],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _error_responses(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "AUTH_TOKEN, a ROOM_TOKENS token, ADMIN_TOKEN or a JWT",
                },
                "tokenHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Auth-Token",
                    "description": "The same credentials; wins over Authorization if non-empty",
                },
            },
        },
    }


@cache
def _document() -> tuple[bytes, str]:
    body = json.dumps(build_spec(), separators=(",", ":"), sort_keys=True).encode()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


async def openapi_handler(request: web.Request) -> web.Response:
    body, etag = _document()
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if_none_match = request.headers.get("If-None-Match", "")
    # If-None-Match compares weakly (RFC 9110 13.1.2): W/"x" matches "x".
    candidates = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    if any(tag in (etag, "*") for tag in candidates):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=JSON, headers=headers)
