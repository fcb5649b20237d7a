"""The gateway's configuration: the settings table (gateway/settings.py), parsed and grouped
by concern into frozen dataclasses with their real types.

Values that are only invalid in combination (TLS pair, UDP port split, timeouts, S3) are
checked after parsing and, like every invalid value, end the program with exit code 2 and one
line naming the setting.

CONFIG_FILE names a VAR=value file in systemd's EnvironmentFile syntax, read at start and on
every reload (gateway/reload.py). Precedence: flag, then environment variable, then
CONFIG_FILE, then default; so a reload cannot change a setting that a flag or a non-empty
environment variable also gives.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from common import reach
from common.settings import Values, die, load
from common.worker_settings import UDP_MUX_CONFLICT
from gateway import settings as s
from gateway.settings import DESCRIPTION, PROG, HttpAddress, Network, RoomToken


@dataclass(frozen=True)
class HttpConfig:
    http_addr: HttpAddress
    tls_cert_file: str
    tls_key_file: str
    max_body_bytes: int
    allowed_origin: list[str]  # CORS: ["*"] or exact origins

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert_file)


@dataclass(frozen=True)
class WorkersConfig:
    """The worker pool: local workers, remote ones, and how their liveness is judged."""

    count: int  # WORKERS: local worker processes
    worker_listen: str
    ipc_dir: str
    worker_token: str
    heartbeat_interval: float
    worker_timeout: float
    worker_dead_timeout: float
    gateway_timeout: float  # handed to local workers
    ipc_timeout: float
    # Placement of a big room's viewers on other local workers (gateway/placement/directory.py).
    spread_rooms: bool
    spread_threshold: int  # sessions the room's home worker holds before viewers spill over


@dataclass(frozen=True)
class MediaConfig:
    """What local workers are told about media (common/worker_settings.py names them)."""

    udp_ports: tuple[int, int] | None
    bind_addresses: list[str]
    public_ip: list[str]  # PUBLIC_IP's names already resolved
    session_connect_timeout: float
    instant_start: bool
    instant_start_max_bytes: int
    transport_cc: bool
    # Network reach (common/reach.py, docs/networking.md): mux ports are bases, worker k
    # listens on base + k.
    udp_mux_port: int | None = None
    tcp_mux_port: int | None = None
    bind_interfaces: list[str] = field(default_factory=list)
    stun_discover: str = ""
    cert_rotate: float = 86400.0  # CERT_ROTATE: each worker's DTLS certificate's lifetime


@dataclass(frozen=True)
class IceConfig:
    """The ICE servers clients are told about."""

    stun_urls: list[str]
    turn_urls: list[str]
    turn_username: str
    turn_password: str
    turn_secret: str
    turn_ttl: int


@dataclass(frozen=True)
class AuthConfig:
    auth_token: str
    room_grants: tuple[RoomToken, ...]  # ROOM_TOKENS, with each token's rights
    jwt_secret: str
    jwt_audience: str
    jwt_algorithms: list[str]
    admin_token: str

    @property
    def room_tokens(self) -> dict[str, str]:
        """ROOM_TOKENS as live-webrtc-go had it, room -> token (a room's first token; the
        rights are in `room_grants`)."""
        tokens: dict[str, str] = {}
        for grant in self.room_grants:
            tokens.setdefault(grant.room, grant.token)
        return tokens

    @property
    def enabled(self) -> bool:
        """live-webrtc-go's definition: some room needs a credential."""
        return bool(self.auth_token or self.room_grants or self.jwt_secret)


@dataclass(frozen=True)
class AccessConfig:
    """PLAY_OPEN and the external auth hook (gateway/authhook.py); restart-only."""

    play_open: bool = False
    auth_hook_url: str = ""  # empty: no hook, the tokens decide
    auth_hook_timeout: float = 2.0
    auth_hook_cache_ttl: float = 10.0  # 0: no cache
    auth_hook_send_token: bool = False  # False: token_sha256 only


