"""The HTTP server span of each WHIP/WHEP POST (common/tracing.py; on only with OTEL_*).

One span per POST that creates a session, the root of that session's trace: the gateway's
IPC request (gateway/placement/registry.py) and the worker's open and connect spans are its
descendants. Its attributes are the method, the route *template*, the status, the room and
the kind of session: never the query string (it may carry a token), a header or the body.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from common import tracing
from gateway.http.whip_whep import PREFIXES, ROOM_NAME
from ipc.messages import SessionKind

# The endpoint path (no trailing slash) -> the kind of session a POST there creates.
_ENDPOINTS: tuple[tuple[str, SessionKind], ...] = tuple(
    (endpoint.rstrip("/"), kind) for kind, (endpoint, _session) in PREFIXES.items()
)


def _endpoint_kind(route: str) -> SessionKind | None:
    for prefix, kind in _ENDPOINTS:
        if route == prefix or route.startswith(prefix + "/"):
            return kind
    return None


def server_span_attributes(request: web.Request) -> tuple[str, dict[str, tracing.AttributeValue]]:
    """The span name and attributes of a traced request: none of them client-controlled
    beyond a room name that matches ROOM_NAME."""
    route = request.match_info.route.resource
    template = route.canonical if route is not None else ""
    attributes: dict[str, tracing.AttributeValue] = {
        "http.request.method": request.method,
        "http.route": template,
        "url.scheme": request.scheme,
    }
    kind = _endpoint_kind(template)
    if kind is not None:
        attributes["sfu.session.kind"] = kind
    room = request.match_info.get("room", "")
    if room and ROOM_NAME.match(room):
        attributes["sfu.room"] = room
    return f"{request.method} {template}", attributes


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A server span around each POST to a WHIP or WHEP endpoint; other requests pass."""
    route = request.match_info.route.resource
    if (
        request.method != "POST"
        or route is None
        or _endpoint_kind(route.canonical) is None
        or not tracing.enabled()
    ):
        return await handler(request)
    name, attributes = server_span_attributes(request)
    with tracing.span(name, kind="server", attributes=attributes) as span:
        response = await handler(request)
        span.set("http.response.status_code", response.status)
        if response.status >= 500:  # a server span fails on 5xx only (4xx: the client's)
            span.fail(str(response.status))
        return response
