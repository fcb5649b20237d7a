"""The external auth hook (AUTH_HOOK_URL): the operator's HTTP service decides who may
publish and play, as MediaMTX's `authHTTPAddress` does.

On each WHIP (publish) and WHEP (play) POST the gateway POSTs JSON to the hook:

    {"action": "publish" | "play", "room": ..., "path": <the room>, "protocol": "whip" | "whep",
     "client_ip": ..., "ip": <the same>, "user_agent": ..., "query": {name: value},
     "token": <the credential> | "token_sha256": <its SHA-256, hex>}

(`token` only with AUTH_HOOK_SEND_TOKEN; `null` / no `token_sha256` when none was sent.)
Any 2xx allows; 401 and 403 refuse with that status; any other status (redirects are not
followed), a timeout (AUTH_HOOK_TIMEOUT) or a connection error is 503 with Retry-After:
the gateway never allows on a failure. An allow is cached for AUTH_HOOK_CACHE_TTL seconds,
keyed on action, room, the credential's SHA-256, the client's address and the query;
refusals and failures are never cached. One aiohttp ClientSession serves every request for
the life of the app.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

from gateway.config import AccessConfig
from gateway.http.errors import RETRY_AFTER_SECONDS, HttpError

log = logging.getLogger(__name__)

Key = tuple[str, str, str, str, str]
_K = TypeVar("_K")
MAX_CACHED = 10_000  # allows kept at most (oldest dropped first)
WARN_INTERVAL_S = 10.0  # at most one warning this often about a failing hook
REALM = "live-sfu"
USER_AGENT = "live-sfu-auth-hook"

# Outcomes, the `outcome` label of live_auth_hook_requests_total.
ALLOW, DENY, ERROR, TIMEOUT, UNREACHABLE, CACHED = (
    "allow",
    "deny",
    "error",
    "timeout",
    "unreachable",
    "cached",
)


@dataclass(frozen=True)
class HookRequest:
    action: str  # "publish" | "play"
    room: str
    protocol: str  # "whip" | "whep"
    token: str | None
    client_ip: str
    user_agent: str
    query: dict[str, str]


def token_sha256(token: str | None) -> str | None:
    if token is None:
        return None
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _ignore(_outcome: str, _seconds: float | None) -> None:
    return None


class AuthHook:
    def __init__(self, config: AccessConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = config.auth_hook_url
        self.timeout = config.auth_hook_timeout
        self.cache_ttl = config.auth_hook_cache_ttl
        self.send_token = config.auth_hook_send_token
        self.clock = clock
        # (action, room, token sha256, client ip, query sha256) -> expiry (monotonic)
        self._allowed: OrderedDict[Key, float] = OrderedDict()
        # (room, token sha256, client ip) -> expiry of its latest allow
        self._recent: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._session: aiohttp.ClientSession | None = None
        self._last_warning = -WARN_INTERVAL_S
        # Metrics (gateway/metrics.py GatewayCounters.observe_auth_hook): outcome, seconds.
        self.observe: Callable[[str, float | None], None] = _ignore

    def body(self, request: HookRequest) -> dict[str, object]:
        body: dict[str, object] = {
            "action": request.action,
            "room": request.room,
            "path": request.room,
            "protocol": request.protocol,
            "client_ip": request.client_ip,
            "ip": request.client_ip,
            "user_agent": request.user_agent,
            "query": request.query,
        }
        if self.send_token:
            body["token"] = request.token
        else:
            body["token_sha256"] = token_sha256(request.token)
        return body

    @staticmethod
    def _key(request: HookRequest) -> Key:
        """The cache key: action, room, credential, client, and the query (the hook may
        decide on it: a token in the URL, a signed expiry)."""
        query = hashlib.sha256(repr(sorted(request.query.items())).encode()).hexdigest()
        token = token_sha256(request.token) or ""
        return (request.action, request.room, token, request.client_ip, query)

    def allowed_recently(self, room: str, token: str | None, client: str) -> bool:
        """An allow of either action in `room` is still cached for this credential and
        client, whatever its query (for answers that only add detail when allowed, e.g.
        TURN credentials)."""
        expiry = self._recent.get((room, token_sha256(token) or "", client))
        return expiry is not None and expiry > self.clock()

    async def check(self, request: HookRequest) -> None:
        """Return when the hook allows `request` (or allowed it within the cache TTL); raise
        the HttpError to answer otherwise."""
        key = self._key(request)
        now = self.clock()
        expiry = self._allowed.get(key)
        if expiry is not None:
            if expiry > now:
                self.observe(CACHED, None)
                return
            del self._allowed[key]
        status = await self._ask(request)
        if 200 <= status < 300:
            if self.cache_ttl > 0:
                expiry = self.clock() + self.cache_ttl
                _remember(self._allowed, key, expiry, self.clock())
                _remember(self._recent, (key[1], key[2], key[3]), expiry, self.clock())
            return
        what = f"the auth hook refused to let this client {request.action} room {request.room!r}"
        if status == 401:
            raise HttpError(
                401, "unauthorized", what, {"WWW-Authenticate": f'Bearer realm="{REALM}"'}
            )
        if status == 403:
            raise HttpError(403, "forbidden", what)
        self._warn(f"answered {status}")
        raise _unavailable("auth_hook_failed", f"the auth hook failed (status {status}); try again")

    async def _ask(self, request: HookRequest) -> int:
        """POST to the hook; its status, or raise the 503 for a timeout or connection error."""
        session = self._session
        if session is None or session.closed:
            session = self._session = aiohttp.ClientSession(
                headers={"User-Agent": USER_AGENT}, raise_for_status=False
            )
        started = time.monotonic()
        outcome = ERROR
        try:
            async with session.post(
                self.url,
                json=self.body(request),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
            ) as response:
                status = response.status
            outcome = ALLOW if 200 <= status < 300 else DENY if status in (401, 403) else ERROR
            return status
        except TimeoutError:
            outcome = TIMEOUT
            self._warn(f"did not answer within {self.timeout:g} s (AUTH_HOOK_TIMEOUT)")
            raise _unavailable(
                "auth_hook_timeout", "the auth hook did not answer in time"
            ) from None
        except aiohttp.ClientError as exc:
            outcome = UNREACHABLE
            self._warn(f"is unreachable: {type(exc).__name__}")
            raise _unavailable("auth_hook_unreachable", "the auth hook is unreachable") from None
        finally:
            self.observe(outcome, time.monotonic() - started)

    def _warn(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL_S:
            self._last_warning = now
            # Never the URL itself: it may carry a secret.
            log.warning("the auth hook (AUTH_HOOK_URL) %s; publish and play answer 503", what)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _remember(cache: OrderedDict[_K, float], key: _K, expiry: float, now: float) -> None:
    """Bounded: past MAX_CACHED, expired entries go, then the oldest."""
    cache[key] = expiry
    cache.move_to_end(key)
    if len(cache) > MAX_CACHED:
        for stale in [k for k, e in cache.items() if e <= now]:
            del cache[stale]
        while len(cache) > MAX_CACHED:
            cache.popitem(last=False)


def _unavailable(code: str, message: str) -> HttpError:
    return HttpError(503, code, message, {"Retry-After": RETRY_AFTER_SECONDS})
