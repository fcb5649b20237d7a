"""Who the client is (behind trusted proxies) and how often it may call the API.

The client address is the TCP peer, unless that peer is one of TRUSTED_PROXIES: then
X-Forwarded-For is read from the right, skipping trusted hops, and the first untrusted
address is the client. A client can prepend anything it likes to X-Forwarded-For, but it
cannot get past the hop its trusted proxy appended, so spoofing from outside gets nowhere.

Clients are keyed by IPv4 address or IPv6 /64 (one subscriber line usually owns a /64), and
each key gets a token bucket of RATE_LIMIT_RPS per second and RATE_LIMIT_BURST deep. The
table is bounded: buckets that refilled completely are equivalent to none and are dropped
first, and past MAX_CLIENTS the least recently used bucket goes.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.http.errors import Handler, HttpError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_CLIENTS = 65536
IPV6_PREFIX = 64
UNKNOWN_CLIENT = "unknown"  # no peer address (unix socket): one shared bucket


def _parse(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> IPAddress | None:
    """The client's address: `peer`, or the first untrusted X-Forwarded-For hop from the right.

    `forwarded_for` holds every X-Forwarded-For header in order (a proxy may add its own
    header rather than extend the last one).
    """
    address = _parse(peer) if peer else None
    if address is None or not trusted:
        return address
    hops = [hop for header in forwarded_for for hop in header.split(",") if hop.strip()]
    while _is_trusted(address, trusted) and hops:
        hop = _parse(hops.pop())
        if hop is None:
            break  # garbage: keep the last address a trusted proxy vouched for
        address = hop
    return address


def _is_trusted(address: IPAddress, trusted: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in trusted)


def client_key(address: IPAddress | None) -> str:
    if address is None:
        return UNKNOWN_CLIENT
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


class TokenBuckets:
    """One token bucket per key, in bounded memory."""

    def __init__(
        self,
        rate: float,
        burst: int,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate  # RateLimit.configure changes rate and burst live
        self.burst = float(max(burst, 1))  # live-webrtc-go: a burst <= 0 means 1
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, time

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one will be available."""
        now = self._clock()
        state = self._buckets.pop(key, None)
        if state is None:
            tokens = self.burst
        else:
            tokens, then = state
            tokens = min(self.burst, tokens + (now - then) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)  # most recently used at the end
        self._evict(now)
        return wait

    def _evict(self, now: float) -> None:
        # Oldest first is least recently used first; a full bucket holds no information.
        while self._buckets:
            key, (tokens, then) = next(iter(self._buckets.items()))
            full = tokens + (now - then) * self.rate >= self.burst
            if not full and len(self._buckets) <= self.max_clients:
                break
            del self._buckets[key]


CLIENT_KEY = "live_sfu.client_key"


def request_client_key(request: web.Request, trusted: Sequence[Network]) -> str:
    """The rate-limit key of `request`'s client, computed once per request."""
    cached = request.get(CLIENT_KEY)
    if isinstance(cached, str):
        return cached
    address = client_address(request.remote, request.headers.getall("X-Forwarded-For", []), trusted)
    key = client_key(address)
    request[CLIENT_KEY] = key
    return key


# Session resources are exempt: their URL is a 192-bit capability, and a trickling client
# sends a burst of PATCHes by design.
EXEMPT_PREFIXES = ("/api/whip/session/", "/api/whep/session/")


def is_limited(request: web.Request) -> bool:
    path = request.path
    return (
        request.method != "OPTIONS"
        and path.startswith("/api/")
        and not path.startswith(EXEMPT_PREFIXES)
    )


class RateLimit:
    """RATE_LIMIT_RPS, RATE_LIMIT_BURST and TRUSTED_PROXIES as the requests read them now.

    `configure` takes new values (a reload): a changed rate or burst applies to the existing
    buckets, so a client keeps what it has used; a rate of 0 turns the limit off.
    """

    def __init__(self, rate: float, burst: int, trusted: Sequence[Network]) -> None:
        self.buckets: TokenBuckets | None = None
        self.trusted: Sequence[Network] = ()
        self.configure(rate, burst, trusted)

    def configure(self, rate: float, burst: int, trusted: Sequence[Network]) -> None:
        self.trusted = list(trusted)
        if rate <= 0:
            self.buckets = None
        elif self.buckets is None:
            self.buckets = TokenBuckets(rate, burst)
        else:
            self.buckets.rate = rate
            self.buckets.burst = float(max(burst, 1))


def rate_limit_middleware(limit: RateLimit, on_refused: Callable[[], None]) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        buckets = limit.buckets
        if buckets is not None and is_limited(request):
            wait = buckets.take(request_client_key(request, limit.trusted))
            if wait > 0:
                on_refused()
                retry_after = str(max(1, math.ceil(wait)))
                raise HttpError(
                    429,
                    "rate_limited",
                    f"too many requests; retry after {retry_after} s",
                    {"Retry-After": retry_after},
                )
        return await handler(request)

    return middleware
