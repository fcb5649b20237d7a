"""sfu-worker: one media worker process, registered with a gateway over ZeroMQ.

Exit codes: 0 stopped, 1 lost its gateway or was refused, 2 invalid settings,
3 boot failure (the installed aiortc/aioice do not match, or UDP setup failed) so that a
supervisor does not respawn it in a loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

import uvloop

from ipc import logformat
from ipc.settings import (
    Setting,
    die,
    load,
    parse_bool,
    parse_int_range,
    parse_ip_list,
    parse_optional_ip,
    parse_port_range,
    parse_positive_float,
)
from sfu import aiortc_adapter as adapter
from sfu.forward import InstantStart
from sfu.recorder import RecordingSettings
from sfu.session import SessionSettings
from sfu.worker import Worker, WorkerConfig

PROG = "sfu-worker"
EXIT_BOOT_FAILURE = 3

SETTINGS = [
    Setting("connect", "SFU_CONNECT", "", "gateway endpoint: ipc:///path or tcp://host:port"),
    Setting("worker_id", "SFU_WORKER_ID", "", "unique worker id (default: hostname-pid)"),
    Setting("worker_token", "WORKER_TOKEN", "", "shared secret the gateway requires, if any"),
    Setting(
        "udp_ports",
        "UDP_PORTS",
        "",
        "UDP port range for media, LOW-HIGH (default: ports chosen by the OS)",
        parse_port_range,
    ),
    Setting(
        "bind_addresses",
        "BIND_ADDRESSES",
        "",
        "comma-separated local IPs to gather ICE candidates on "
        "(default: every non-loopback address, loopback if there is none)",
        parse_ip_list,
    ),
    Setting(
        "public_ip", "PUBLIC_IP", "", "IP to announce in candidates (1:1 NAT)", parse_optional_ip
    ),
    Setting(
        "session_connect_timeout",
        "SESSION_CONNECT_TIMEOUT",
        "30",
        "seconds a session may take to connect before it is reaped",
        parse_positive_float,
    ),
    Setting(
        "instant_start",
        "INSTANT_START",
        "true",
        "replay each video track's latest keyframe onwards to joining viewers (true/false)",
        parse_bool,
    ),
    Setting(
        "instant_start_max_bytes",
        "INSTANT_START_MAX_BYTES",
        "4194304",
        "per video track, the most bytes kept for instant start (a longer group of "
        "pictures is not replayed)",
        parse_int_range(1024, 1 << 30),
    ),
    Setting(
        "record_enabled",
        "RECORD_ENABLED",
        "0",
        "record every publisher track to RECORD_DIR (1/0)",
        parse_bool,
    ),
    Setting("record_dir", "RECORD_DIR", "records", "directory of the recordings"),
    Setting(
        "transport_cc",
        "TRANSPORT_CC",
        "true",
        "answer publishers' transport-cc and send them its feedback, so browsers ramp up "
        "their bitrate within seconds (true/false; false: REMB only)",
        parse_bool,
    ),
    Setting(
        "gateway_timeout",
        "GATEWAY_TIMEOUT",
        "10",
        "seconds without the gateway before this worker exits",
        parse_positive_float,
    ),
    Setting(
        "parent_pid",
        "SFU_PARENT_PID",
        "",
        "exit when this parent process goes away",
        lambda v: int(v) if v else None,
    ),
    Setting(
        "log_level", "LOG_LEVEL", "info", "debug, info, warning or error", lambda v: _log_level(v)
    ),
]


def _log_level(raw: str) -> int:
    level = logging.getLevelName(raw.strip().upper())
    if not isinstance(level, int):
        raise ValueError("expected debug, info, warning or error")
    return level


def main(argv: Sequence[str] | None = None) -> int:
    options = load(PROG, "live-sfu media worker", SETTINGS, argv)
    if not options.connect:
        die(PROG, "--connect (SFU_CONNECT) is required, e.g. ipc:///run/sfu/gateway.sock")
    if not options.connect.startswith(("ipc://", "tcp://")):
        die(PROG, f"invalid value {options.connect!r} for SFU_CONNECT: expected ipc:// or tcp://")
    name = (options.worker_id or "worker").replace("%", "%%")
    logformat.configure(
        options.log_level, f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s"
    )
    # aioice logs every failed check at INFO; a media server only needs its warnings.
    logging.getLogger("aioice").setLevel(max(options.log_level, logging.WARNING))
    try:
        adapter.check_versions()
    except adapter.AdapterError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_BOOT_FAILURE

    addresses = options.bind_addresses or adapter.default_host_addresses()
    adapter.restrict_host_addresses(addresses)
    worker_id = options.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    session_capacity = None
    if options.udp_ports is not None:
        low, high = options.udp_ports
        # One socket per host address and session (BUNDLE and rtcp-mux: one ICE component).
        session_capacity = (high - low + 1) // len(addresses)
        if session_capacity < 1:
            die(PROG, f"UDP_PORTS={low}-{high} has fewer ports than the {len(addresses)} addresses")
    config = WorkerConfig(
        connect=options.connect,
        worker_id=worker_id,
        token=options.worker_token,
        local=options.parent_pid is not None,
        parent_pid=options.parent_pid,
        gateway_timeout=options.gateway_timeout,
        session=SessionSettings(
            connect_timeout=options.session_connect_timeout,
            public_ip=options.public_ip,
            transport_cc=options.transport_cc,
        ),
        instant_start=InstantStart(
            enabled=options.instant_start, max_bytes=options.instant_start_max_bytes
        ),
        recording=RecordingSettings(enabled=options.record_enabled, directory=options.record_dir),
        session_capacity=session_capacity,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        loop = runner.get_loop()
        if options.udp_ports is not None:
            adapter.install_port_range(loop, adapter.PortRange(*options.udp_ports))
        return runner.run(_run(config))


async def _run(config: WorkerConfig) -> int:
    worker = Worker(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop, signal.Signals(signum).name)
    # Harmless signals must not kill a worker that carries live rooms.
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE):
        loop.add_signal_handler(signum, lambda: None)
    code = await worker.run()
    if worker.exit_reason:
        logging.getLogger(__name__).info("worker exiting: %s", worker.exit_reason)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
