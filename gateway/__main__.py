"""sfu-gateway: the HTTP front (WHIP/WHEP) and supervisor of the media workers.

Never imports aiortc, av or sfu: media lives in the worker processes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import uvloop
import zmq
from aiohttp import web

from common import logformat, notify, tracing
from common.settings import die
from gateway import selftest
from gateway.config import GatewayConfig, LoadedConfig, load_all
from gateway.http.access_log import RedactingAccessLogger
from gateway.http.app import apply_live_config, make_app, make_metrics_app
from gateway.http.server import install_json_errors, install_log_filter
from gateway.http.whip_whep import API_KEY
from gateway.metrics import REGISTRY_KEY
from gateway.placement.directory import Directory
from gateway.placement.registry import Registry
from gateway.placement.supervisor import Supervisor
from gateway.reload import ReloadState, reload
from gateway.settings import PROG
from ipc.channel import router_channel

log = logging.getLogger("gateway")

HTTP_SHUTDOWN_TIMEOUT_S = 5.0
CLOSE_SESSIONS_TIMEOUT_S = 5.0
# Requests in flight when a stop begins run to their answer for at most this long.
MAX_DRAIN_S = 15.0
# How often a draining gateway looks whether its sessions have ended.
SESSION_DRAIN_POLL_S = 0.1
# How often systemd's STATUS= (rooms, sessions, workers) is refreshed.
SYSTEMD_STATUS_INTERVAL_S = 5.0
IPC_DIR_PREFIX = "sfu-gw-"
_OWN_IPC_DIR = re.compile(rf"^{IPC_DIR_PREFIX}(\d+)-")
LEGACY_IPC_DIR_MIN_AGE_S = 60.0
EXIT_OK = 0
EXIT_STARTUP_FAILED = 1


def configure_logging(level: str, log_format: str = "text") -> None:
    logformat.configure(level, log_format=log_format)
    install_log_filter()


def build_ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    http = config.http
    if not http.tls_enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(http.tls_cert_file, http.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        die(PROG, f"TLS_CERT_FILE/TLS_KEY_FILE cannot be loaded: {exc}")
    return context


@dataclass
class StopSignals:
    """Signal handlers only set events: the first asks for a graceful stop, a second a fast one."""

    graceful: asyncio.Event = field(default_factory=asyncio.Event)
    fast: asyncio.Event = field(default_factory=asyncio.Event)

    def on_signal(self, signum: int) -> None:
        if self.graceful.is_set():
            self.fast.set()
        else:
            self.graceful.set()
        log.info("received %s", signal.Signals(signum).name)

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _socket_is_dead(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return True
        except OSError:
            return False
    return False


def remove_stale_ipc_dirs(parent: str) -> list[str]:
    """Remove the private IPC directories that SIGKILLed gateways left in `parent`.

    A directory is stale when the gateway whose pid its name carries is gone; one from an
    older release (no pid in its name) when nobody listens on its socket and it is over a
    minute old. Only our own user's directories are touched.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(IPC_DIR_PREFIX):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_dir(follow_symlinks=False) or info.st_uid != os.getuid():
            continue
        match = _OWN_IPC_DIR.match(entry.name)
        if match is not None:
            stale = not _process_exists(int(match.group(1)))
        else:
            old = time.time() - info.st_mtime > LEGACY_IPC_DIR_MIN_AGE_S
            stale = old and _socket_is_dead(os.path.join(entry.path, "gateway.sock"))
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    return removed


