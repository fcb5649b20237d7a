"""Helpers for the gateway tests: real gateway processes, real `python -m sfu` workers, real
aiortc offers, and the process tree / socket table to see where a room was placed."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import aiohttp

from gateway.config import SETTINGS
from tests.conftest import ONE_ADDRESS_DEFAULTS

REPO = Path(__file__).resolve().parents[2]
PEER = REPO / "tests" / "clients" / "peer.py"

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=ice-ufrag:cli1\r\na=ice-pwd:clientpasswordclientpass\r\na=sendonly\r\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _GATEWAY_ENV}
    env["PYTHONPATH"] = str(REPO)
    env.update(ONE_ADDRESS_DEFAULTS)
    env.update(extra or {})
    return env


# Settings the test environment must not leak into the gateway under test: every one it has.
_GATEWAY_ENV = {setting.env for setting in SETTINGS}


def run_gateway_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # Never the default :8080: should a case wrongly start, it must not clash with anything.
    settings = {"HTTP_ADDR": f"127.0.0.1:{free_port()}", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(settings),
        cwd=REPO,
    )


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


class GatewayProcess:
    def __init__(self, tmp_path: Path, args: list[str], env: dict[str, str] | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ipc_dir = tmp_path / f"ipc-{self.port}"
        self.ipc_endpoint = f"ipc://{self.ipc_dir}/gateway.sock"
        self.log_path = tmp_path / f"gateway-{self.port}.log"
        command = [
            sys.executable,
            "-m",
            "gateway",
            "--http-addr",
            f"127.0.0.1:{self.port}",
            "--ipc-dir",
            str(self.ipc_dir),
            *args,
        ]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=child_env(env), cwd=REPO
        )

    def log(self) -> str:
        return self.log_path.read_text()

    async def wait_healthy(self, within: float = 15.0) -> None:
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
                    raise AssertionError(f"gateway not healthy in {within} s:\n{self.log()}")
                await asyncio.sleep(0.05)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class RealWorker:
    """A `python -m sfu` worker started by hand, as on a remote host (no --parent-pid)."""

    def __init__(self, tmp_path: Path, connect: str, worker_id: str, *extra: str) -> None:
        self.worker_id = worker_id
        self.log_path = tmp_path / f"worker-{worker_id}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sfu",
                "--connect",
                connect,
                "--worker-id",
                worker_id,
                "--bind-addresses",
                "127.0.0.1",
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=REPO,
        )

    def output(self) -> str:
        return self.log_path.read_text()

    async def wait_output(self, text: str, within: float = 10.0) -> None:
        await wait_until(lambda: text in self.output(), within, f"{text!r} from the worker")

    async def wait_exit(self, within: float = 10.0) -> int:
        await wait_until(lambda: self.process.poll() is not None, within, "the worker to exit")
        return self.process.returncode

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
        self._log.close()


# --- synchronous waits, for module-scoped fixtures (which have no event loop of their own) ---


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def wait_sync(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(0.05)


def wait_ready_sync(gateway: GatewayProcess, within: float = 20.0) -> None:
    def ready() -> bool:
        if gateway.process.poll() is not None:
            raise AssertionError(f"gateway exited early:\n{gateway.log()}")
        return http_status(gateway.url + "/readyz") == 200

    wait_sync(ready, within, "/readyz to answer 200")


# --- where things run: the process tree and the UDP socket table ------------------------------


def _stat_fields(pid: int) -> list[str]:
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
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == gateway.process.pid and state != "Z" and b"sfu" in argv[:3]:
            pids.add(pid)
    return pids


def candidate_ports(sdp: str) -> set[int]:
    """UDP ports of the host candidates in an SDP."""
    found = re.findall(r"^a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host", sdp, re.M | re.I)
    return {int(port) for port in found}


def udp_port_owner(port: int, pids: set[int]) -> int | None:
    """Which of `pids` holds the UDP socket bound to `port` (via /proc/net/udp inodes)."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as lines:
                rows = lines.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    return None


# --- real offers from aiortc -----------------------------------------------------------------


def load_media() -> ModuleType:
    """tests/sfu/media.py (new_pc, publisher_offer, viewer_offer), loaded by path."""
    spec = importlib.util.spec_from_file_location(
        "sfu_test_media", REPO / "tests" / "sfu" / "media.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def only_codec(offer: str, kind: str, rtpmap: str) -> str:
    """The offer with its `kind` m-line reduced to one payload type, `rtpmap` ("100 H265/90000").

    Still a well-formed offer (ICE, DTLS, mid, direction untouched): only the codec is useless.
    """
    pt = rtpmap.split()[0]
    out: list[str] = []
    section = ""
    for line in offer.split("\r\n"):
        if line.startswith("m=") or not line:
            if section == kind:
                out.append(f"a=rtpmap:{rtpmap}")  # at the end of its section
            section = line[2:].split()[0] if line else ""
            if section == kind:
                line = " ".join([*line.split()[:3], pt])
        elif section == kind and line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:", "a=ssrc")):
            continue
        out.append(line)
    return "\r\n".join(out)


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


def start_healthy_gateway(
    tmp_dir: Path, args: list[str], env: dict[str, str] | None = None, ready: bool = False
) -> GatewayProcess:
    """A gateway for a module-scoped fixture: started and waited for synchronously
    (/healthz, or /readyz with `ready`, i.e. once a worker registered)."""
    gateway = GatewayProcess(tmp_dir, args, env)
    path = "/readyz" if ready else "/healthz"

    def up() -> bool:
        if gateway.process.poll() is not None:
            raise AssertionError(f"gateway exited early:\n{gateway.log()}")
        return http_status(gateway.url + path) == 200

    try:
        wait_sync(up, 20.0, f"{path} to answer 200")
    except BaseException:
        gateway.stop()
        raise
    return gateway
