"""The gateway's settings: one flag and one environment variable each.

Names marked "live-webrtc-go" keep that server's environment variable so operators can
migrate without renaming anything. Values that are only invalid in combination (TLS pair,
UDP port split) are checked after parsing and also end the program with exit code 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from ipc.settings import (
    Setting,
    die,
    load,
    parse_bool,
    parse_csv,
    parse_int_range,
    parse_ip_list,
    parse_optional_ip,
    parse_port_range,
    parse_positive_float,
)

PROG = "sfu-gateway"
DESCRIPTION = "WHIP/WHEP HTTP gateway of live-sfu; supervises the media workers."
LOG_LEVELS = ("debug", "info", "warning", "error")
MAX_BODY_LIMIT = 64 * 1024 * 1024
ROOM_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # live-webrtc-go's room names
# HMAC only: the server pins these, a token's own "alg" header never chooses the algorithm.
JWT_ALGORITHMS = ("HS256", "HS384", "HS512")
# sockaddr_un.sun_path is 108 bytes on Linux; leave room for "/gateway.sock" and the NUL.
MAX_IPC_DIR_LENGTH = 90


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


def parse_networks(raw: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Comma separated CIDRs or single addresses."""
    return [ipaddress.ip_network(part, strict=False) for part in parse_csv(raw)]


def parse_non_negative_float(raw: str) -> float:
    value = float(raw.strip())
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a number >= 0")
    return value


def parse_jwt_algorithms(raw: str) -> list[str]:
    algorithms = [part.upper() for part in parse_csv(raw)]
    if not algorithms or any(a not in JWT_ALGORITHMS for a in algorithms):
        raise ValueError(f"expected a comma separated subset of {', '.join(JWT_ALGORITHMS)}")
    return algorithms


def parse_log_level(raw: str) -> str:
    level = raw.strip().lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return level


