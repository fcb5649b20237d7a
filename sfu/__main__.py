"""sfu-worker: one media worker process, registered with a gateway over ZeroMQ.

Its settings are common/worker_settings.py's table (flags, environment, --help, validation).

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

from common import logformat, notify, tracing
from common.settings import die
from common.worker_settings import PROG, WorkerSettings, load_worker_settings
from sfu import aiortc_adapter as adapter
from sfu.media.instant_start import InstantStart
from sfu.recording.recorder import RecordingSettings
from sfu.session import SessionSettings
from sfu.worker import Worker, WorkerConfig

EXIT_BOOT_FAILURE = 3


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_worker_settings(argv)
    notify.configure()
    name = (settings.worker_id or "worker").replace("%", "%%")
    logformat.configure(
        settings.log_level,
        f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s",
        settings.log_format,
        # LOG_FORMAT=json: every record says which worker wrote it (worker_config's id).
        {"worker": settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"},
    )
    # aioice logs every failed check at INFO; a media server only needs its warnings.
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    logging.getLogger("aioice").setLevel(max(level, logging.WARNING))
    try:
        adapter.check_versions()
    except adapter.AdapterError as exc:
        sys.stderr.write(f"{PROG}: {exc}\n")
        return EXIT_BOOT_FAILURE

    addresses = settings.bind_addresses or adapter.default_host_addresses()
    adapter.restrict_host_addresses(addresses)
    config = worker_config(settings, _session_capacity(settings, len(addresses)))
    # Only when OTEL_* asks for it (common/tracing.py); local workers inherit the gateway's.
    tracing.setup("sfu-worker", {"worker.id": config.worker_id})
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            loop = runner.get_loop()
            if settings.udp_ports is not None:
                adapter.install_port_range(loop, adapter.PortRange(*settings.udp_ports))
            return runner.run(_run(config))
    finally:
        tracing.shutdown(timeout_s=2.0)  # within the supervisor's stop grace


def _session_capacity(settings: WorkerSettings, addresses: int) -> int | None:
    """Sessions the UDP_PORTS range allows: one socket per host address and session (BUNDLE
    and rtcp-mux: one ICE component). None: the OS picks the ports, no fixed limit."""
    if settings.udp_ports is None:
        return None
    low, high = settings.udp_ports
    capacity = (high - low + 1) // addresses
    if capacity < 1:
        die(PROG, f"UDP_PORTS={low}-{high} has fewer ports than the {addresses} addresses")
    return capacity


def worker_config(settings: WorkerSettings, session_capacity: int | None) -> WorkerConfig:
    return WorkerConfig(
        connect=settings.connect,
        worker_id=settings.worker_id or f"{socket.gethostname()}-{os.getpid()}",
        token=settings.worker_token,
        local=settings.parent_pid is not None,
        parent_pid=settings.parent_pid,
        gateway_timeout=settings.gateway_timeout,
        session=SessionSettings(
            connect_timeout=settings.session_connect_timeout,
            public_ip=settings.public_ip,
            transport_cc=settings.transport_cc,
        ),
        instant_start=InstantStart(
            enabled=settings.instant_start, max_bytes=settings.instant_start_max_bytes
        ),
        recording=RecordingSettings(enabled=settings.record_enabled, directory=settings.record_dir),
        session_capacity=session_capacity,
        plane=settings.plane,
    )


async def _run(config: WorkerConfig) -> int:
    worker = Worker(config)
    loop = asyncio.get_running_loop()
    # systemd (common/notify.py; a stand-alone worker's unit): READY=1 once registered,
    # WATCHDOG=1 from this loop, STOPPING=1 on SIGTERM. Nothing without NOTIFY_SOCKET.
    def registered() -> None:
        notify.ready(f"registered with the gateway at {config.connect}")

    def stop(name: str) -> None:
        notify.stopping()
        worker.stop(name)

    worker.on_registered = registered
    watchdog = notify.start_watchdog()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signal.Signals(signum).name)
    # Harmless signals must not kill a worker that carries live rooms.
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGPIPE):
        loop.add_signal_handler(signum, lambda: None)
    code = await worker.run()
    if watchdog is not None:
        watchdog.cancel()
    if worker.exit_reason:
        logging.getLogger(__name__).info("worker exiting: %s", worker.exit_reason)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
