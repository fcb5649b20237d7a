"""sfu-gateway's settings table: one flag and one environment variable each.

Names marked "live-webrtc-go" keep that server's environment variable so operators can
migrate without renaming anything. The settings the gateway hands its local workers are the
worker's own Setting objects (common/worker_settings.py), described here as the gateway
uses them; gateway/config.py turns the parsed table into typed, grouped configuration.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from common import worker_settings as worker
from common.settings import (
    Setting,
    parse_bool,
    parse_csv,
    parse_int_range,
    parse_positive_float,
    text,
)

PROG = "sfu-gateway"
DESCRIPTION = "WHIP/WHEP HTTP gateway of live-sfu; supervises the media workers."
MAX_BODY_LIMIT = 64 * 1024 * 1024
ROOM_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # live-webrtc-go's room names
# HMAC only: the server pins these, a token's own "alg" header never chooses the algorithm.
HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
# sockaddr_un.sun_path is 108 bytes on Linux; leave room for "/gateway.sock" and the NUL.
MAX_IPC_DIR_LENGTH = 90

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- parsers of the gateway's own settings ----------------------------------------


@dataclass(frozen=True)
class HttpAddress:
    host: str | None  # None: every interface
    port: int

    def url(self, scheme: str) -> str:
        host = self.host or "0.0.0.0"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"


def parse_http_addr(raw: str) -> HttpAddress:
    """':8080', 'host:8080' or '[::1]:8080' (the Go net.Listen forms live-webrtc-go accepts)."""
    text = raw.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError("expected [IPv6]:PORT")
        ipaddress.IPv6Address(host)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("expected :PORT, HOST:PORT or [IPv6]:PORT")
        if ":" in host:
            raise ValueError("put an IPv6 address in brackets: [IPv6]:PORT")
    port = parse_int_range(1, 65535)(port_text)
    return HttpAddress(host or None, port)


def parse_workers(raw: str) -> int:
    """'auto' (or empty) -> one per CPU; '0' -> no local worker (remote workers only)."""
    text = raw.strip().lower()
    if text in ("auto", ""):
        return os.cpu_count() or 1
    return parse_int_range(0, 1024)(text)


def parse_worker_listen(raw: str) -> str:
    text = raw.strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError("expected tcp://HOST:PORT, e.g. tcp://0.0.0.0:7700")
    return text


def parse_ipc_dir(raw: str) -> str:
    text = raw.strip()
    if len(text) > MAX_IPC_DIR_LENGTH:
        raise ValueError(f"path longer than {MAX_IPC_DIR_LENGTH} characters (unix socket limit)")
    return text


def _parse_ice_urls(raw: str, schemes: tuple[str, ...]) -> list[str]:
    urls = parse_csv(raw)
    for url in urls:
        scheme, sep, rest = url.partition(":")
        if not sep or scheme.lower() not in schemes or not rest:
            raise ValueError(f"{url!r} must start with {' or '.join(s + ':' for s in schemes)}")
    return urls


def parse_stun_urls(raw: str) -> list[str]:
    return _parse_ice_urls(raw, ("stun", "stuns"))


def parse_turn_urls(raw: str) -> list[str]:
    return _parse_ice_urls(raw, ("turn", "turns"))


RIGHTS = ("publish", "play")


@dataclass(frozen=True)
class RoomToken:
    """One ROOM_TOKENS grant: `token` may publish to and/or play `room`."""

    room: str
    token: str
    publish: bool = True
    play: bool = True


def parse_room_tokens(raw: str) -> tuple[RoomToken, ...]:
    """live-webrtc-go's ROOM_TOKENS, 'room1:tok1;room2:tok2', plus an optional right:
    'room:token:publish' or 'room:token:play' (without one: both).

    The room is what comes before the first ':'. A token may contain ':'; only a *final*
    ':publish' or ':play' segment (exact, lower case) is a right, so a token that itself ends
    in one of those is written with its right after it ('r:key:play:publish' is the token
    'key:play' with the publish right). A room may list several tokens; the same token listed
    twice for a room gets the union of the rights.
    """
    rights: dict[tuple[str, str], tuple[bool, bool]] = {}
    for piece in raw.split(";"):
        if not piece.strip():
            continue  # a trailing ';' is harmless
        room, sep, token = (part.strip() for part in piece.partition(":"))
        publish = play = True
        head, colon, right = token.rpartition(":")
        if colon and right.strip() in RIGHTS:
            if not head.strip():
                raise ValueError(f"room {room!r}: empty token before :{right.strip()}")
            token = head.strip()
            publish, play = right.strip() == "publish", right.strip() == "play"
        if not sep or not token:
            raise ValueError("expected room:token[:publish|:play] entries separated by ';'")
        if not ROOM_NAME_PATTERN.match(room):
            raise ValueError(f"room {room!r} is not a valid room name")
        had_publish, had_play = rights.get((room, token), (False, False))
        rights[(room, token)] = (had_publish or publish, had_play or play)
    return tuple(RoomToken(r, t, pub, pl) for (r, t), (pub, pl) in rights.items())


def parse_optional_http_addr(raw: str) -> HttpAddress | None:
    return parse_http_addr(raw) if raw.strip() else None


def parse_allowed_origins(raw: str) -> list[str]:
    """'*' or a comma separated list of exact origins (scheme://host[:port])."""
    origins = parse_csv(raw)
    if origins == ["*"]:
        return origins
    if not origins:
        raise ValueError("expected * or a comma separated list of origins")
    for origin in origins:
        parts = urlsplit(origin)
        exact = f"{parts.scheme}://{parts.netloc}"
        if parts.scheme not in ("http", "https") or not parts.hostname or origin != exact:
            raise ValueError(
                f"{origin!r} is not an exact origin such as https://example.com or "
                "http://localhost:3000 (no path, no trailing slash)"
            )
    return [origin.lower() for origin in origins]


def parse_networks(raw: str) -> list[Network]:
    """Comma separated CIDRs or single addresses."""
    return [ipaddress.ip_network(part, strict=False) for part in parse_csv(raw)]


def parse_non_negative_float(raw: str) -> float:
    value = float(raw.strip())
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number >= 0")
    return value


def parse_jwt_algorithms(raw: str) -> list[str]:
    algorithms = [part.upper() for part in parse_csv(raw)]
    if not algorithms or any(a not in HMAC_ALGORITHMS for a in algorithms):
        raise ValueError(f"expected a comma separated subset of {', '.join(HMAC_ALGORITHMS)}")
    return algorithms


def parse_hook_url(raw: str) -> str:
    """An http:// or https:// URL with a host, or empty (none)."""
    text = raw.strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL")
    _ = parts.port  # raises ValueError for a bad port
    return text


def parse_hook_urls(raw: str) -> tuple[str, ...]:
    """Comma separated http(s) URLs."""
    return tuple(parse_hook_url(url) for url in parse_csv(raw))


def parse_s3_endpoint(raw: str) -> str:
    """HOST[:PORT] as minio expects it; the scheme comes from S3_USE_SSL."""
    text = raw.strip()
    if not text:
        return ""
    if "://" in text:
        raise ValueError("give HOST[:PORT] without a scheme (S3_USE_SSL chooses https or http)")
    parts = urlsplit("//" + text)
    if not parts.hostname or parts.path or parts.query or parts.fragment:
        raise ValueError("expected HOST[:PORT], e.g. s3.amazonaws.com or 127.0.0.1:9000")
    _ = parts.port  # raises ValueError for a bad port
    return text


def parse_path_style(raw: str) -> bool | None:
    """'' = minio's choice (virtual-host for AWS, path style for other endpoints)."""
    return None if not raw.strip() else parse_bool(raw)


# --- the table, in --help order ---------------------------------------------------------------

HTTP_ADDR = Setting("http_addr", "HTTP_ADDR", ":8080", "HTTP listen address", parse_http_addr)
WORKERS = Setting(
    "workers",
    "WORKERS",
    "auto",
    "local media worker processes; auto = one per CPU, 0 = remote workers only",
    parse_workers,
)
WORKER_LISTEN = Setting(
    "worker_listen",
    "WORKER_LISTEN",
    "",
    "also accept remote workers on this tcp:// endpoint",
    parse_worker_listen,
)
IPC_DIR = Setting(
    "ipc_dir",
    "IPC_DIR",
    "",
    "directory of the local worker socket; empty = a fresh private temp dir",
    parse_ipc_dir,
)
STUN_URLS = Setting(
    "stun_urls",
    "STUN_URLS",
    "stun:stun.l.google.com:19302",
    "comma separated STUN URLs",
    parse_stun_urls,
)
TURN_URLS = Setting(
    "turn_urls", "TURN_URLS", "", "comma separated turn:/turns: URLs", parse_turn_urls
)
TURN_USERNAME = Setting("turn_username", "TURN_USERNAME", "", "static TURN username", text)
TURN_PASSWORD = Setting(
    "turn_password", "TURN_PASSWORD", "", "static TURN password", text, secret=True
)
MAX_SUBS_PER_ROOM = Setting(
    "max_subs_per_room",
    "MAX_SUBS_PER_ROOM",
    "0",
    "subscribers per room, pending ones included; 0 = unlimited",
    parse_int_range(0, 1_000_000),
)
TLS_CERT_FILE = Setting(
    "tls_cert_file",
    "TLS_CERT_FILE",
    "",
    "PEM certificate; serve HTTPS with TLS_KEY_FILE",
    text,
)
TLS_KEY_FILE = Setting(
    "tls_key_file", "TLS_KEY_FILE", "", "PEM private key for TLS_CERT_FILE", text
)
MAX_BODY_BYTES = Setting(
    "max_body_bytes",
    "MAX_BODY_BYTES",
    "1048576",
    "largest accepted request body (SDP offer or trickle fragment)",
    parse_int_range(1024, MAX_BODY_LIMIT),
)
# What local workers get, as the gateway describes it (the settings are the worker's own).
UDP_PORTS = worker.UDP_PORTS.described(
    "media UDP port range LOW-HIGH, split evenly between local workers; empty = OS choice"
)
BIND_ADDRESSES = worker.BIND_ADDRESSES.described("comma separated IPs for media sockets")
PUBLIC_IP = worker.PUBLIC_IP.described(
    "comma separated public IPv4/IPv6 addresses or host names (resolved once, at start) "
    "announced before the host addresses of the same family (1:1 NAT)"
)
# Network reach (docs/networking.md): one port per local worker, interfaces, discovery.
UDP_MUX_PORT = worker.UDP_MUX_PORT.described(
    "one UDP port per local worker for all its sessions: worker k listens on UDP_MUX_PORT+k "
    "(empty: a socket per session, see UDP_PORTS)"
)
TCP_MUX_PORT = worker.TCP_MUX_PORT.described(
    "ICE-TCP (passive), one TCP port per local worker: worker k listens on TCP_MUX_PORT+k "
    "(empty: no ICE-TCP)"
)
BIND_INTERFACES = worker.BIND_INTERFACES.described(
    "comma separated interface names local workers gather on (default: every interface but "
    "container bridges; never link-local; BIND_ADDRESSES wins)"
)
STUN_DISCOVER = worker.STUN_DISCOVER.described(
    "stun:HOST:PORT asked once at start for this host's public address: announced when "
    "PUBLIC_IP has none of its family, a warning when PUBLIC_IP differs"
)
SESSION_CONNECT_TIMEOUT = worker.SESSION_CONNECT_TIMEOUT.described(
    "seconds a new session may take to connect before it is closed"
)
INSTANT_START = worker.INSTANT_START.described(
    "local workers replay each video track's latest keyframe onwards to joining viewers"
)
INSTANT_START_MAX_BYTES = worker.INSTANT_START_MAX_BYTES.described(
    "per video track, the most bytes local workers keep for instant start (a longer group "
    "of pictures is not replayed)"
)
TRANSPORT_CC = worker.TRANSPORT_CC.described(
    "local workers answer publishers' transport-cc and send them its feedback, so browsers "
    "ramp up their bitrate within seconds (true/false; false: REMB only)"
)
CERT_ROTATE = worker.CERT_ROTATE.described(
    "seconds between new DTLS certificates of each local worker (one certificate per worker "
    "for its new sessions, not one per session; at most 14 days)"
)
WORKER_TOKEN = worker.WORKER_TOKEN.described("shared secret remote workers present in Hello")
HEARTBEAT_INTERVAL = Setting(
    "heartbeat_interval",
    "HEARTBEAT_INTERVAL",
    "0.25",
    "seconds between worker heartbeats",
    parse_positive_float,
)
WORKER_TIMEOUT = Setting(
    "worker_timeout",
    "WORKER_TIMEOUT",
    "1.5",
    "seconds without a heartbeat after which a worker is unresponsive: it gets no new "
    "sessions and requests to it fail at once with 503, but its rooms are kept",
    parse_positive_float,
)
WORKER_DEAD_TIMEOUT = Setting(
    "worker_dead_timeout",
    "WORKER_DEAD_TIMEOUT",
    "10",
    "seconds without a heartbeat after which a worker is declared dead: its rooms are "
    "dropped and a local one is stopped (SIGTERM, then SIGKILL) and replaced",
    parse_positive_float,
)
GATEWAY_TIMEOUT = worker.GATEWAY_TIMEOUT.described(
    "seconds local workers go on without this gateway before they exit"
)
IPC_TIMEOUT = Setting(
    "ipc_timeout",
    "IPC_TIMEOUT",
    "10",
    "seconds to wait for a worker's answer",
    parse_positive_float,
)
SPREAD_ROOMS = Setting(
    "spread_rooms",
    "SPREAD_ROOMS",
    "true",
    "let the viewers of a busy room spill over onto other local workers, which read its "
    "publisher's packets from its worker through shared memory (true/false; false: every "
    "session of a room goes to the room's worker)",
    parse_bool,
)
SPREAD_THRESHOLD = Setting(
    "spread_threshold",
    "SPREAD_THRESHOLD",
    "100",
    "with SPREAD_ROOMS, the sessions (of all rooms) a room's worker may hold before new "
    "viewers of its rooms go to the least loaded local worker instead; 0 = spread at once",
    parse_int_range(0, 1_000_000),
)
LOG_LEVEL = worker.LOG_LEVEL.described(
    "debug, info, warning or error (the gateway's changes on SIGHUP; its workers' at restart)"
)
LOG_FORMAT = worker.LOG_FORMAT.described(
    "text (one line per record) or json (one JSON object per line), gateway and workers alike"
)
# Operations: where a reload reads the configuration, and how long a stop waits.
CONFIG_FILE = Setting(
    "config_file",
    "CONFIG_FILE",
    "",
    "VAR=value file (systemd EnvironmentFile syntax) read at start and on SIGHUP; "
    "flags and environment variables override it",
    text,
)
DRAIN_TIMEOUT = Setting(
    "drain_timeout",
    "DRAIN_TIMEOUT",
    "30",
    "seconds a stop (SIGTERM) lets live sessions end by themselves before it closes them; "
    "0 = close them at once",
    parse_non_negative_float,
)
# Access control (live-webrtc-go names).
ALLOWED_ORIGIN = Setting(
    "allowed_origin",
    "ALLOWED_ORIGIN",
    "*",
    "CORS: * or a comma separated list of exact origins (https://app.example.com)",
    parse_allowed_origins,
)
AUTH_TOKEN = Setting(
    "auth_token",
    "AUTH_TOKEN",
    "",
    "token that grants every room without its own token",
    text,
    secret=True,
)
ROOM_TOKENS = Setting(
    "room_tokens",
    "ROOM_TOKENS",
    "",
    "per-room tokens room1:tok1;room2:tok2, each optionally :publish or :play (default "
    "both); several per room; AUTH_TOKEN does not open these rooms",
    parse_room_tokens,
    secret=True,
)
JWT_SECRET = Setting(
    "jwt_secret", "JWT_SECRET", "", "HMAC key; enables JWT bearer tokens", text, secret=True
)
JWT_AUDIENCE = Setting(
    "jwt_audience", "JWT_AUDIENCE", "", "required aud claim of JWTs, when set", text
)
JWT_ALGORITHMS = Setting(
    "jwt_algorithms",
    "JWT_ALGORITHMS",
    ",".join(HMAC_ALGORITHMS),
    "accepted JWT algorithms (HMAC only)",
    parse_jwt_algorithms,
)
ADMIN_TOKEN = Setting(
    "admin_token",
    "ADMIN_TOKEN",
    "",
    "token for the admin API; empty = JWT admins only",
    text,
    secret=True,
)
# Rights, the external auth hook and webhooks (docs/auth-and-webhooks.md).
PLAY_OPEN = Setting(
    "play_open",
    "PLAY_OPEN",
    "false",
    "anyone may watch every room (WHEP) without a credential; publishing still needs one",
    parse_bool,
)
AUTH_HOOK_URL = Setting(
    "auth_hook_url",
    "AUTH_HOOK_URL",
    "",
    "http(s) URL POSTed a JSON description of each publish and play; 2xx allows, 401/403 "
    "refuse; it then decides instead of the tokens (the admin API stays local)",
    parse_hook_url,
    secret=True,  # a URL may carry a credential
)
AUTH_HOOK_TIMEOUT = Setting(
    "auth_hook_timeout",
    "AUTH_HOOK_TIMEOUT",
    "2",
    "seconds to wait for the auth hook; slower or unreachable: 503 with Retry-After",
    parse_positive_float,
)
AUTH_HOOK_CACHE_TTL = Setting(
    "auth_hook_cache_ttl",
    "AUTH_HOOK_CACHE_TTL",
    "10",
    "seconds an allow of the auth hook is reused for the same action, room, credential "
    "and client address; 0 = ask every time",
    parse_non_negative_float,
)
AUTH_HOOK_SEND_TOKEN = Setting(
    "auth_hook_send_token",
    "AUTH_HOOK_SEND_TOKEN",
    "false",
    "send the auth hook the credential itself (token) instead of its SHA-256 (token_sha256)",
    parse_bool,
)
WEBHOOK_URLS = Setting(
    "webhook_urls",
    "WEBHOOK_URLS",
    "",
    "comma separated http(s) URLs that get signed JSON events (room, publisher, viewer, "
    "recording); needs WEBHOOK_SECRET",
    parse_hook_urls,
    secret=True,  # webhook URLs are often bearer URLs
)
WEBHOOK_SECRET = Setting(
    "webhook_secret",
    "WEBHOOK_SECRET",
    "",
    "HMAC-SHA256 key of the Live-Sfu-Signature header of webhook requests",
    text,
    secret=True,
)
WEBHOOK_QUEUE = Setting(
    "webhook_queue",
    "WEBHOOK_QUEUE",
    "",
    "SQLite file of the webhook events not delivered yet (survives restarts); "
    "empty = .webhooks.sqlite3 in RECORD_DIR",
    text,
)
WEBHOOK_MAX_AGE = Setting(
    "webhook_max_age",
    "WEBHOOK_MAX_AGE",
    "86400",
    "seconds a webhook event is retried (backoff 1 s doubling to 60 s) before it is dropped",
    parse_positive_float,
)
RATE_LIMIT_RPS = Setting(
    "rate_limit_rps",
    "RATE_LIMIT_RPS",
    "20",
    "API requests per second per client IP (IPv6 per /64); 0 = no limit",
    parse_non_negative_float,
)
RATE_LIMIT_BURST = Setting(
    "rate_limit_burst",
    "RATE_LIMIT_BURST",
    "40",
    "bucket size of the rate limit; 0 = 1, as in live-webrtc-go",
    parse_int_range(0, 1_000_000),
)
TRUSTED_PROXIES = Setting(
    "trusted_proxies",
    "TRUSTED_PROXIES",
    "",
    "CIDRs of reverse proxies whose X-Forwarded-For is believed",
    parse_networks,
)
MAX_SESSIONS_PER_IP = Setting(
    "max_sessions_per_ip",
    "MAX_SESSIONS_PER_IP",
    "0",
    "concurrent sessions per client IP (IPv6 per /64); 0 = unlimited",
    parse_int_range(0, 1_000_000),
)
MAX_SESSIONS_PER_WORKER = Setting(
    "max_sessions_per_worker",
    "MAX_SESSIONS_PER_WORKER",
    "0",
    "sessions one media worker may hold; 0 = unlimited",
    parse_int_range(0, 1_000_000),
)
MAX_PENDING_SESSIONS_PER_IP = Setting(
    "max_pending_sessions_per_ip",
    "MAX_PENDING_SESSIONS_PER_IP",
    "20",
    "sessions not yet connected per client IP (IPv6 per /64); 0 = unlimited",
    parse_int_range(0, 1_000_000),
)
MAX_PENDING_SESSIONS = Setting(
    "max_pending_sessions",
    "MAX_PENDING_SESSIONS",
    "1000",
    "sessions not yet connected, over all workers; 0 = unlimited",
    parse_int_range(0, 1_000_000),
)
TURN_SECRET = Setting(
    "turn_secret",
    "TURN_SECRET",
    "",
    "shared secret of the TURN server's REST API (coturn use-auth-secret)",
    text,
    secret=True,
)
TURN_TTL = Setting(
    "turn_ttl",
    "TURN_TTL",
    "86400",
    "seconds TURN REST credentials stay valid",
    parse_int_range(60, 7 * 86400),
)
METRICS_ADDR = Setting(
    "metrics_addr",
    "METRICS_ADDR",
    "",
    "serve /metrics on this address only (e.g. 127.0.0.1:9100); empty = on HTTP_ADDR",
    parse_optional_http_addr,
)
# Recording and upload (live-webrtc-go's names).
RECORD_ENABLED = worker.RECORD_ENABLED.described("record every publisher track")
RECORD_DIR = worker.RECORD_DIR
UPLOAD_RECORDINGS = Setting(
    "upload_recordings",
    "UPLOAD_RECORDINGS",
    "0",
    "upload finished recordings from RECORD_DIR to S3 (needs the S3_* settings)",
    parse_bool,
)
DELETE_RECORDING_AFTER_UPLOAD = Setting(
    "delete_recording_after_upload",
    "DELETE_RECORDING_AFTER_UPLOAD",
    "0",
    "delete the local file once the uploaded object has the same size",
    parse_bool,
)
S3_ENDPOINT = Setting(
    "s3_endpoint", "S3_ENDPOINT", "", "S3 endpoint HOST[:PORT]", parse_s3_endpoint
)
S3_REGION = Setting(
    "s3_region", "S3_REGION", "", "S3 region (empty: asked from the endpoint)", text
)
S3_BUCKET = Setting("s3_bucket", "S3_BUCKET", "", "bucket for recordings (must exist)", text)
S3_ACCESS_KEY = Setting("s3_access_key", "S3_ACCESS_KEY", "", "S3 access key", text, secret=True)
S3_SECRET_KEY = Setting("s3_secret_key", "S3_SECRET_KEY", "", "S3 secret key", text, secret=True)
S3_PREFIX = Setting("s3_prefix", "S3_PREFIX", "", "object key prefix: PREFIX/NAME", text)
S3_USE_SSL = Setting("s3_use_ssl", "S3_USE_SSL", "1", "HTTPS to the S3 endpoint (1/0)", parse_bool)
S3_PATH_STYLE = Setting(
    "s3_path_style",
    "S3_PATH_STYLE",
    "",
    "1 = path-style bucket URLs (MinIO), 0 = virtual-host; empty = by endpoint",
    parse_path_style,
)

# --- several nodes (gateway/cluster/, docs/cluster.md): one room directory in Redis ---------

NODE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")  # no '.': see node_session_id


def parse_redis_url(raw: str) -> str:
    """redis://[user:password@]HOST[:PORT][/DB], rediss:// (TLS) or unix:///path; '' = off."""
    text = raw.strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError("expected redis://HOST[:PORT][/DB] or rediss://...")
        _ = parts.port  # raises ValueError for a bad port
    elif parts.scheme == "unix":
        if not parts.path:
            raise ValueError("expected unix:///path/to/redis.sock")
    else:
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    return text


def default_node_id() -> str:
    """This host's name up to its first dot, reduced to what NODE_ID allows."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0]).strip("-_")
    return (name or "node")[:63]


def parse_node_id(raw: str) -> str:
    text = raw.strip() or default_node_id()
    if not NODE_ID_PATTERN.match(text):
        raise ValueError("use 1 to 63 of A-Z a-z 0-9 _ - (starting with a letter or digit)")
    return text


def parse_node_url(raw: str) -> str:
    """The public base URL of this node's HTTP: http(s)://HOST[:PORT][/PREFIX], no query."""
    text = raw.strip().rstrip("/")
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected http(s)://HOST[:PORT][/PREFIX], e.g. https://media1.example.com")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("a base URL without credentials, query or fragment")
    _ = parts.port  # raises ValueError for a bad port
    return text


def parse_node_token(raw: str) -> str:
    if raw and len(raw) < 16:
        raise ValueError("at least 16 characters")
    return raw


REDIS_URL = Setting(
    "redis_url",
    "REDIS_URL",
    "",
    "redis://[user:password@]HOST[:PORT][/DB], rediss:// or unix:// URL of the room directory "
    "shared by several nodes; empty = one node, no Redis (needs NODE_URL)",
    parse_redis_url,
    secret=True,  # may carry the password
)
REDIS_PASSWORD = Setting(
    "redis_password",
    "REDIS_PASSWORD",
    "",
    "Redis password (AUTH) when REDIS_URL carries none",
    text,
    secret=True,
)
NODE_ID = Setting(
    "node_id",
    "NODE_ID",
    "",
    "this node's name in the room directory, unique per node; empty = the host name",
    parse_node_id,
)
NODE_URL = Setting(
    "node_url",
    "NODE_URL",
    "",
    "public base URL clients reach this node's HTTP at (redirects and session Locations "
    "point there); required with REDIS_URL",
    parse_node_url,
)
NODE_TOKEN = Setting(
    "node_token",
    "NODE_TOKEN",
    "",
    "secret shared by the nodes (the same on each): signs redirect grants (credentials "
    "across a 307) and authenticates the relay; at least 16 characters",
    parse_node_token,
    secret=True,
)
NODE_TTL = Setting(
    "node_ttl",
    "NODE_TTL",
    "10",
    "seconds a node stays in the directory after its last heartbeat (heartbeats every "
    "quarter of the shorter of NODE_TTL and ROOM_TTL)",
    parse_positive_float,
)
ROOM_TTL = Setting(
    "room_ttl",
    "ROOM_TTL",
    "10",
    "seconds a room's home stays recorded after its node last refreshed it: how long the "
    "rooms of a killed node block a new home",
    parse_positive_float,
)
CLUSTER_SETTINGS: tuple[Setting[Any], ...] = (
    REDIS_URL,
    REDIS_PASSWORD,
    NODE_ID,
    NODE_URL,
    NODE_TOKEN,
    NODE_TTL,
    ROOM_TTL,
)

SETTINGS: tuple[Setting[Any], ...] = (
    HTTP_ADDR,
    WORKERS,
    WORKER_LISTEN,
    IPC_DIR,
    STUN_URLS,
    TURN_URLS,
    TURN_USERNAME,
    TURN_PASSWORD,
    MAX_SUBS_PER_ROOM,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    MAX_BODY_BYTES,
    UDP_PORTS,
    UDP_MUX_PORT,
    TCP_MUX_PORT,
    BIND_ADDRESSES,
    BIND_INTERFACES,
    PUBLIC_IP,
    STUN_DISCOVER,
    SESSION_CONNECT_TIMEOUT,
    INSTANT_START,
    INSTANT_START_MAX_BYTES,
    TRANSPORT_CC,
    CERT_ROTATE,
    WORKER_TOKEN,
    HEARTBEAT_INTERVAL,
    WORKER_TIMEOUT,
    WORKER_DEAD_TIMEOUT,
    GATEWAY_TIMEOUT,
    IPC_TIMEOUT,
    SPREAD_ROOMS,
    SPREAD_THRESHOLD,
    LOG_LEVEL,
    LOG_FORMAT,
    CONFIG_FILE,
    DRAIN_TIMEOUT,
    ALLOWED_ORIGIN,
    AUTH_TOKEN,
    ROOM_TOKENS,
    JWT_SECRET,
    JWT_AUDIENCE,
    JWT_ALGORITHMS,
    ADMIN_TOKEN,
    PLAY_OPEN,
    AUTH_HOOK_URL,
    AUTH_HOOK_TIMEOUT,
    AUTH_HOOK_CACHE_TTL,
    AUTH_HOOK_SEND_TOKEN,
    WEBHOOK_URLS,
    WEBHOOK_SECRET,
    WEBHOOK_QUEUE,
    WEBHOOK_MAX_AGE,
    RATE_LIMIT_RPS,
    RATE_LIMIT_BURST,
    TRUSTED_PROXIES,
    MAX_SESSIONS_PER_IP,
    MAX_SESSIONS_PER_WORKER,
    MAX_PENDING_SESSIONS_PER_IP,
    MAX_PENDING_SESSIONS,
    TURN_SECRET,
    TURN_TTL,
    METRICS_ADDR,
    RECORD_ENABLED,
    RECORD_DIR,
    UPLOAD_RECORDINGS,
    DELETE_RECORDING_AFTER_UPLOAD,
    S3_ENDPOINT,
    S3_REGION,
    S3_BUCKET,
    S3_ACCESS_KEY,
    S3_SECRET_KEY,
    S3_PREFIX,
    S3_USE_SSL,
    S3_PATH_STYLE,
    *CLUSTER_SETTINGS,
)
