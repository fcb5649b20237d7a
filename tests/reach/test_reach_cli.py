"""Network reach with real processes and sockets: settings refused with exit 2, the
self-test against a real (tiny) STUN server on 127.0.0.1 and a port the test holds, the
gateway's start-up line, its discovered address on the local workers' command lines, and a
worker whose mux port is taken."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testkit.processes import (
    REPO,
    GatewayProcess,
    child_env,
    pick_free_port,
    run_gateway_cli,
    worker_pids,
)


@dataclass
class StunServer:
    """Answers every binding request with XOR-MAPPED-ADDRESS `mapped` (and the source port,
    or `mapped_port`); counts the requests."""

    mapped: str
    mapped_port: int | None = None
    requests: int = 0
    sock: socket.socket = field(init=False)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)

    @property
    def url(self) -> str:
        return f"stun:127.0.0.1:{self.sock.getsockname()[1]}"

    def serve(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                data, source = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            if len(data) < 20 or data[:2] != b"\x00\x01":
                continue
            self.requests += 1
            tid = data[8:20]
            port = (self.mapped_port or source[1]) ^ 0x2112
            cookie = data[4:8]
            raw = bytes(a ^ b for a, b in zip(socket.inet_aton(self.mapped), cookie, strict=True))
            attr = struct.pack("!HHBBH", 0x0020, 8, 0, 1, port) + raw
            header = struct.pack("!HHI", 0x0101, len(attr), 0x2112A442)
            self.sock.sendto(header + tid + attr, source)


@pytest.fixture
def stun_server() -> Iterator[Callable[..., StunServer]]:
    stop = threading.Event()
    threads: list[threading.Thread] = []
    servers: list[StunServer] = []

    def start(mapped: str = "203.0.113.7", mapped_port: int | None = None) -> StunServer:
        server = StunServer(mapped, mapped_port)
        thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
        thread.start()
        threads.append(thread)
        servers.append(server)
        return server

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=2)
    for server in servers:
        server.sock.close()


def self_test(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m gateway --self-test` (what sfu-gateway --self-test runs) on loopback."""
    settings = {"BIND_INTERFACES": "lo", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--self-test", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(settings),
        cwd=REPO,
    )


def free_udp_pair() -> int:
    """A port that is free for UDP and TCP on 127.0.0.1, with the next one free too."""
    for _ in range(50):
        port = pick_free_port()
        kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM)
        if port < 65535 and all(_free(kind, p) for kind in kinds for p in (port, port + 1)):
            return port
    raise AssertionError("no free pair of ports")


def _free(kind: int, port: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"UDP_MUX_PORT": "8189", "UDP_PORTS": "40000-40999"},
            "UDP_MUX_PORT and UDP_PORTS are both set",
        ),
        ({"UDP_MUX_PORT": "65535", "WORKERS": "2"}, "UDP_MUX_PORT=65535: 2 workers need"),
        ({"TCP_MUX_PORT": "65000", "WORKERS": "600"}, "TCP_MUX_PORT=65000: 600 workers need"),
        ({"UDP_MUX_PORT": "0"}, "for UDP_MUX_PORT: must be between 1 and 65535"),
        ({"PUBLIC_IP": "203.0.113.7,no-such-host.invalid"}, "does not resolve"),
        ({"PUBLIC_IP": "127.0.0.1"}, "cannot be a public address"),
        ({"BIND_INTERFACES": "nosuchif0"}, "BIND_INTERFACES: no interface named nosuchif0"),
        ({"STUN_DISCOVER": "turn:x:1"}, "for STUN_DISCOVER: expected stun:HOST:PORT"),
    ],
)
def test_gateway_refuses_reach_settings_with_one_line(env: dict[str, str], message: str) -> None:
    result = run_gateway_cli(env={"WORKERS": "1", **env})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_worker_refuses_mux_with_a_port_range() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sfu", "--connect", "ipc:///nonexistent/gw.sock"],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env({"UDP_MUX_PORT": "8189", "UDP_PORTS": "40000-40100"}),
        cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sfu-worker: UDP_MUX_PORT and UDP_PORTS are both set: UDP_MUX_PORT puts every "
        "session on one port, UDP_PORTS gives each its own; set only one"
    ]


