"""CORS for every /api/ answer, from ALLOWED_ORIGIN."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from multidict import CIMultiDict

from gateway.http.errors import Handler

CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, HEAD, POST, PATCH, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type, Authorization, If-Match, X-Auth-Token",
    "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Patch, Accept-Post",
    "Access-Control-Max-Age": "600",
}


class AllowedOrigins:
    """ALLOWED_ORIGIN as the requests read it now: a reload replaces `origins`."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)


ORIGINS_KEY = web.AppKey("allowed_origins", AllowedOrigins)


def allowed_origin(request: web.Request) -> str | None:
    """The one place that picks Access-Control-Allow-Origin; None: no CORS headers at all.

    ALLOWED_ORIGIN is `*` or a list of exact origins (live-webrtc-go also took a bare host
    and matched any scheme and port of it: not any more).
    """
    origins = request.app[ORIGINS_KEY].origins
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
        add_cors(request, exc.headers)
        raise
    if not response.prepared:  # a stream (WHEP events) added its own before it started
        add_cors(request, response.headers)
    return response


def add_cors(request: web.Request, headers: CIMultiDict[str]) -> None:
    """The CORS headers of an /api/ answer, into `headers`."""
    origin = allowed_origin(request)
    if origin != "*":
        headers.add("Vary", "Origin")  # the answer depends on Origin: caches must know
    if origin is None:
        return
    headers["Access-Control-Allow-Origin"] = origin
    if origin != "*":
        headers["Access-Control-Allow-Credentials"] = "true"
    headers.update(CORS_HEADERS)
