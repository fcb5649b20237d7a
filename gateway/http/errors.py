"""The one mapping from failures to HTTP answers.

Every error leaves as JSON {"error": "<what went wrong>", "code": "<short_code>"}. Nothing
escapes as a 500 or a traceback: unexpected exceptions become a logged 503.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from gateway.placement.directory import (
    NoLiveWorker,
    PlacementError,
    PublisherExists,
    RoomNotFound,
    SubscriberLimitReached,
    WorkerFull,
)
from gateway.placement.registry import WorkerUnresponsive
from ipc.channel import ChannelClosed, IpcError, PeerGone, RemoteFailure, RequestTimeout
from ipc.messages import FailureCode

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "2"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """Raised by handlers; turned into a JSON response by `error_middleware`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def json_error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = json.dumps({"error": message, "code": code})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def unavailable(code: str, message: str) -> HttpError:
    return HttpError(503, code, message, {"Retry-After": RETRY_AFTER_SECONDS})


# Worker Failure codes -> HTTP status; "refused" only answers a worker's Hello.
_REMOTE_STATUS: dict[FailureCode, int] = {
    "bad_offer": 400,
    "bad_candidate": 400,
    "ice_not_connected": 409,
    "publisher_exists": 409,
    "no_room": 404,
    "unknown_session": 404,
    "refused": 503,
    "overloaded": 503,
    "internal": 503,
}


def from_remote_failure(exc: RemoteFailure) -> HttpError:
    status = _REMOTE_STATUS.get(exc.code, 503)
    if exc.code == "overloaded":
        return unavailable(exc.code, exc.message)
    if status == 503:
        # The worker's internal message is for the log, not for the client.
        log.warning("worker failure %s: %s", exc.code, exc.message)
        return unavailable(exc.code, "the media worker could not handle the request")
    return HttpError(status, exc.code, exc.message)


def from_ipc_error(exc: IpcError) -> HttpError:
    if isinstance(exc, RemoteFailure):
        return from_remote_failure(exc)
    if isinstance(exc, RequestTimeout):
        return unavailable("worker_timeout", "the media worker did not answer in time")
    if isinstance(exc, WorkerUnresponsive):
        return unavailable("worker_unresponsive", "the media worker is not responding; try again")
    if isinstance(exc, PeerGone):
        return unavailable("worker_gone", "the media worker is gone; try again")
    if isinstance(exc, ChannelClosed):
        return unavailable("shutting_down", "the gateway is shutting down")
    return unavailable("ipc_error", "the media worker could not be reached")


def from_placement_error(exc: PlacementError) -> HttpError:
    if isinstance(exc, PublisherExists):
        return HttpError(409, "publisher_exists", "publisher already exists in this room")
    if isinstance(exc, RoomNotFound):
        return HttpError(404, "no_room", "no active publisher in room")
    if isinstance(exc, SubscriberLimitReached):
        return HttpError(403, "subscriber_limit", "subscriber limit reached")
    if isinstance(exc, NoLiveWorker):
        return unavailable("no_worker", "no media worker is available; try again shortly")
    if isinstance(exc, WorkerFull):
        return unavailable("worker_full", str(exc))
    return unavailable("placement", str(exc))


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    """aiohttp's own 404/405/413 answers, re-dressed as JSON."""
    headers = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    code = (exc.reason or "error").lower().replace(" ", "_")
    return json_error(exc.status, code, exc.reason or "error", headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HttpError as exc:
        return json_error(exc.status, exc.code, exc.message, exc.headers)
    except IpcError as exc:
        error = from_ipc_error(exc)
        return json_error(error.status, error.code, error.message, error.headers)
    except PlacementError as exc:
        error = from_placement_error(exc)
        return json_error(error.status, error.code, error.message, error.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # redirects and other successes travel as exceptions in aiohttp
        return _from_http_exception(exc)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return json_error(
            503,
            "internal",
            "internal error; try again",
            {"Retry-After": RETRY_AFTER_SECONDS},
        )
