"""Real gateway and worker processes, started as an operator would, and seen from outside.

* `start_gateway()` runs `python -m gateway` on a free port of 127.0.0.1, in its own session
  (so that `stop()` can signal its whole process group), with its output in a log file, and
  waits for /readyz or /healthz if asked;
* `RemoteWorker` is a `python -m sfu` started by hand against a gateway, as on another host;
* `worker_pids()`, `udp_port_owner(s)()`, `process_gone()` and `worker_id_of()` read /proc to
  see which process holds what;
* `run_gateway_cli()` runs the gateway to completion (configuration errors, --help).

Every child gets `child_env()`: the caller's environment without any gateway setting (a
developer's shell must not change the gateway under test) plus ONE_ADDRESS_DEFAULTS.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import aiohttp

from gateway.settings import SETTINGS

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT = 20.0
STOP_GRACE = 10.0
# Tests speak from one address (127.0.0.1) far faster than real clients do, so the per-address
# defaults against floods are off unless a test sets them (tests/adversarial/
# test_hardening_regressions.py checks those defaults on a gateway started without these).
ONE_ADDRESS_DEFAULTS = {"RATE_LIMIT_RPS": "0", "MAX_PENDING_SESSIONS_PER_IP": "0"}
# A gateway under test stops at once (as before DRAIN_TIMEOUT existed) unless a test sets
# DRAIN_TIMEOUT (tests/ops/test_drain.py checks the drain itself).
STOP_DEFAULTS = {"DRAIN_TIMEOUT": "0"}
# Settings the caller's environment must not leak into a gateway under test: every one it has.
_GATEWAY_ENV = frozenset(setting.env for setting in SETTINGS)

T = TypeVar("T")


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it, so parallel runs do not clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a gateway, worker or client started here."""
    env = {k: v for k, v in os.environ.items() if k not in _GATEWAY_ENV}
    env["PYTHONPATH"] = str(REPO)
    env.update(ONE_ADDRESS_DEFAULTS)
    env.update(STOP_DEFAULTS)
    env.update(extra or {})
    return env


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


# --- waits --------------------------------------------------------------------------------