class Gateway:
    def __init__(self, config: GatewayConfig, ssl_context: ssl.SSLContext | None) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self._own_ipc_dir = not config.workers.ipc_dir
        if self._own_ipc_dir:
            for path in remove_stale_ipc_dirs(tempfile.gettempdir()):
                log.info("removed %s, left behind by a gateway that is gone", path)
        self.ipc_dir = config.workers.ipc_dir or tempfile.mkdtemp(
            prefix=f"{IPC_DIR_PREFIX}{os.getpid()}-"
        )
        self.ipc_endpoint = f"ipc://{self.ipc_dir}/gateway.sock"
        self.registry: Registry | None = None
        self.supervisor: Supervisor | None = None
        self.runner: web.AppRunner | None = None
        self.metrics_runner: web.AppRunner | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind IPC, then HTTP, then spawn workers; raises OSError/ZMQError on a bind failure."""
        os.makedirs(self.ipc_dir, mode=0o700, exist_ok=True)
        endpoints = [self.ipc_endpoint]
        worker_listen = self.config.workers.worker_listen
        if worker_listen:
            endpoints.append(worker_listen)
        channel = router_channel(endpoints)
        workers = self.config.workers
        directory = Directory(workers.spread_rooms, workers.spread_threshold)
        self.registry = Registry(self.config, channel, directory)
        self.supervisor = Supervisor(self.config, self.ipc_endpoint, self.registry.worker_exited)
        self.registry.local_pid_of = self.supervisor.pid_of
        self.registry.on_worker_registered = self.supervisor.worker_registered
        self.registry.on_worker_lost = self.supervisor.kill_worker
        self.registry.start()

        app = make_app(self.config, self.registry)
        self.runner = web.AppRunner(
            app, shutdown_timeout=HTTP_SHUTDOWN_TIMEOUT_S, access_log_class=RedactingAccessLogger
        )
        await self.runner.setup()
        install_json_errors(self.runner)
        address = self.config.http.http_addr
        site = web.TCPSite(self.runner, address.host, address.port, ssl_context=self.ssl_context)
        await site.start()
        metrics_addr = self.config.observability.metrics_addr
        if metrics_addr is not None:
            self.metrics_runner = web.AppRunner(
                make_metrics_app(app[REGISTRY_KEY]), access_log=None
            )
            await self.metrics_runner.setup()
            install_json_errors(self.metrics_runner)
            await web.TCPSite(self.metrics_runner, metrics_addr.host, metrics_addr.port).start()
            log.info("metrics on %s/metrics", metrics_addr.url("http"))
        self.supervisor.start()
        scheme = "https" if self.ssl_context else "http"
        log.info(
            "%s listening on %s with %d local workers%s",
            PROG,
            address.url(scheme),
            self.config.workers.count,
            f", remote workers on {worker_listen}" if worker_listen else "",
        )

    async def _close_all_rooms(self) -> None:
        if self.registry is None:
            return
        registry = self.registry
        rooms = list(registry.directory.rooms)
        if not rooms:
            return
        log.info("closing %d rooms", len(rooms))
        # Each room on its home and on every edge; failures are logged by the registry.
        await asyncio.gather(*(registry.close_room(room) for room in rooms))

    def apply_config(self, config: GatewayConfig) -> None:
        """A reload's new configuration (gateway/reload.py: only its live settings differ)."""
        previous = self.config
        self.config = config
        if self.runner is not None:
            apply_live_config(self.runner.app, config)
        if self.supervisor is not None:
            self.supervisor.config = config  # a respawned worker starts with the live values
        level = config.observability.log_level
        if self.registry is not None and level != previous.observability.log_level:
            task = asyncio.get_running_loop().create_task(self.registry.set_log_level(level))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _wait_for_sessions(self, timeout: float) -> None:
        """The drain: live sessions go on (trickle, DELETE) until they end by themselves or
        `timeout` passes; new ones are refused meanwhile (Drain.start)."""
        if self.registry is None or timeout <= 0:
            return
        directory = self.registry.directory
        if not directory.sessions:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        log.info(
            "draining: waiting up to %g s (DRAIN_TIMEOUT) for %d sessions to end; "
            "a second signal stops at once",
            timeout,
            len(directory.sessions),
        )
        # Polled: the directory has no "now empty" event, and ten looks a second cost nothing.
        while directory.sessions and loop.time() - started < timeout:  # noqa: ASYNC110
            await asyncio.sleep(SESSION_DRAIN_POLL_S)
        if directory.sessions:
            log.warning(
                "DRAIN_TIMEOUT (%g s) passed: closing the %d sessions still live",
                timeout,
                len(directory.sessions),
            )
        else:
            log.info("drained: every session ended within %.1f s", loop.time() - started)

    async def stop(self, graceful: bool) -> None:
        if self.runner is not None and graceful:
            api = self.runner.app[API_KEY]
            api.start_draining()  # /readyz and new sessions: 503 with Retry-After
            await self._wait_for_sessions(self.config.ops.drain_timeout)
            api.drain.close()
            for site in list(self.runner.sites):
                await site.stop()  # no new connections; requests on open ones get 503
            drain_s = min(self.config.workers.ipc_timeout + 3.0, MAX_DRAIN_S)
            if not await api.drain.wait_idle(drain_s):
                log.warning("%d requests still running after %g s", api.drain.in_flight, drain_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._close_all_rooms(), CLOSE_SESSIONS_TIMEOUT_S)
        if self.registry is not None:
            self.registry.shutting_down = True
        if self.supervisor is not None:
            await self.supervisor.stop(graceful=graceful)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        if self.registry is not None:
            await self.registry.stop()
        if self._own_ipc_dir:
            shutil.rmtree(self.ipc_dir, ignore_errors=True)