SETTINGS: tuple[Setting, ...] = (
    Setting("http_addr", "HTTP_ADDR", ":8080", "HTTP listen address", parse_http_addr),
    Setting(
        "workers",
        "WORKERS",
        "auto",
        "local media worker processes; auto = one per CPU, 0 = remote workers only",
        parse_workers,
    ),
    Setting(
        "worker_listen",
        "WORKER_LISTEN",
        "",
        "also accept remote workers on this tcp:// endpoint",
        parse_worker_listen,
    ),
    Setting(
        "ipc_dir",
        "IPC_DIR",
        "",
        "directory of the local worker socket; empty = a fresh private temp dir",
        parse_ipc_dir,
    ),
    Setting(
        "stun_urls",
        "STUN_URLS",
        "stun:stun.l.google.com:19302",
        "comma separated STUN URLs",
        parse_stun_urls,
    ),
    Setting("turn_urls", "TURN_URLS", "", "comma separated turn:/turns: URLs", parse_turn_urls),
    Setting("turn_username", "TURN_USERNAME", "", "static TURN username"),
    Setting("turn_password", "TURN_PASSWORD", "", "static TURN password", secret=True),
    Setting(
        "max_subs_per_room",
        "MAX_SUBS_PER_ROOM",
        "0",
        "subscribers per room, pending ones included; 0 = unlimited",
        parse_int_range(0, 1_000_000),
    ),
    Setting("tls_cert_file", "TLS_CERT_FILE", "", "PEM certificate; serve HTTPS with TLS_KEY_FILE"),
    Setting("tls_key_file", "TLS_KEY_FILE", "", "PEM private key for TLS_CERT_FILE"),
    Setting(
        "max_body_bytes",
        "MAX_BODY_BYTES",
        "1048576",
        "largest accepted request body (SDP offer or trickle fragment)",
        parse_int_range(1024, MAX_BODY_LIMIT),
    ),
    Setting(
        "udp_ports",
        "UDP_PORTS",
        "",
        "media UDP port range LOW-HIGH, split evenly between local workers; empty = OS choice",
        parse_port_range,
    ),
    Setting(
        "bind_addresses",
        "BIND_ADDRESSES",
        "",
        "comma separated IPs for media sockets",
        parse_ip_list,
    ),
    Setting(
        "public_ip", "PUBLIC_IP", "", "IP announced in candidates (1:1 NAT)", parse_optional_ip
    ),
    Setting(
        "session_connect_timeout",
        "SESSION_CONNECT_TIMEOUT",
        "30",
        "seconds a new session may take to connect before it is closed",
        parse_positive_float,
    ),
    Setting(
        "instant_start",
        "INSTANT_START",
        "true",
        "local workers replay each video track's latest keyframe onwards to joining viewers",
        parse_bool,
    ),
    Setting("worker_token", "WORKER_TOKEN", "", "shared secret remote workers present in Hello"),
    Setting(
        "heartbeat_interval",
        "HEARTBEAT_INTERVAL",
        "0.25",
        "seconds between worker heartbeats",
        parse_positive_float,
    ),
    Setting(
        "worker_timeout",
        "WORKER_TIMEOUT",
        "1.5",
        "seconds without a heartbeat after which a worker is unresponsive: it gets no new "
        "sessions and requests to it fail at once with 503, but its rooms are kept",
        parse_positive_float,
    ),
    Setting(
        "worker_dead_timeout",
        "WORKER_DEAD_TIMEOUT",
        "10",
        "seconds without a heartbeat after which a worker is declared dead: its rooms are "
        "dropped and a local one is stopped (SIGTERM, then SIGKILL) and replaced",
        parse_positive_float,
    ),
    Setting(
        "ipc_timeout",
        "IPC_TIMEOUT",
        "10",
        "seconds to wait for a worker's answer",
        parse_positive_float,
    ),
    Setting("log_level", "LOG_LEVEL", "info", "debug, info, warning or error", parse_log_level),
    # --- access control (live-webrtc-go names) ---
    Setting(
        "allowed_origin",
        "ALLOWED_ORIGIN",
        "*",
        "CORS: * or a comma separated list of exact origins (https://app.example.com)",
        parse_allowed_origins,
    ),
    Setting(
        "auth_token",
        "AUTH_TOKEN",
        "",
        "token that grants every room without its own token",
        secret=True,
    ),
    Setting(
        "room_tokens",
        "ROOM_TOKENS",
        "",
        "per-room tokens room1:tok1;room2:tok2 (AUTH_TOKEN does not open these rooms)",
        parse_room_tokens,
        secret=True,
    ),
    Setting("jwt_secret", "JWT_SECRET", "", "HMAC key; enables JWT bearer tokens", secret=True),
    Setting("jwt_audience", "JWT_AUDIENCE", "", "required aud claim of JWTs, when set"),
    Setting(
        "jwt_algorithms",
        "JWT_ALGORITHMS",
        ",".join(JWT_ALGORITHMS),
        "accepted JWT algorithms (HMAC only)",
        parse_jwt_algorithms,
    ),
    Setting(
        "admin_token",
        "ADMIN_TOKEN",
        "",
        "token for the admin API; empty = JWT admins only",
        secret=True,
    ),
    Setting(
        "rate_limit_rps",
        "RATE_LIMIT_RPS",
        "20",
        "API requests per second per client IP (IPv6 per /64); 0 = no limit",
        parse_non_negative_float,
    ),
    Setting(
        "rate_limit_burst",
        "RATE_LIMIT_BURST",
        "40",
        "bucket size of the rate limit; 0 = 1, as in live-webrtc-go",
        parse_int_range(0, 1_000_000),
    ),
    Setting(
        "trusted_proxies",
        "TRUSTED_PROXIES",
        "",
        "CIDRs of reverse proxies whose X-Forwarded-For is believed",
        parse_networks,
    ),
    Setting(
        "max_sessions_per_ip",
        "MAX_SESSIONS_PER_IP",
        "0",
        "concurrent sessions per client IP (IPv6 per /64); 0 = unlimited",
        parse_int_range(0, 1_000_000),
    ),
    Setting(
        "max_sessions_per_worker",
        "MAX_SESSIONS_PER_WORKER",
        "0",
        "sessions one media worker may hold; 0 = unlimited",
        parse_int_range(0, 1_000_000),
    ),
    Setting(
        "max_pending_sessions_per_ip",
        "MAX_PENDING_SESSIONS_PER_IP",
        "20",
        "sessions not yet connected per client IP (IPv6 per /64); 0 = unlimited",
        parse_int_range(0, 1_000_000),
    ),
    Setting(
        "max_pending_sessions",
        "MAX_PENDING_SESSIONS",
        "1000",
        "sessions not yet connected, over all workers; 0 = unlimited",
        parse_int_range(0, 1_000_000),
    ),
    Setting(
        "turn_secret",
        "TURN_SECRET",
        "",
        "shared secret of the TURN server's REST API (coturn use-auth-secret)",
        secret=True,
    ),
    Setting(
        "turn_ttl",
        "TURN_TTL",
        "86400",
        "seconds TURN REST credentials stay valid",
        parse_int_range(60, 7 * 86400),
    ),
    Setting(
        "metrics_addr",
        "METRICS_ADDR",
        "",
        "serve /metrics on this address only (e.g. 127.0.0.1:9100); empty = on HTTP_ADDR",
        parse_optional_http_addr,
    ),
)


