"""Spawns and respawns the local media workers (the arbiter part of gunicorn, in asyncio).

A local worker gets every setting on its command line, written through the worker's own
settings table (common/worker_settings.py) from the gateway's configuration; none reaches it
through the environment, which is stripped of every variable either table names.

One slot per worker: a slot keeps its worker id and its UDP port sub-range (or its
UDP_MUX_PORT/TCP_MUX_PORT + index) across respawns, so a replacement worker binds the same
ports. Before the first spawn, the supervisor asks STUN_DISCOVER once and logs the one line of
what the workers announce (common/reach.py). A worker that dies before it ever registered
is a boot failure: retried with exponential backoff, and after MAX_BOOT_FAILURES in a row the
slot is given up. Nothing here ever loops tightly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common import reach, worker_settings
from common.worker_settings import WorkerSettings
from gateway import settings as gateway_settings
from gateway.config import GatewayConfig

log = logging.getLogger(__name__)

MAX_BOOT_FAILURES = 5
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
# A worker that registered and then died is replaced at once, but not more often than this,
# so a worker that crashes right after registering cannot spin the CPU.
MIN_RESPAWN_INTERVAL_S = 1.0
STOP_GRACE_S = 5.0
# A worker declared dead gets SIGTERM first (it may only have been slow, and can then close
# its files and sockets), and SIGKILL if it is still there after this.
KILL_GRACE_S = 2.0
EXIT_BOOT_FAILURE = 3  # the worker's code for "retrying will not help soon"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Neither the gateway's settings (its secrets among them) nor a worker setting the gateway
# did not write on the command line may reach a worker through its environment.
_SETTINGS_ENV = frozenset(
    name
    for setting in gateway_settings.SETTINGS + worker_settings.SETTINGS
    for name in (setting.env, setting.file_env)  # a secret's <ENV>_FILE too
    if name is not None
)


@dataclass
class Slot:
    index: int
    udp_ports: tuple[int, int] | None
    process: asyncio.subprocess.Process | None = None
    registered: bool = False
    boot_failures: int = 0
    given_up: bool = False
    udp_mux_port: int | None = None  # UDP_MUX_PORT + index
    tcp_mux_port: int | None = None  # TCP_MUX_PORT + index

    @property
    def worker_id(self) -> str:
        return f"local-{self.index}"


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


def backoff_delay(consecutive_failures: int) -> float:
    """1 s after the first boot failure, doubling, capped at 30 s."""
    exponent = max(consecutive_failures - 1, 0)
    return float(min(FIRST_BACKOFF_S * 2**exponent, MAX_BACKOFF_S))


def new_plane_name() -> str:
    """The shared-memory media plane of this gateway's local workers: unique per gateway
    process (a pid alone may be reused while an old plane's segments still exist)."""
    return f"live-sfu-{os.getpid()}-{secrets.token_hex(4)}"


def local_worker_settings(
    config: GatewayConfig,
    slot: Slot,
    connect: str,
    plane: str,
    public_ips: Sequence[str] | None = None,
) -> WorkerSettings:
    """What the local worker of `slot` runs with: the gateway's own settings for them, and
    the plane every local worker of this gateway shares (remote workers have none).
    `public_ips`: PUBLIC_IP with what STUN_DISCOVER found, which the gateway asked once for
    all its workers (None: PUBLIC_IP as configured)."""
    media = config.media
    return WorkerSettings(
        connect=connect,
        worker_id=slot.worker_id,
        worker_token="",  # local workers prove themselves by their pid instead
        udp_ports=slot.udp_ports,
        bind_addresses=media.bind_addresses,
        public_ip=list(media.public_ip if public_ips is None else public_ips),
        session_connect_timeout=media.session_connect_timeout,
        instant_start=media.instant_start,
        instant_start_max_bytes=media.instant_start_max_bytes,
        record_enabled=config.recording.record_enabled,
        # Absolute: the gateway's uploader and its workers must see the same directory.
        record_dir=os.path.abspath(config.recording.record_dir),
        transport_cc=media.transport_cc,
        cert_rotate=media.cert_rotate,
        gateway_timeout=config.workers.gateway_timeout,
        parent_pid=os.getpid(),
        plane=plane,
        log_level=config.observability.log_level,
        log_format=config.observability.log_format,
        udp_mux_port=slot.udp_mux_port,
        tcp_mux_port=slot.tcp_mux_port,
        bind_interfaces=media.bind_interfaces,
        stun_discover="",  # asked by the gateway, once: `public_ips`
    )


def worker_command(
    config: GatewayConfig,
    slot: Slot,
    connect: str,
    plane: str,
    public_ips: Sequence[str] | None = None,
) -> list[str]:
    """The command line of one local worker; flags with an empty value are left out."""
    settings = local_worker_settings(config, slot, connect, plane, public_ips)
    return [sys.executable, "-m", "sfu", *worker_settings.to_argv(settings)]


def worker_environment() -> dict[str, str]:
    """Make `python -m sfu` importable even when the project is not installed; and keep every
    setting out of it: a worker's come on its command line, and the gateway's secrets
    (tokens, JWT and TURN secrets) are none of a worker's business."""
    env = {name: value for name, value in os.environ.items() if name not in _SETTINGS_ENV}
    paths = [str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def _kill_if_running(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        log.warning("pid %d outlived SIGTERM; killing it", process.pid)
        with contextlib.suppress(ProcessLookupError):
            process.kill()


class Supervisor:
    def __init__(
        self,
        config: GatewayConfig,
        connect: str,
        on_exit: Callable[[str, int], None],
    ) -> None:
        self.config = config
        self.connect = connect
        self._on_exit = on_exit
        # One plane per gateway process, the same for every local worker and its respawns.
        self.plane = new_plane_name()
        port_ranges: list[tuple[int, int] | None]
        udp_ports, count = config.media.udp_ports, config.workers.count
        if udp_ports is not None and count > 0:
            port_ranges = list(split_port_range(udp_ports, count))
        else:
            port_ranges = [None] * count
        media = config.media
        self.slots = [
            Slot(
                index,
                ports,
                udp_mux_port=None if media.udp_mux_port is None else media.udp_mux_port + index,
                tcp_mux_port=None if media.tcp_mux_port is None else media.tcp_mux_port + index,
            )
            for index, ports in enumerate(port_ranges)
        ]
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        # PUBLIC_IP, with what STUN_DISCOVER found once at start (_prepare) for every worker.
        self.public_ips: list[str] = list(media.public_ip)
        self._prepared = asyncio.Event()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._prepare())]
        self._tasks += [loop.create_task(self._run_slot(slot)) for slot in self.slots]

    async def _prepare(self) -> None:
        """Before the first worker starts: the public address (STUN_DISCOVER, one request,
        3 s at most, a failure only warns) and the one line saying what is announced."""
        try:
            media = self.config.media
            host = reach.select_host_addresses(
                reach.system_interfaces(), media.bind_addresses, media.bind_interfaces
            )
            found = None
            if media.stun_discover:
                found = await asyncio.to_thread(
                    reach.discover_from, media.stun_discover, media.udp_mux_port
                )
                warning = reach.discovery_warning(media.public_ip, host.addresses, found)
                if warning is not None:
                    log.warning("%s", warning)
                warning = reach.port_warning(found, media.udp_mux_port, self.config.workers.count)
                if warning is not None:
                    log.warning("%s", warning)
            self.public_ips = reach.with_discovered(media.public_ip, host.addresses, found)
            source = reach.public_source(media.public_ip, self.public_ips)
            ports = reach.MediaPorts(
                self.config.workers.count, media.udp_mux_port, media.tcp_mux_port, media.udp_ports
            )
            log.info("%s", reach.summary_line(host, self.public_ips, ports, source))
        except Exception:  # the workers must start whatever this says
            log.exception("media address check failed")
        finally:
            self._prepared.set()

    # --- hooks for the registry -----------------------------------------------------------

    def _slot_of(self, worker_id: str) -> Slot | None:
        for slot in self.slots:
            if slot.worker_id == worker_id:
                return slot
        return None

    def pid_of(self, worker_id: str) -> int | None:
        slot = self._slot_of(worker_id)
        if slot is None or slot.process is None or slot.process.returncode is not None:
            return None
        return slot.process.pid

    def worker_registered(self, worker_id: str) -> None:
        slot = self._slot_of(worker_id)
        if slot is not None:
            slot.registered = True
            slot.boot_failures = 0

    def kill_worker(self, worker_id: str) -> None:
        """The registry declared this worker dead: make sure it is (SIGTERM, then SIGKILL,
        which also ends a stopped one)."""
        slot = self._slot_of(worker_id)
        if slot is None or slot.process is None or slot.process.returncode is not None:
            return
        process = slot.process
        log.warning(
            "stopping %s (pid %d): SIGTERM, then SIGKILL after %g s",
            worker_id,
            process.pid,
            KILL_GRACE_S,
        )
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        asyncio.get_running_loop().call_later(KILL_GRACE_S, _kill_if_running, process)

    # --- the slot loop --------------------------------------------------------------------

    async def _spawn(self, slot: Slot) -> asyncio.subprocess.Process | None:
        await self._prepared.wait()
        command = worker_command(self.config, slot, self.connect, self.plane, self.public_ips)
        try:
            return await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                env=worker_environment(),
                # Own session: a Ctrl+C in the terminal reaches only the gateway, which then
                # stops the workers in order instead of racing them.
                start_new_session=True,
            )
        except OSError as exc:
            log.error("could not start %s: %s", slot.worker_id, exc)
            return None

    async def _run_slot(self, slot: Slot) -> None:
        while not self._stopping.is_set():
            slot.registered = False
            started = time.monotonic()
            process = await self._spawn(slot)
            exit_code = -1
            if process is not None:
                slot.process = process
                log.info("started %s (pid %d)", slot.worker_id, process.pid)
                exit_code = await process.wait()
                self._on_exit(slot.worker_id, process.pid)
            if self._stopping.is_set():
                return
            delay = self._after_exit(slot, exit_code, time.monotonic() - started)
            if delay is None:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    def _after_exit(self, slot: Slot, exit_code: int, lifetime: float) -> float | None:
        """How long to wait before the respawn, or None to give the slot up."""
        if slot.registered:
            slot.boot_failures = 0
            log.warning("%s exited with code %d; respawning", slot.worker_id, exit_code)
            return max(MIN_RESPAWN_INTERVAL_S - lifetime, 0.0)
        slot.boot_failures += 1
        why = (
            " (boot failure: configuration or environment)"
            if exit_code == EXIT_BOOT_FAILURE
            else ""
        )
        if slot.boot_failures >= MAX_BOOT_FAILURES:
            slot.given_up = True
            log.error(
                "%s failed to start %d times in a row (last exit code %d%s); giving up this slot",
                slot.worker_id,
                slot.boot_failures,
                exit_code,
                why,
            )
            return None
        delay = backoff_delay(slot.boot_failures)
        log.error(
            "%s exited with code %d%s before registering; retrying in %g s",
            slot.worker_id,
            exit_code,
            why,
            delay,
        )
        return delay

    # --- shutdown -------------------------------------------------------------------------

    def _running(self) -> list[asyncio.subprocess.Process]:
        return [
            s.process for s in self.slots if s.process is not None and s.process.returncode is None
        ]

    async def stop(self, graceful: bool = True) -> None:
        """SIGTERM every worker and SIGKILL what is left after STOP_GRACE_S (or SIGKILL at once)."""
        self._stopping.set()
        processes = self._running()
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
        if processes:
            waits = [asyncio.ensure_future(p.wait()) for p in processes]
            _done, pending = await asyncio.wait(waits, timeout=STOP_GRACE_S if graceful else 1.0)
            for process in self._running():
                log.warning("worker pid %d did not stop in time; killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