def systemd_status(registry: Registry) -> str:
    """The one line `systemctl status` shows: rooms, sessions and workers."""
    directory = registry.directory
    return (
        f"{len(directory.rooms)} rooms, {len(directory.sessions)} sessions, "
        f"{registry.live_worker_count()} of {len(directory.workers)} workers responsive"
    )


async def report_to_systemd(gateway: Gateway) -> None:
    """READY=1 once HTTP listens (the caller starts this after gateway.start()) and a worker
    has registered, then STATUS= every few seconds. Nothing without NOTIFY_SOCKET."""
    registry = gateway.registry
    if not notify.enabled() or registry is None:
        return
    notify.status("listening; waiting for the first media worker")
    announced = False
    while True:
        if announced:
            notify.status(systemd_status(registry))
        elif registry.live_worker_count():
            notify.ready(systemd_status(registry))
            announced = True
        await asyncio.sleep(SYSTEMD_STATUS_INTERVAL_S if announced else 0.05)


def install_reload(
    loop: asyncio.AbstractEventLoop,
    gateway: Gateway,
    loaded: LoadedConfig,
    argv: Sequence[str] | None,
) -> None:
    """SIGHUP reloads the configuration (gateway/reload.py); the handler only schedules it."""
    state = ReloadState(argv=argv, started=loaded, current=loaded, apply=gateway.apply_config)
    running: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        log.info("received SIGHUP: reloading the configuration")
        task = loop.create_task(reload(state))
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)


async def serve(
    config: GatewayConfig,
    ssl_context: ssl.SSLContext | None,
    loaded: LoadedConfig | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """Run until SIGTERM/SIGINT; with `loaded` (what `config` came from), SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    signals = StopSignals()
    signals.install(loop)
    # systemd (common/notify.py): WATCHDOG=1 from this loop for as long as it turns.
    watchdog = notify.start_watchdog()
    gateway = Gateway(config, ssl_context)
    try:
        await gateway.start()
    except (OSError, zmq.ZMQError) as exc:
        log.error("cannot start: %s", exc)
        await gateway.stop(graceful=False)
        return EXIT_STARTUP_FAILED
    if loaded is not None:
        install_reload(loop, gateway, loaded, argv)
    reporter = asyncio.create_task(report_to_systemd(gateway))
    await signals.graceful.wait()
    reporter.cancel()
    notify.stopping("draining")
    log.info("stopping (a second signal stops at once)")
    graceful = asyncio.create_task(gateway.stop(graceful=True))
    fast = asyncio.create_task(signals.fast.wait())
    await asyncio.wait({graceful, fast}, return_when=asyncio.FIRST_COMPLETED)
    if not graceful.done():
        log.warning("second signal: stopping now")
        graceful.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await graceful
        await gateway.stop(graceful=False)
    fast.cancel()
    if watchdog is not None:
        watchdog.cancel()
    log.info("stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if selftest.FLAG in args:
        return selftest.main(args)  # what would be announced and bound, then exit
    loaded = load_all(args)  # flags, environment, CONFIG_FILE, defaults
    config = loaded.config
    configure_logging(config.observability.log_level, config.observability.log_format)
    notify.configure()  # takes NOTIFY_SOCKET & co. out of the environment workers inherit
    ssl_context = build_ssl_context(config)
    tracing.setup("sfu-gateway")  # only when OTEL_* asks for it (common/tracing.py)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(serve(config, ssl_context, loaded, argv))
    finally:
        tracing.shutdown()  # export the spans still buffered


if __name__ == "__main__":
    raise SystemExit(main())
