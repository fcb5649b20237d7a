"""sfu-worker's settings: the one definition of every worker setting.

sfu/__main__.py parses its command line and environment with this table; the gateway
(gateway/settings.py) re-uses these Setting objects for what it hands its local workers, and
its supervisor writes each local worker's command line with `to_argv`, the inverse of
`load_worker_settings`. Importable without aiortc: standard library and common/ only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common import reach
from common.logformat import parse_log_format
from common.settings import (
    Setting,
    die,
    format_bool,
    format_csv,
    format_float,
    format_optional,
    format_port_range,
    load,
    parse_bool,
    parse_csv,
    parse_int_range,
    parse_ip_list,
    parse_log_level,
    parse_optional_port,
    parse_port_range,
    parse_positive_float,
    text,
)

PROG = "sfu-worker"
DESCRIPTION = "live-sfu media worker"


UDP_MUX_CONFLICT = (
    "UDP_MUX_PORT and UDP_PORTS are both set: UDP_MUX_PORT puts every session on one port, "
    "UDP_PORTS gives each its own; set only one"
)


def parse_optional_pid(raw: str) -> int | None:
    return int(raw) if raw else None


CONNECT = Setting(
    "connect", "SFU_CONNECT", "", "gateway endpoint: ipc:///path or tcp://host:port", text
)
WORKER_ID = Setting(
    "worker_id", "SFU_WORKER_ID", "", "unique worker id (default: hostname-pid)", text
)
WORKER_TOKEN = Setting(
    "worker_token",
    "WORKER_TOKEN",
    "",
    "shared secret the gateway requires, if any",
    text,
    secret=True,
)
UDP_PORTS = Setting(
    "udp_ports",
    "UDP_PORTS",
    "",
    "UDP port range for media, LOW-HIGH (default: ports chosen by the OS)",
    parse_port_range,
    format=format_port_range,
)
BIND_ADDRESSES = Setting(
    "bind_addresses",
    "BIND_ADDRESSES",
    "",
    "comma-separated local IPs to gather ICE candidates on "
    "(default: every non-loopback address, loopback if there is none)",
    parse_ip_list,
    format=format_csv,
)
PUBLIC_IP = Setting(
    "public_ip",
    "PUBLIC_IP",
    "",
    "comma-separated public IPv4/IPv6 addresses or host names (resolved once, at start) to "
    "announce before the host addresses of the same family (1:1 NAT)",
    reach.parse_public_ips,
    format=format_csv,
)
UDP_MUX_PORT = Setting(
    "udp_mux_port",
    "UDP_MUX_PORT",
    "",
    "one UDP port for every session of this worker (empty: a socket per session, see "
    "UDP_PORTS)",
    parse_optional_port,
    format=format_optional,
)
TCP_MUX_PORT = Setting(
    "tcp_mux_port",
    "TCP_MUX_PORT",
    "",
    "one TCP port for ICE-TCP (passive) for every session of this worker (empty: no ICE-TCP)",
    parse_optional_port,
    format=format_optional,
)
BIND_INTERFACES = Setting(
    "bind_interfaces",
    "BIND_INTERFACES",
    "",
    "comma-separated interface names to gather on (default: every interface but container "
    "bridges; link-local addresses never; BIND_ADDRESSES wins)",
    parse_csv,
    format=format_csv,
)
STUN_DISCOVER = Setting(
    "stun_discover",
    "STUN_DISCOVER",
    "",
    "stun:HOST:PORT asked once at start for this host's public address: announced when "
    "PUBLIC_IP has none of its family, a warning when PUBLIC_IP differs",
    reach.parse_stun_discover,
)
SESSION_CONNECT_TIMEOUT = Setting(
    "session_connect_timeout",
    "SESSION_CONNECT_TIMEOUT",
    "30",
    "seconds a session may take to connect before it is reaped",
    parse_positive_float,
    format=format_float,
)
INSTANT_START = Setting(
    "instant_start",
    "INSTANT_START",
    "true",
    "replay each video track's latest keyframe onwards to joining viewers (true/false)",
    parse_bool,
    format=format_bool,
)
INSTANT_START_MAX_BYTES = Setting(
    "instant_start_max_bytes",
    "INSTANT_START_MAX_BYTES",
    "4194304",
    "per video track, the most bytes kept for instant start (a longer group of "
    "pictures is not replayed)",
    parse_int_range(1024, 1 << 30),
)
RECORD_ENABLED = Setting(
    "record_enabled",
    "RECORD_ENABLED",
    "0",
    "record every publisher track to RECORD_DIR (1/0)",
    parse_bool,
    format=format_bool,
)
RECORD_DIR = Setting("record_dir", "RECORD_DIR", "records", "directory of the recordings", text)
TRANSPORT_CC = Setting(
    "transport_cc",
    "TRANSPORT_CC",
    "true",
    "answer publishers' transport-cc and send them its feedback, so browsers ramp up "
    "their bitrate within seconds (true/false; false: REMB only)",
    parse_bool,
    format=format_bool,
)
# CERT_ROTATE: sfu/aiortc_adapter/certificates.py (aiortc's certificates last 30 days).
MAX_CERT_ROTATE_S = 14 * 86400.0


def parse_cert_rotate(raw: str) -> float:
    value = parse_positive_float(raw)
    if not 1.0 <= value <= MAX_CERT_ROTATE_S:
        raise ValueError(f"must be between 1 and {MAX_CERT_ROTATE_S:g} seconds (14 days)")
    return value


CERT_ROTATE = Setting(
    "cert_rotate",
    "CERT_ROTATE",
    "86400",
    "seconds between new DTLS certificates: every session a worker opens presents the "
    "worker's current one (sessions keep theirs), instead of a new one per session",
    parse_cert_rotate,
    format=format_float,
)
GATEWAY_TIMEOUT = Setting(
    "gateway_timeout",
    "GATEWAY_TIMEOUT",
    "10",
    "seconds without the gateway before this worker exits",
    parse_positive_float,
    format=format_float,
)
PARENT_PID = Setting(
    "parent_pid",
    "SFU_PARENT_PID",
    "",
    "exit when this parent process goes away",
    parse_optional_pid,
    format=format_optional,
)
PLANE = Setting(
    "plane",
    "SFU_PLANE",
    "",
    "name of this host's shared-memory media plane: local workers of one gateway share one "
    "and read each other's rings (set by the gateway for its local workers; empty: none)",
    text,
)
LOG_LEVEL = Setting(
    "log_level", "LOG_LEVEL", "info", "debug, info, warning or error", parse_log_level
)
LOG_FORMAT = Setting(
    "log_format",
    "LOG_FORMAT",
    "text",
    "text (one line per record) or json (one JSON object per line)",
    parse_log_format,
)

# In --help order.
SETTINGS: tuple[Setting[Any], ...] = (
    CONNECT,
    WORKER_ID,
    WORKER_TOKEN,
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
    RECORD_ENABLED,
    RECORD_DIR,
    TRANSPORT_CC,
    CERT_ROTATE,
    GATEWAY_TIMEOUT,
    PARENT_PID,
    PLANE,
    LOG_LEVEL,
    LOG_FORMAT,
)


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """Every worker setting, parsed; one field per Setting above, of the same name."""

    connect: str
    worker_id: str
    worker_token: str
    udp_ports: tuple[int, int] | None
    udp_mux_port: int | None = None
    tcp_mux_port: int | None = None
    bind_addresses: list[str]
    bind_interfaces: list[str] = field(default_factory=list)
    public_ip: list[str]  # addresses: PUBLIC_IP's names are resolved when it is parsed
    stun_discover: str = ""
    session_connect_timeout: float
    instant_start: bool
    instant_start_max_bytes: int
    record_enabled: bool
    record_dir: str
    transport_cc: bool
    cert_rotate: float = 86400.0
    gateway_timeout: float
    parent_pid: int | None
    plane: str
    log_level: str
    log_format: str = "text"


def load_worker_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> WorkerSettings:
    """Flags, then environment, then defaults; exits 2 with one line on an invalid value."""
    values = load(PROG, DESCRIPTION, SETTINGS, argv, environ)
    connect = values[CONNECT]
    if not connect:
        die(PROG, "--connect (SFU_CONNECT) is required, e.g. ipc:///run/sfu/gateway.sock")
    if not connect.startswith(("ipc://", "tcp://")):
        die(PROG, f"invalid value {connect!r} for SFU_CONNECT: expected ipc:// or tcp://")
    if values[UDP_MUX_PORT] is not None and values[UDP_PORTS] is not None:
        die(PROG, UDP_MUX_CONFLICT)
    interfaces: list[str] = values[BIND_INTERFACES]
    if interfaces and not values[BIND_ADDRESSES]:
        complaint = reach.check_interfaces(interfaces, reach.system_interfaces())
        if complaint is not None:
            die(PROG, complaint)
    return WorkerSettings(
        connect=connect,
        worker_id=values[WORKER_ID],
        worker_token=values[WORKER_TOKEN],
        udp_ports=values[UDP_PORTS],
        bind_addresses=values[BIND_ADDRESSES],
        public_ip=values[PUBLIC_IP],
        session_connect_timeout=values[SESSION_CONNECT_TIMEOUT],
        instant_start=values[INSTANT_START],
        instant_start_max_bytes=values[INSTANT_START_MAX_BYTES],
        record_enabled=values[RECORD_ENABLED],
        record_dir=values[RECORD_DIR],
        transport_cc=values[TRANSPORT_CC],
        cert_rotate=values[CERT_ROTATE],
        gateway_timeout=values[GATEWAY_TIMEOUT],
        parent_pid=values[PARENT_PID],
        plane=values[PLANE],
        log_level=values[LOG_LEVEL],
        log_format=values[LOG_FORMAT],
        udp_mux_port=values[UDP_MUX_PORT],
        tcp_mux_port=values[TCP_MUX_PORT],
        bind_interfaces=values[BIND_INTERFACES],
        stun_discover=values[STUN_DISCOVER],
    )


def to_argv(settings: WorkerSettings) -> list[str]:
    """The flags that make `load_worker_settings` return `settings` (given an environment
    without worker settings: an empty value is left out, so its default applies)."""
    argv: list[str] = []
    for setting in SETTINGS:
        argv += setting.argv(getattr(settings, setting.name))
    return argv
