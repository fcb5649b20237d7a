"""Shared fixtures: free ports, a real gateway subprocess, and the aiortc peer CLI.

Everything here runs real processes (no mocks): the gateway is started exactly as an operator
would (`python -m gateway`), and the media clients run in their own processes
(tests/clients/peer.py) so the server's event loop is never shared with a client.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
PEER_CLI = REPO / "tests" / "clients" / "peer.py"
READY_TIMEOUT = 20.0
STOP_GRACE = 10.0
# Tests speak from one address (127.0.0.1) far faster than real clients do, so the per-address
# defaults against floods are off unless a test sets them (tests/adversarial/
# test_hardening_regressions.py checks those defaults on a gateway started without these).
ONE_ADDRESS_DEFAULTS = {"RATE_LIMIT_RPS": "0", "MAX_PENDING_SESSIONS_PER_IP": "0"}


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it, so parallel runs do not clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class GatewayProcess:
    """A running `python -m gateway`; its output goes to a log file shown on failure."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited with {self.proc.returncode} before /readyz:\n{self.log()}"
                )
            if _http_status(self.url + "/readyz") == 200:
                return
            time.sleep(0.1)
        raise RuntimeError(f"gateway not ready after {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> int | None:
        """SIGTERM the whole process group, then SIGKILL it after the grace period.

        The gateway forks worker processes; signalling the group (it was started in its own
        session) is what guarantees no orphaned worker keeps UDP ports or CPU after a test.
        """
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        # Workers can outlive a gateway that exited on its own: always sweep the group.
        _signal_group(self.proc.pid, signal.SIGKILL)
        try:
            return self.proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            return None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def start_gateway(
    log_dir: Path,
    workers: int = 1,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    wait: bool = True,
) -> GatewayProcess:
    """Start `python -m gateway` on a free port of 127.0.0.1 and wait for /readyz."""
    port = pick_free_port()
    log_path = log_dir / f"gateway-{port}.log"
    cmd = [sys.executable, "-m", "gateway", "--http-addr", f"127.0.0.1:{port}"]
    cmd += ["--workers", str(workers), *args]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, **ONE_ADDRESS_DEFAULTS, **(env or {})},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    gateway = GatewayProcess(
        proc=proc, url=f"http://127.0.0.1:{port}", port=port, log_path=log_path
    )
    if wait:
        try:
            gateway.wait_ready()
        except BaseException:
            gateway.stop()
            raise
    return gateway


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Call it (workers=, args=, env=, wait=) to start gateways; all are stopped at teardown."""
    started: list[GatewayProcess] = []

    def factory(**kwargs: Any) -> GatewayProcess:
        gateway = start_gateway(tmp_path, **kwargs)
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        gateway.stop()


@pytest.fixture
def gateway(gateway_factory: Callable[..., GatewayProcess]) -> str:
    """Base URL of a one-worker gateway."""
    return gateway_factory(workers=1).url


# --------------------------------------------------------------------------------------------
# The aiortc peer CLI


@dataclass
class PeerProcess:
    """A running tests/clients/peer.py; result() waits for it and parses its JSON line."""

    argv: list[str]
    proc: subprocess.Popen[str]
    output: dict[str, str] = field(default_factory=dict)

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, stderr = self.proc.communicate()
            raise AssertionError(f"peer timed out: {self.argv}\n{stderr[-3000:]}") from None
        self.output = {"stdout": stdout, "stderr": stderr}
        lines = [line for line in stdout.splitlines() if line.strip()]
        if not lines:
            raise AssertionError(
                f"peer printed nothing (exit {self.proc.returncode}): {self.argv}\n{stderr[-3000:]}"
            )
        data: dict[str, Any] = json.loads(lines[-1])
        data["exit_code"] = self.proc.returncode
        return data

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def spawn_peer(mode: str, url: str, room: str, *args: str) -> PeerProcess:
    """Start `peer.py publish|view --url URL --room ROOM ARGS...` without waiting for it."""
    argv = [sys.executable, str(PEER_CLI), mode, "--url", url, "--room", room, *args]
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return PeerProcess(argv=argv, proc=proc)


def run_peer_process(
    mode: str, url: str, room: str, *args: str, timeout: float = 60.0
) -> dict[str, Any]:
    """Run the peer CLI to completion and return its JSON result (plus "exit_code")."""
    return spawn_peer(mode, url, room, *args).result(timeout)


@pytest.fixture
def free_port() -> Callable[[], int]:
    """free_port() -> a TCP port on 127.0.0.1 that is free right now."""
    return pick_free_port


@pytest.fixture
def run_peer() -> Callable[..., dict[str, Any]]:
    """run_peer("view", url, room, "--seconds", "5", timeout=60) -> the peer's JSON result."""
    return run_peer_process


@pytest.fixture
def peers() -> Iterator[Callable[..., PeerProcess]]:
    """spawn_peer() that also kills any peer a failing test left running."""
    running: list[PeerProcess] = []

    def spawn(mode: str, url: str, room: str, *args: str) -> PeerProcess:
        peer = spawn_peer(mode, url, room, *args)
        running.append(peer)
        return peer

    yield spawn
    for peer in running:
        peer.kill()