@dataclass(frozen=True)
class WebhookConfig:
    """Signed event webhooks (gateway/webhooks/); restart-only."""

    urls: tuple[str, ...] = field(default=(), repr=False)  # may carry credentials
    secret: str = field(default="", repr=False)
    queue: str = ""  # the SQLite file, made absolute; "" only when there are no URLs
    max_age: float = 86400.0


@dataclass(frozen=True)
class LimitsConfig:
    max_subs_per_room: int
    rate_limit_rps: float
    rate_limit_burst: int
    trusted_proxies: list[Network]
    max_sessions_per_ip: int
    max_sessions_per_worker: int
    max_pending_sessions_per_ip: int
    max_pending_sessions: int


@dataclass(frozen=True)
class RecordingConfig:
    record_enabled: bool
    record_dir: str


@dataclass(frozen=True)
class UploadConfig:
    """Upload of finished recordings to S3."""

    upload_recordings: bool
    delete_recording_after_upload: bool
    s3_endpoint: str
    s3_region: str
    s3_bucket: str
    s3_access_key: str
    s3_secret_key: str
    s3_prefix: str
    s3_use_ssl: bool
    s3_path_style: bool | None


@dataclass(frozen=True)
class ObservabilityConfig:
    log_level: str
    metrics_addr: HttpAddress | None
    log_format: str = "text"


@dataclass(frozen=True)
class OperationsConfig:
    """Reload and stop (gateway/reload.py, gateway/__main__.py)."""

    config_file: str = ""  # CONFIG_FILE; empty: none
    drain_timeout: float = 30.0  # DRAIN_TIMEOUT; 0: a stop closes the sessions at once


@dataclass(frozen=True)
class ClusterConfig:
    """Several nodes sharing one room directory in Redis (gateway/cluster/); restart-only.
    `enabled` only with REDIS_URL: without it the gateway is one node, as ever."""

    redis_url: str = field(default="", repr=False)  # may carry the password
    redis_password: str = field(default="", repr=False)
    node_id: str = ""
    node_url: str = ""  # public base URL, no trailing slash
    node_token: str = field(default="", repr=False)
    node_ttl: float = 10.0
    room_ttl: float = 10.0

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)

    @property
    def heartbeat_interval(self) -> float:
        """How often the node writes its record and refreshes its rooms in Redis."""
        return min(self.node_ttl, self.room_ttl) / 4


@dataclass(frozen=True)
class GatewayConfig:
    http: HttpConfig
    workers: WorkersConfig
    media: MediaConfig
    ice: IceConfig
    auth: AuthConfig
    limits: LimitsConfig
    recording: RecordingConfig
    upload: UploadConfig
    observability: ObservabilityConfig
    ops: OperationsConfig = OperationsConfig()
    access: AccessConfig = AccessConfig()
    webhooks: WebhookConfig = WebhookConfig()
    cluster: ClusterConfig = ClusterConfig()


