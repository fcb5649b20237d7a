"""What aiohttp answers and logs by itself, before our middlewares see a request.

aiohttp's HTTP parser refuses malformed requests on its own: it logs the raw request bytes
(an Authorization header included) at ERROR with a traceback, and answers a plain-text 400
that echoes them. Here its refusals become our JSON errors naming only the problem, logged
as one INFO line without the bytes.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "2"


def _code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "bad_request"


def _what(exc: BaseException | None) -> str:
    """The kind of parser error, never its message (which quotes the raw request)."""
    if exc is None:
        return "malformed request"
    return type(exc).__name__


class JsonErrorRequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; the connection is closed instead")
        headers: dict[str, str] = {}
        if status >= 500:
            # Not the client's fault: an exception escaped our own error middleware.
            log.error("unhandled error answering %s", request.remote, exc_info=exc)
            status, error, code = 503, "internal error; try again", "internal"
            headers["Retry-After"] = RETRY_AFTER_SECONDS
        else:
            log.info("refused a malformed HTTP request from %s: %s", request.remote, _what(exc))
            error = f"malformed HTTP request ({_what(exc)})"
            code = _code(status)
        body = json.dumps({"error": error, "code": code})
        response = web.Response(
            status=status, text=body, content_type="application/json", headers=headers
        )
        response.force_close()
        return response


class JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


def install_json_errors(runner: web.BaseRunner) -> None:
    """Make `runner`'s server (after setup) answer parser errors as JSON."""
    server = runner.server
    if server is None:
        raise RuntimeError("call after runner.setup()")
    server.__class__ = JsonErrorServer


class ParserErrorFilter(logging.Filter):
    """Second line of defence on aiohttp's loggers: a record about a parser error keeps its
    message but loses the exception, whose text quotes the raw request bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc_info = record.exc_info
        if exc_info and isinstance(exc_info[1], HttpProcessingError):
            record.msg = f"{record.msg} ({type(exc_info[1]).__name__})"
            record.exc_info = None
            record.exc_text = None
        return True


def install_log_filter() -> None:
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access"):
        logging.getLogger(name).addFilter(ParserErrorFilter())
