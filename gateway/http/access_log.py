"""The access log, without secrets: no headers, session ids cut short, query values replaced."""

from __future__ import annotations

import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

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