def _build(v: Values) -> GatewayConfig:
    return GatewayConfig(
        http=HttpConfig(
            http_addr=v[s.HTTP_ADDR],
            tls_cert_file=v[s.TLS_CERT_FILE],
            tls_key_file=v[s.TLS_KEY_FILE],
            max_body_bytes=v[s.MAX_BODY_BYTES],
            allowed_origin=v[s.ALLOWED_ORIGIN],
        ),
        workers=WorkersConfig(
            count=v[s.WORKERS],
            worker_listen=v[s.WORKER_LISTEN],
            ipc_dir=v[s.IPC_DIR],
            worker_token=v[s.WORKER_TOKEN],
            heartbeat_interval=v[s.HEARTBEAT_INTERVAL],
            worker_timeout=v[s.WORKER_TIMEOUT],
            worker_dead_timeout=v[s.WORKER_DEAD_TIMEOUT],
            gateway_timeout=v[s.GATEWAY_TIMEOUT],
            ipc_timeout=v[s.IPC_TIMEOUT],
            spread_rooms=v[s.SPREAD_ROOMS],
            spread_threshold=v[s.SPREAD_THRESHOLD],
        ),
        media=MediaConfig(
            udp_ports=v[s.UDP_PORTS],
            bind_addresses=v[s.BIND_ADDRESSES],
            public_ip=v[s.PUBLIC_IP],
            session_connect_timeout=v[s.SESSION_CONNECT_TIMEOUT],
            instant_start=v[s.INSTANT_START],
            instant_start_max_bytes=v[s.INSTANT_START_MAX_BYTES],
            transport_cc=v[s.TRANSPORT_CC],
            udp_mux_port=v[s.UDP_MUX_PORT],
            tcp_mux_port=v[s.TCP_MUX_PORT],
            bind_interfaces=v[s.BIND_INTERFACES],
            stun_discover=v[s.STUN_DISCOVER],
            cert_rotate=v[s.CERT_ROTATE],
        ),
        ice=IceConfig(
            stun_urls=v[s.STUN_URLS],
            turn_urls=v[s.TURN_URLS],
            turn_username=v[s.TURN_USERNAME],
            turn_password=v[s.TURN_PASSWORD],
            turn_secret=v[s.TURN_SECRET],
            turn_ttl=v[s.TURN_TTL],
        ),
        auth=AuthConfig(
            auth_token=v[s.AUTH_TOKEN],
            room_grants=v[s.ROOM_TOKENS],
            jwt_secret=v[s.JWT_SECRET],
            jwt_audience=v[s.JWT_AUDIENCE],
            jwt_algorithms=v[s.JWT_ALGORITHMS],
            admin_token=v[s.ADMIN_TOKEN],
        ),
        limits=LimitsConfig(
            max_subs_per_room=v[s.MAX_SUBS_PER_ROOM],
            rate_limit_rps=v[s.RATE_LIMIT_RPS],
            rate_limit_burst=v[s.RATE_LIMIT_BURST],
            trusted_proxies=v[s.TRUSTED_PROXIES],
            max_sessions_per_ip=v[s.MAX_SESSIONS_PER_IP],
            max_sessions_per_worker=v[s.MAX_SESSIONS_PER_WORKER],
            max_pending_sessions_per_ip=v[s.MAX_PENDING_SESSIONS_PER_IP],
            max_pending_sessions=v[s.MAX_PENDING_SESSIONS],
        ),
        recording=RecordingConfig(
            record_enabled=v[s.RECORD_ENABLED],
            record_dir=v[s.RECORD_DIR],
        ),
        upload=UploadConfig(
            upload_recordings=v[s.UPLOAD_RECORDINGS],
            delete_recording_after_upload=v[s.DELETE_RECORDING_AFTER_UPLOAD],
            s3_endpoint=v[s.S3_ENDPOINT],
            s3_region=v[s.S3_REGION],
            s3_bucket=v[s.S3_BUCKET],
            s3_access_key=v[s.S3_ACCESS_KEY],
            s3_secret_key=v[s.S3_SECRET_KEY],
            s3_prefix=v[s.S3_PREFIX],
            s3_use_ssl=v[s.S3_USE_SSL],
            s3_path_style=v[s.S3_PATH_STYLE],
        ),
        observability=ObservabilityConfig(
            log_level=v[s.LOG_LEVEL],
            metrics_addr=v[s.METRICS_ADDR],
            log_format=v[s.LOG_FORMAT],
        ),
        ops=OperationsConfig(
            config_file=v[s.CONFIG_FILE],
            drain_timeout=v[s.DRAIN_TIMEOUT],
        ),
        access=AccessConfig(
            play_open=v[s.PLAY_OPEN],
            auth_hook_url=v[s.AUTH_HOOK_URL],
            auth_hook_timeout=v[s.AUTH_HOOK_TIMEOUT],
            auth_hook_cache_ttl=v[s.AUTH_HOOK_CACHE_TTL],
            auth_hook_send_token=v[s.AUTH_HOOK_SEND_TOKEN],
        ),
        webhooks=WebhookConfig(
            urls=v[s.WEBHOOK_URLS],
            secret=v[s.WEBHOOK_SECRET],
            queue=_webhook_queue(v[s.WEBHOOK_QUEUE], v[s.RECORD_DIR], bool(v[s.WEBHOOK_URLS])),
            max_age=v[s.WEBHOOK_MAX_AGE],
        ),
        cluster=ClusterConfig(
            redis_url=v[s.REDIS_URL],
            redis_password=v[s.REDIS_PASSWORD],
            node_id=v[s.NODE_ID],
            node_url=v[s.NODE_URL],
            node_token=v[s.NODE_TOKEN],
            node_ttl=v[s.NODE_TTL],
            room_ttl=v[s.ROOM_TTL],
        ),
    )