def wait_sync(
    predicate: Callable[[], T | None],
    within: float,
    what: str,
    log: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> T:
    """Poll until `predicate()` is truthy and return it; AssertionError (with `log()`) if not."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f"\n{log()}" if log is not None else ""
            raise AssertionError(f"timed out after {within:g} s waiting for {what}{detail}")
        time.sleep(interval)


async def wait_until(predicate: Callable[[], object], within: float, what: str) -> None:
    """wait_sync() for a coroutine: polls without blocking the event loop."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        await asyncio.sleep(0.05)


# --- the gateway ----------------------------------------------------------------------------


class GatewayProcess:
    """A running `python -m gateway`; its output goes to `log_path`, shown on failure."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, log_path: Path, ipc_dir: Path | None
    ) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.ipc_dir = ipc_dir  # None: the gateway made its own (sfu-gw-<pid>-* in $TMPDIR)

    @property
    def ipc_endpoint(self) -> str:
        """Where a hand-started worker connects (needs start_gateway(own_ipc_dir=True))."""
        if self.ipc_dir is None:
            raise ValueError("this gateway chose its own IPC directory; pass own_ipc_dir=True")
        return f"ipc://{self.ipc_dir}/gateway.sock"

    def log(self, tail: int | None = None) -> str:
        """The gateway's output so far (its last `tail` characters)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text if tail is None else text[-tail:]

    def wait_ready(self, timeout: float = READY_TIMEOUT, path: str = "/readyz") -> None:
        """Block until `path` answers 200 (/readyz: a worker registered; /healthz: listening)."""

        def up() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"gateway exited with {self.process.returncode} before {path}:\n{self.log()}"
                )
            return http_status(self.url + path) == 200

        wait_sync(up, timeout, f"{path} of the gateway to answer 200", lambda: self.log(4000))

    async def wait_healthy(self, within: float = 15.0) -> None:
        """wait_ready("/healthz") for a coroutine."""
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"gateway exited early:\n{self.log()}")
                try:
                    async with http.get(self.url + "/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"gateway not healthy in {within:g} s:\n{self.log()}")
                await asyncio.sleep(0.05)

    def stop(self) -> int | None:
        """SIGTERM the whole process group, then SIGKILL it after the grace period.

        The gateway was started in its own session; signalling the group is what guarantees
        that nothing it started without a session of its own outlives a test.
        """
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        # Children can outlive a gateway that exited on its own: always sweep the group.
        _signal_group(self.process.pid, signal.SIGKILL)
        try:
            return self.process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            return None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def start_gateway(
    log_dir: Path,
    *,
    workers: int | None = 1,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wait: Literal["/readyz", "/healthz"] | None = "/readyz",
    own_ipc_dir: bool = False,
) -> GatewayProcess:
    """Start `python -m gateway` on a free port of 127.0.0.1.

    workers=None passes no --workers (the gateway's default, or one in `args`); wait=None
    returns at once. The gateway makes its own IPC directory in $TMPDIR unless `own_ipc_dir`
    puts it in `log_dir`, where `ipc_endpoint` (for hand-started workers) can name it.
    """
    port = pick_free_port()
    log_path = log_dir / f"gateway-{port}.log"
    ipc_dir = log_dir / f"ipc-{port}" if own_ipc_dir else None
    command = [sys.executable, "-m", "gateway", "--http-addr", f"127.0.0.1:{port}"]
    if workers is not None:
        command += ["--workers", str(workers)]
    if ipc_dir is not None:
        command += ["--ipc-dir", str(ipc_dir)]
    command += args
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=child_env(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    gateway = GatewayProcess(process, port, log_path, ipc_dir)
    if wait is not None:
        try:
            gateway.wait_ready(path=wait)
        except BaseException:
            gateway.stop()
            raise
    return gateway


def run_gateway_cli(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` to completion (30 s at most), output captured."""
    # Never the default :8080: should a case wrongly start, it must not clash with anything.
    settings = {"HTTP_ADDR": f"127.0.0.1:{pick_free_port()}", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(settings),
        cwd=REPO,
    )


# --- a worker started by hand ---------------------------------------------------------------


class RemoteWorker:
    """A `python -m sfu` worker started by hand, as on a remote host (no --parent-pid)."""

    def __init__(
        self,
        log_dir: Path,
        connect: str,
        worker_id: str,
        *extra: str,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.log_path = log_dir / f"worker-{worker_id}-{time.monotonic_ns()}.log"
        command = [sys.executable, "-m", "sfu", "--connect", connect, "--worker-id", worker_id]
        command += ["--bind-addresses", "127.0.0.1", *extra]
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=child_env(env), cwd=REPO
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_output(self, text: str, within: float = 10.0) -> None:
        await wait_until(lambda: text in self.output(), within, f"{text!r} from the worker")

    async def wait_exit(self, within: float = 10.0) -> int:
        await wait_until(lambda: self.process.poll() is not None, within, "the worker to exit")
        return self.process.returncode

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a SIGSTOPped worker dies too
            self.process.kill()
        self.process.wait()


# --- where things run: the process tree and the UDP socket table ------------------------------


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, ...]."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name is in parentheses and may hold spaces: split after it.
        return stat.read().rsplit(")", 1)[1].split()


def worker_pids(gateway: GatewayProcess) -> set[int]:
    """Live `python -m sfu` children of the gateway process (its local workers)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            fields = _stat_fields(pid)
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except (OSError, IndexError):
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == gateway.process.pid and state != "Z" and b"sfu" in argv[:3]:
            pids.add(pid)
    return pids


def process_gone(pid: int) -> bool:
    """Exited and reaped (a zombie counts as gone only for a parent that is itself gone)."""
    try:
        return _stat_fields(pid)[0] == "Z"
    except OSError:
        return True


def worker_id_of(pid: int) -> str:
    """The --worker-id on a worker's command line (local-N for the gateway's own)."""
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        argv = cmdline.read().decode().split("\0")
    return argv[argv.index("--worker-id") + 1]


def udp_port_owners(pids: Iterable[int]) -> dict[int, int]:
    """{UDP port: pid} for every UDP socket that one of `pids` holds (from /proc/net/udp*
    and /proc/<pid>/fd): which worker process answers on a port. Processes of this host only."""
    inode_port: dict[str, int] = {}
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as lines:
                rows = lines.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9:
                inode_port[f"socket:[{fields[9]}]"] = int(fields[1].rsplit(":", 1)[1], 16)
    owners: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                port = inode_port.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if port is not None:
                owners[port] = pid
    return owners


def udp_port_owner(port: int, pids: set[int]) -> int | None:
    """Which of `pids` holds the UDP socket bound to `port`."""
    return udp_port_owners(pids).get(port)