# --- Recording and upload (issue 6; live-webrtc-go's names) ----------------------------------


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


RECORDING_SETTINGS: tuple[Setting, ...] = (
    Setting("record_enabled", "RECORD_ENABLED", "0", "record every publisher track", parse_bool),
    Setting("record_dir", "RECORD_DIR", "records", "directory of the recordings"),
    Setting(
        "upload_recordings",
        "UPLOAD_RECORDINGS",
        "0",
        "upload finished recordings from RECORD_DIR to S3 (needs the S3_* settings)",
        parse_bool,
    ),
    Setting(
        "delete_recording_after_upload",
        "DELETE_RECORDING_AFTER_UPLOAD",
        "0",
        "delete the local file once the uploaded object has the same size",
        parse_bool,
    ),
    Setting("s3_endpoint", "S3_ENDPOINT", "", "S3 endpoint HOST[:PORT]", parse_s3_endpoint),
    Setting("s3_region", "S3_REGION", "", "S3 region (empty: asked from the endpoint)"),
    Setting("s3_bucket", "S3_BUCKET", "", "bucket for recordings (must exist)"),
    Setting("s3_access_key", "S3_ACCESS_KEY", "", "S3 access key", secret=True),
    Setting("s3_secret_key", "S3_SECRET_KEY", "", "S3 secret key", secret=True),
    Setting("s3_prefix", "S3_PREFIX", "", "object key prefix: PREFIX/NAME"),
    Setting("s3_use_ssl", "S3_USE_SSL", "1", "HTTPS to the S3 endpoint (1/0)", parse_bool),
    Setting(
        "s3_path_style",
        "S3_PATH_STYLE",
        "",
        "1 = path-style bucket URLs (MinIO), 0 = virtual-host; empty = by endpoint",
        parse_path_style,
    ),
)
SETTINGS += RECORDING_SETTINGS


def _check_recording(config: GatewayConfig) -> None:
    if not config.upload_recordings:
        return
    required = (
        ("S3_ENDPOINT", config.s3_endpoint),
        ("S3_BUCKET", config.s3_bucket),
        ("S3_ACCESS_KEY", config.s3_access_key),
        ("S3_SECRET_KEY", config.s3_secret_key),
    )
    missing = [name for name, value in required if not value]
    if missing:
        die(PROG, f"UPLOAD_RECORDINGS=1 needs {', '.join(missing)}")


# --- end of recording and upload --------------------------------------------------------------


