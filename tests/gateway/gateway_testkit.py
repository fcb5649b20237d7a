"""Helpers for the gateway tests: real gateway processes and fake workers on real sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
FAKE_WORKER = Path(__file__).resolve().parent / "fake_worker.py"

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
    env.update(extra or {})
    return env


# Settings the test environment must not leak into the gateway under test.
_GATEWAY_ENV = {
    "HTTP_ADDR",
    "WORKERS",
    "WORKER_LISTEN",
    "IPC_DIR",
    "STUN_URLS",
    "TURN_URLS",
    "TURN_USERNAME",
    "TURN_PASSWORD",
    "MAX_SUBS_PER_ROOM",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "MAX_BODY_BYTES",
    "UDP_PORTS",
    "WORKER_TOKEN",
    "LOG_LEVEL",
}


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


class FakeWorker:
    def __init__(self, tmp_path: Path, connect: str, worker_id: str, *extra: str) -> None:
        self.worker_id = worker_id
        self.log_path = tmp_path / f"worker-{worker_id}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(FAKE_WORKER),
                "--connect",
                connect,
                "--worker-id",
                worker_id,
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
        await wait_until(lambda: text in self.output(), within, f"{text!r} from fake worker")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
        self._log.close()
