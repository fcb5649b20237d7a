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


def parse_room_tokens(raw: str) -> dict[str, str]:
    """live-webrtc-go's ROOM_TOKENS: 'room1:tok1;room2:tok2' (a token may contain ':')."""
    tokens: dict[str, str] = {}
    for piece in raw.split(";"):
        if not piece.strip():
            continue  # a trailing ';' is harmless
        room, sep, token = (part.strip() for part in piece.partition(":"))
        if not sep or not token:
            raise ValueError("expected room:token pairs separated by ';'")
        if not ROOM_NAME_PATTERN.match(room):
            raise ValueError(f"room {room!r} is not a valid room name")
        tokens[room] = token
    return tokens


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
PUBLIC_IP = worker.PUBLIC_IP.described("IP announced in candidates (1:1 NAT)")
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
    "per-room tokens room1:tok1;room2:tok2 (AUTH_TOKEN does not open these rooms)",
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
    BIND_ADDRESSES,
    PUBLIC_IP,
    SESSION_CONNECT_TIMEOUT,
    INSTANT_START,
    INSTANT_START_MAX_BYTES,
    TRANSPORT_CC,
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
)
