"""sfu-worker's settings: the one definition of every worker setting.

sfu/__main__.py parses its command line and environment with this table; the gateway
(gateway/settings.py) re-uses these Setting objects for what it hands its local workers, and
its supervisor writes each local worker's command line with `to_argv`, the inverse of
`load_worker_settings`. Importable without aiortc: standard library and common/ only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
    parse_int_range,
    parse_ip_list,
    parse_log_level,
    parse_optional_ip,
    parse_port_range,
    parse_positive_float,
    text,
)

PROG = "sfu-worker"
DESCRIPTION = "live-sfu media worker"


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
    "IP to announce in candidates (1:1 NAT)",
    parse_optional_ip,
    format=format_optional,
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
    BIND_ADDRESSES,
    PUBLIC_IP,
    SESSION_CONNECT_TIMEOUT,
    INSTANT_START,
    INSTANT_START_MAX_BYTES,
    RECORD_ENABLED,
    RECORD_DIR,
    TRANSPORT_CC,
    GATEWAY_TIMEOUT,
    PARENT_PID,
    PLANE,
    LOG_LEVEL,
    LOG_FORMAT,
)


@dataclass(frozen=True)
class WorkerSettings:
    """Every worker setting, parsed; one field per Setting above, of the same name."""

    connect: str
    worker_id: str
    worker_token: str
    udp_ports: tuple[int, int] | None
    bind_addresses: list[str]
    public_ip: str | None
    session_connect_timeout: float
    instant_start: bool
    instant_start_max_bytes: int
    record_enabled: bool
    record_dir: str
    transport_cc: bool
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
        gateway_timeout=values[GATEWAY_TIMEOUT],
        parent_pid=values[PARENT_PID],
        plane=values[PLANE],
        log_level=values[LOG_LEVEL],
        log_format=values[LOG_FORMAT],
    )


def to_argv(settings: WorkerSettings) -> list[str]:
    """The flags that make `load_worker_settings` return `settings` (given an environment
    without worker settings: an empty value is left out, so its default applies)."""
    argv: list[str] = []
    for setting in SETTINGS:
        argv += setting.argv(getattr(settings, setting.name))
    return argv