def test_self_test_matches_the_discovered_address(
    stun_server: Callable[..., StunServer],
) -> None:
    stun = stun_server("203.0.113.7")
    port = free_udp_pair()
    ok = self_test(
        env={
            "WORKERS": "2",
            "UDP_MUX_PORT": str(port),
            "TCP_MUX_PORT": str(port),
            "PUBLIC_IP": "203.0.113.7",
            "STUN_DISCOVER": stun.url,
        }
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    out = ok.stdout
    assert "announced in candidates: 203.0.113.7, 127.0.0.1, ::1" in out
    for k in (0, 1):
        assert f"ok       worker {k}: udp 127.0.0.1:{port + k} can be bound" in out
        assert f"ok       worker {k}: tcp 127.0.0.1:{port + k} can be bound" in out
    assert f"ok       {stun.url} sees this host as 203.0.113.7: it is announced" in out
    assert "WARNING" not in out and out.rstrip().endswith("result: ok")
    assert stun.requests == 1

    # Without PUBLIC_IP the discovered address is what gets announced.
    found = self_test(env={"WORKERS": "1", "STUN_DISCOVER": stun.url})
    assert found.returncode == 0, found.stdout
    assert "public addresses: 203.0.113.7 (discovered by STUN_DISCOVER)" in found.stdout


def test_self_test_warns_about_a_wrong_public_ip(stun_server: Callable[..., StunServer]) -> None:
    stun = stun_server("203.0.113.7")
    result = self_test(env={"WORKERS": "1", "PUBLIC_IP": "198.51.100.1", "STUN_DISCOVER": stun.url})
    assert result.returncode == 1
    assert (
        f"WARNING  PUBLIC_IP=198.51.100.1 but {stun.url} sees this host as 203.0.113.7: "
        "set PUBLIC_IP=203.0.113.7"
    ) in result.stdout
    assert result.stdout.rstrip().endswith("result: FAILED")


def test_self_test_fails_on_a_bound_port_and_warns_about_a_moved_port(
    stun_server: Callable[..., StunServer],
) -> None:
    port = free_udp_pair()
    stun = stun_server("203.0.113.7", mapped_port=61000)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", port + 1))
        result = self_test(
            env={"WORKERS": "2", "UDP_MUX_PORT": str(port), "STUN_DISCOVER": stun.url}
        )
    assert result.returncode == 1, result.stdout
    assert f"ok       worker 0: udp 127.0.0.1:{port} can be bound" in result.stdout
    assert (
        f"FAIL     worker 1: udp 127.0.0.1:{port + 1} cannot be bound: in use (UDP_MUX_PORT)"
        in result.stdout
    )
    assert f"the NAT maps UDP port {port} to 61000" in result.stdout


def test_self_test_without_stun_answer_only_warns() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    with silent:
        silent.bind(("127.0.0.1", 0))
        url = f"stun:127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = self_test(env={"WORKERS": "1", "STUN_DISCOVER": url})
        took = time.monotonic() - started
    assert result.returncode == 0, result.stdout
    assert f"WARNING  STUN_DISCOVER={url}: no answer within 3 s" in result.stdout
    assert took < 10


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_gateway_logs_what_it_announces_and_hands_workers_the_discovered_address(
    gateway_factory: Callable[..., GatewayProcess], stun_server: Callable[..., StunServer]
) -> None:
    stun = stun_server("203.0.113.7")
    port = free_udp_pair()
    gateway = gateway_factory(
        workers=1,
        env={"BIND_INTERFACES": "lo", "STUN_DISCOVER": stun.url, "UDP_MUX_PORT": str(port)},
    )
    log = gateway.log()
    assert (
        "media: announcing 203.0.113.7, 127.0.0.1, ::1; public 203.0.113.7 (STUN_DISCOVER); "
        f"host addresses 127.0.0.1,::1 (BIND_INTERFACES); udp {port} (UDP_MUX_PORT); "
        "tcp off (TCP_MUX_PORT)"
    ) in log
    (pid,) = worker_pids(gateway)
    command = _cmdline(pid)
    assert command[command.index("--public-ip") + 1] == "203.0.113.7"
    assert command[command.index("--udp-mux-port") + 1] == str(port)
    assert "--stun-discover" not in command
    assert stun.requests == 1


def test_worker_whose_mux_port_is_taken_is_a_boot_failure() -> None:
    port = free_udp_pair()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", port))
        result = subprocess.run(
            [sys.executable, "-m", "sfu", "--connect", "ipc:///nonexistent/gw.sock"],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env({"UDP_MUX_PORT": str(port), "BIND_ADDRESSES": "127.0.0.1"}),
            cwd=REPO,
        )
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sfu-worker: cannot listen for media:")
    assert f"127.0.0.1:{port}" in last and f"(UDP_MUX_PORT={port})" in last


def test_worker_self_test(stun_server: Callable[..., StunServer]) -> None:
    """A stand-alone worker checks its own port (no --connect needed)."""
    stun = stun_server("203.0.113.7")
    port = free_udp_pair()
    result = subprocess.run(
        [sys.executable, "-m", "sfu", "--self-test", "--tcp-mux-port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(
            {
                "BIND_ADDRESSES": "127.0.0.1",
                "UDP_MUX_PORT": str(port),
                "PUBLIC_IP": "203.0.113.7",
                "STUN_DISCOVER": stun.url,
            }
        ),
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "sfu-worker self-test"
    assert f"ok       worker 0: udp 127.0.0.1:{port} can be bound" in lines
    assert f"ok       worker 0: tcp 127.0.0.1:{port} can be bound" in lines
    assert lines[-1] == "result: ok"
