"""sfu-worker: one media worker process, registered with a gateway over ZeroMQ.

Its settings are common/worker_settings.py's table (flags, environment, --help, validation).

Exit codes: 0 stopped, 1 lost its gateway or was refused, 2 invalid settings,
3 boot failure (the installed aiortc/aioice do not match, or UDP setup failed: a mux port
that cannot be bound) so that a supervisor does not respawn it in a loop.

Network reach (common/reach.py, docs/networking.md): the host addresses come from
BIND_ADDRESSES, else BIND_INTERFACES or every interface but container bridges; a stand-alone
worker asks STUN_DISCOVER itself (a local worker gets the gateway's answer in PUBLIC_IP);
with UDP_MUX_PORT or TCP_MUX_PORT, every session shares the worker's IceMux sockets.
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

from common import logformat, notify, reach, tracing
from common.settings import die
from common.worker_settings import PROG, WorkerSettings, load_worker_settings
from sfu import aiortc_adapter as adapter
from sfu.aiortc_adapter.mux import IceMux
from sfu.media.instant_start import InstantStart
from sfu.recording.recorder import RecordingSettings
from sfu.session import SessionSettings
from sfu.worker import Worker, WorkerConfig

EXIT_BOOT_FAILURE = 3


SELF_TEST_FLAG = "--self-test"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if SELF_TEST_FLAG in args:
        return self_test([a for a in args if a != SELF_TEST_FLAG])
    settings = load_worker_settings(args)
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

    host = reach.select_host_addresses(
        reach.system_interfaces(), settings.bind_addresses, settings.bind_interfaces
    )
    addresses = host.addresses
    adapter.restrict_host_addresses(addresses)
    public_ips = _public_ips(settings, host)
    config = worker_config(
        settings, _session_capacity(settings, len(addresses)), public_ips=public_ips
    )
    mux = None
    if settings.udp_mux_port is not None or settings.tcp_mux_port is not None:
        mux = IceMux(addresses, settings.udp_mux_port, settings.tcp_mux_port)
    # Only when OTEL_* asks for it (common/tracing.py); local workers inherit the gateway's.
    tracing.setup("sfu-worker", {"worker.id": config.worker_id})
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            loop = runner.get_loop()
            if settings.udp_ports is not None:
                adapter.install_port_range(loop, adapter.PortRange(*settings.udp_ports))
            try:  # one DTLS certificate for this worker's sessions, rotated on a timer
                adapter.install_certificates(loop, settings.cert_rotate)
            except adapter.AdapterError as exc:
                sys.stderr.write(f"{PROG}: {exc}\n")
                return EXIT_BOOT_FAILURE
            return runner.run(_run(config, mux, _mux_settings(settings)))
    finally:
        tracing.shutdown(timeout_s=2.0)  # within the supervisor's stop grace


def self_test(argv: Sequence[str]) -> int:
    """`sfu-worker --self-test [settings]`: common/reach.py's check of this worker's media
    addresses and ports (SFU_CONNECT is not needed, nothing connects); exit 0 or 1."""
    env = {**os.environ, "SFU_CONNECT": os.environ.get("SFU_CONNECT") or "ipc:///self-test"}
    settings = load_worker_settings(argv, env)
    ports = reach.MediaPorts(1, settings.udp_mux_port, settings.tcp_mux_port, settings.udp_ports)
    return reach.check_and_print(
        f"{PROG} self-test",
        settings.bind_addresses,
        settings.bind_interfaces,
        settings.public_ip,
        settings.stun_discover,
        ports,
    )


def _public_ips(settings: WorkerSettings, host: reach.HostSelection) -> list[str]:
    """PUBLIC_IP, with STUN_DISCOVER's answer (asked here once, 3 s at most: a failure only
    warns); and the one line saying what this worker announces."""
    log = logging.getLogger(__name__)
    found = None
    if settings.stun_discover:
        found = reach.discover_from(settings.stun_discover, settings.udp_mux_port)
        for warning in (
            reach.discovery_warning(settings.public_ip, host.addresses, found),
            reach.port_warning(found, settings.udp_mux_port, 1),
        ):
            if warning is not None:
                log.warning("%s", warning)
    public_ips = reach.with_discovered(settings.public_ip, host.addresses, found)
    ports = reach.MediaPorts(1, settings.udp_mux_port, settings.tcp_mux_port, settings.udp_ports)
    source = reach.public_source(settings.public_ip, public_ips)
    # A local worker's gateway already said it for all of them.
    level = logging.DEBUG if settings.parent_pid is not None else logging.INFO
    log.log(level, "%s", reach.summary_line(host, public_ips, ports, source))
    return public_ips


def _mux_settings(settings: WorkerSettings) -> str:
    """The settings behind a mux bind failure, for its one line."""
    ports = (("UDP_MUX_PORT", settings.udp_mux_port), ("TCP_MUX_PORT", settings.tcp_mux_port))
    named = [f"{name}={port}" for name, port in ports if port is not None]
    return ", ".join(named)


def _session_capacity(settings: WorkerSettings, addresses: int) -> int | None:
    """Sessions the UDP_PORTS range allows: one socket per host address and session (BUNDLE
    and rtcp-mux: one ICE component). None: the OS picks the ports, or every session shares
    the UDP_MUX_PORT socket: no fixed limit."""
    if settings.udp_ports is None or settings.udp_mux_port is not None:
        return None
    low, high = settings.udp_ports
    capacity = (high - low + 1) // addresses
    if capacity < 1:
        die(PROG, f"UDP_PORTS={low}-{high} has fewer ports than the {addresses} addresses")
    return capacity


def worker_config(
    settings: WorkerSettings,
    session_capacity: int | None,
    public_ips: Sequence[str] | None = None,
) -> WorkerConfig:
    return WorkerConfig(
        connect=settings.connect,
        worker_id=settings.worker_id or f"{socket.gethostname()}-{os.getpid()}",
        token=settings.worker_token,
        local=settings.parent_pid is not None,
        parent_pid=settings.parent_pid,
        gateway_timeout=settings.gateway_timeout,
        session=SessionSettings(
            connect_timeout=settings.session_connect_timeout,
            public_ip=list(settings.public_ip if public_ips is None else public_ips),
            transport_cc=settings.transport_cc,
        ),
        instant_start=InstantStart(
            enabled=settings.instant_start, max_bytes=settings.instant_start_max_bytes
        ),
        recording=RecordingSettings(enabled=settings.record_enabled, directory=settings.record_dir),
        session_capacity=session_capacity,
        plane=settings.plane,
    )


async def _run(config: WorkerConfig, mux: IceMux | None = None, mux_settings: str = "") -> int:
    loop = asyncio.get_running_loop()
    if mux is not None:
        # Bound before the worker registers: no session is ever placed on a worker whose
        # media port is not there.
        try:
            await mux.start(loop)
        except OSError as exc:
            sys.stderr.write(f"{PROG}: cannot listen for media: {exc} ({mux_settings})\n")
            return EXIT_BOOT_FAILURE
    try:
        return await _serve(config, loop, mux)
    finally:
        if mux is not None:
            mux.close()


async def _serve(
    config: WorkerConfig, loop: asyncio.AbstractEventLoop, mux: IceMux | None = None
) -> int:
    worker = Worker(config)
    worker.ice_mux = mux  # its counters go out with the heartbeats
    if mux is not None:
        mux.on_rebinding = worker.path_changed
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