@dataclass(frozen=True)
class GatewayConfig:
    http_addr: HttpAddress
    workers: int
    worker_listen: str
    ipc_dir: str
    stun_urls: list[str]
    turn_urls: list[str]
    turn_username: str
    turn_password: str
    max_subs_per_room: int
    tls_cert_file: str
    tls_key_file: str
    max_body_bytes: int
    udp_ports: tuple[int, int] | None
    bind_addresses: list[str]
    public_ip: str | None
    session_connect_timeout: float
    instant_start: bool
    worker_token: str
    heartbeat_interval: float
    worker_timeout: float
    worker_dead_timeout: float
    ipc_timeout: float
    log_level: str
    allowed_origin: list[str]
    auth_token: str
    room_tokens: dict[str, str]
    jwt_secret: str
    jwt_audience: str
    jwt_algorithms: list[str]
    admin_token: str
    rate_limit_rps: float
    rate_limit_burst: int
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    max_sessions_per_ip: int
    max_sessions_per_worker: int
    max_pending_sessions_per_ip: int
    max_pending_sessions: int
    turn_secret: str
    turn_ttl: int
    metrics_addr: HttpAddress | None
    # Recording and upload (issue 6)
    record_enabled: bool = False
    record_dir: str = "records"
    upload_recordings: bool = False
    delete_recording_after_upload: bool = False
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_bucket: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_prefix: str = ""
    s3_use_ssl: bool = True
    s3_path_style: bool | None = None

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def auth_enabled(self) -> bool:
        """live-webrtc-go's definition: some room needs a credential."""
        return bool(self.auth_token or self.room_tokens or self.jwt_secret)


def split_port_range(ports: tuple[int, int], slots: int) -> list[tuple[int, int]]:
    """Cut LOW-HIGH into `slots` contiguous sub-ranges; the first ones get the remainder."""
    low, high = ports
    total = high - low + 1
    size, extra = divmod(total, slots)
    ranges: list[tuple[int, int]] = []
    start = low
    for slot in range(slots):
        width = size + (1 if slot < extra else 0)
        ranges.append((start, start + width - 1))
        start += width
    return ranges


def _check_combinations(config: GatewayConfig) -> None:
    if bool(config.tls_cert_file) != bool(config.tls_key_file):
        die(PROG, "TLS_CERT_FILE and TLS_KEY_FILE must be set together (or neither)")
    tls_files = (("TLS_CERT_FILE", config.tls_cert_file), ("TLS_KEY_FILE", config.tls_key_file))
    for env, path in tls_files:
        if path and not os.path.isfile(path):
            die(PROG, f"{env}={path!r}: no such file")
    if config.udp_ports is not None and config.workers > 0:
        low, high = config.udp_ports
        if (high - low + 1) < 2 * config.workers:
            die(
                PROG,
                f"UDP_PORTS={low}-{high} has {high - low + 1} ports, "
                f"fewer than 2 for each of {config.workers} workers",
            )
    if config.worker_timeout <= config.heartbeat_interval:
        die(PROG, "WORKER_TIMEOUT must be longer than HEARTBEAT_INTERVAL")
    if config.worker_dead_timeout < config.worker_timeout:
        die(PROG, "WORKER_DEAD_TIMEOUT must not be shorter than WORKER_TIMEOUT")
    if config.jwt_audience and not config.jwt_secret:
        die(PROG, "JWT_AUDIENCE is set but JWT_SECRET is not")
    if config.turn_secret and (config.turn_username or config.turn_password):
        die(PROG, "set TURN_SECRET (REST credentials) or TURN_USERNAME/TURN_PASSWORD, not both")
    if config.turn_secret and not config.turn_urls:
        die(PROG, "TURN_SECRET is set but TURN_URLS is empty")
    if config.metrics_addr is not None and config.metrics_addr == config.http_addr:
        die(PROG, "METRICS_ADDR must differ from HTTP_ADDR (leave it empty to share)")
    _check_recording(config)


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    namespace: argparse.Namespace = load(PROG, DESCRIPTION, SETTINGS, argv, environ)
    config = GatewayConfig(**vars(namespace))
    _check_combinations(config)
    return config