def _webhook_queue(path: str, record_dir: str, used: bool) -> str:
    """WEBHOOK_QUEUE made absolute; by default .webhooks.sqlite3 in RECORD_DIR."""
    if not used:
        return ""
    return os.path.abspath(path or os.path.join(record_dir, ".webhooks.sqlite3"))


def _check_upload(upload: UploadConfig) -> None:
    if not upload.upload_recordings:
        return
    required = (
        ("S3_ENDPOINT", upload.s3_endpoint),
        ("S3_BUCKET", upload.s3_bucket),
        ("S3_ACCESS_KEY", upload.s3_access_key),
        ("S3_SECRET_KEY", upload.s3_secret_key),
    )
    missing = [name for name, value in required if not value]
    if missing:
        die(PROG, f"UPLOAD_RECORDINGS=1 needs {', '.join(missing)}")


def _check_media(media: MediaConfig, workers: int) -> None:
    """The network reach settings that only fail together (docs/networking.md)."""
    if media.udp_mux_port is not None and media.udp_ports is not None:
        die(PROG, UDP_MUX_CONFLICT)
    for name, base in (("UDP_MUX_PORT", media.udp_mux_port), ("TCP_MUX_PORT", media.tcp_mux_port)):
        if base is not None and base + max(workers, 1) - 1 > 65535:
            die(
                PROG,
                f"{name}={base}: {workers} workers need ports {base}-{base + workers - 1}, "
                "past 65535",
            )
    if media.bind_interfaces and not media.bind_addresses:
        complaint = reach.check_interfaces(media.bind_interfaces, reach.system_interfaces())
        if complaint is not None:
            die(PROG, complaint)


def _check_combinations(config: GatewayConfig) -> None:
    http, workers = config.http, config.workers
    if bool(http.tls_cert_file) != bool(http.tls_key_file):
        die(PROG, "TLS_CERT_FILE and TLS_KEY_FILE must be set together (or neither)")
    tls_files = (("TLS_CERT_FILE", http.tls_cert_file), ("TLS_KEY_FILE", http.tls_key_file))
    for env, path in tls_files:
        if path and not os.path.isfile(path):
            die(PROG, f"{env}={path!r}: no such file")
    udp_ports = config.media.udp_ports
    if udp_ports is not None and workers.count > 0:
        low, high = udp_ports
        if (high - low + 1) < 2 * workers.count:
            die(
                PROG,
                f"UDP_PORTS={low}-{high} has {high - low + 1} ports, "
                f"fewer than 2 for each of {workers.count} workers",
            )
    _check_media(config.media, workers.count)
    if workers.worker_timeout <= workers.heartbeat_interval:
        die(PROG, "WORKER_TIMEOUT must be longer than HEARTBEAT_INTERVAL")
    if workers.worker_dead_timeout < workers.worker_timeout:
        die(PROG, "WORKER_DEAD_TIMEOUT must not be shorter than WORKER_TIMEOUT")
    auth, ice = config.auth, config.ice
    if auth.jwt_audience and not auth.jwt_secret:
        die(PROG, "JWT_AUDIENCE is set but JWT_SECRET is not")
    if ice.turn_secret and (ice.turn_username or ice.turn_password):
        die(PROG, "set TURN_SECRET (REST credentials) or TURN_USERNAME/TURN_PASSWORD, not both")
    if ice.turn_secret and not ice.turn_urls:
        die(PROG, "TURN_SECRET is set but TURN_URLS is empty")
    metrics_addr = config.observability.metrics_addr
    if metrics_addr is not None and metrics_addr == http.http_addr:
        die(PROG, "METRICS_ADDR must differ from HTTP_ADDR (leave it empty to share)")
    _check_upload(config.upload)
    if config.webhooks.urls and not config.webhooks.secret:
        die(PROG, "WEBHOOK_URLS is set but WEBHOOK_SECRET is not (webhooks are always signed)")
    _check_cluster(config.cluster)


def _check_cluster(cluster: ClusterConfig) -> None:
    """Several nodes (REDIS_URL): each must say where clients reach it."""
    if cluster.enabled and not cluster.node_url:
        die(PROG, "REDIS_URL is set but NODE_URL is not (the public base URL of this node)")
    if not cluster.enabled and (cluster.redis_password or cluster.node_url or cluster.node_token):
        die(PROG, "REDIS_PASSWORD, NODE_URL and NODE_TOKEN need REDIS_URL (several nodes)")
    if cluster.enabled and cluster.heartbeat_interval < 0.05:
        die(PROG, "NODE_TTL and ROOM_TTL must be at least 0.2 s")


# --- CONFIG_FILE ------------------------------------------------------------------------------

_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_environment_file(text: str) -> dict[str, str]:
    """VAR=value lines as systemd's EnvironmentFile= reads them: blank lines and lines whose
    first non-blank character is # or ; are skipped; blanks around the name and the value are
    removed; a value wholly in single or double quotes loses them (inside double quotes, a
    backslash escapes the next character). A later line wins. Raises ValueError naming the
    line number (never the value: it may be a secret)."""
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        name, sep, value = stripped.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not _VARIABLE.match(name):
            raise ValueError(f"line {number}: expected VAR=value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = re.sub(r"\\(.)", r"\1", value)
        elif value[:1] in ("'", '"'):
            raise ValueError(f"line {number}: {name}: unterminated quote")
        values[name] = value
    return values


def read_config_file(path: str) -> dict[str, str]:
    """CONFIG_FILE's variables; exits 2 with one line when it cannot be read or parsed."""
    try:
        with open(path, encoding="utf-8") as file:
            return parse_environment_file(file.read())
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        die(PROG, f"CONFIG_FILE={path!r}: cannot read it: {reason}")
    except ValueError as exc:
        die(PROG, f"CONFIG_FILE={path!r}: {exc}")


def _config_file_path(argv: Sequence[str] | None, env: Mapping[str, str]) -> str:
    """--config-file, else CONFIG_FILE: the file must be known before the other settings."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument(s.CONFIG_FILE.flag, dest="config_file", default=None)
    known, _rest = parser.parse_known_args(argv)
    path: str | None = known.config_file
    return path if path is not None else env.get(s.CONFIG_FILE.env, "")


def effective_environment(
    argv: Sequence[str] | None, environ: Mapping[str, str] | None = None
) -> Mapping[str, str]:
    """The environment the settings are read from: CONFIG_FILE's variables under the process
    environment's non-empty ones (an empty variable counts as unset, as everywhere)."""
    env = os.environ if environ is None else environ
    path = _config_file_path(argv, env)
    if not path:
        return env
    merged = read_config_file(path)
    merged.update({name: value for name, value in env.items() if value})
    return merged


@dataclass(frozen=True)
class LoadedConfig:
    """The configuration and the parsed value of every setting it was built from (a reload
    compares these to name what changed)."""

    config: GatewayConfig
    values: Values


def load_all(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """Flags, environment, CONFIG_FILE, defaults; exits 2 with one line on an invalid value."""
    env = effective_environment(argv, environ)
    values = load(PROG, DESCRIPTION, s.SETTINGS, argv, env)
    config = _build(values)
    _check_combinations(config)
    return LoadedConfig(config, values)


class ConfigError(Exception):
    """An invalid configuration, with the one line that says why."""


def try_load_all(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    """load_all for a running gateway: raises ConfigError with the line load_all would have
    printed, instead of exiting."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            return load_all(argv, environ)
    except SystemExit:
        lines = said.getvalue().strip().splitlines()
        message = lines[-1] if lines else "invalid configuration"
        prefix = f"{PROG}: "
        raise ConfigError(message.removeprefix(prefix)) from None


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    return load_all(argv, environ).config
