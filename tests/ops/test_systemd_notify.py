"""sd_notify: the real gateway and a stand-alone worker speak systemd's notify protocol.

Each test binds the datagram socket systemd would (NOTIFY_SOCKET), with SO_PASSCRED so that
every message carries its sender's pid, and starts the real program with it and with
WATCHDOG_USEC, as a Type=notify unit with WatchdogSec= does.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common import notify
from testkit.processes import GatewayProcess, RemoteWorker, http_status
from tests.support.sdp import OFFER

# 0.4 s: a ping every 0.2 s, so a second of listening sees several.
WATCHDOG_USEC = "400000"
UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Notification:
    at: float
    pid: int
    fields: dict[str, str]


class NotifySocket:
    """What systemd's end of NOTIFY_SOCKET sees: each datagram, its sender pid, its time."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.received: list[Notification] = []

    def _receive(self, timeout: float) -> Notification | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = UCRED.unpack(payload[: UCRED.size])[0]
        lines = data.decode().split("\n")
        fields = dict(line.split("=", 1) for line in lines if line)
        note = Notification(time.monotonic(), pid, fields)
        self.received.append(note)
        return note

    def wait_for(self, key: str, within: float) -> Notification:
        deadline = time.monotonic() + within
        while (remaining := deadline - time.monotonic()) > 0:
            note = self._receive(remaining)
            if note is not None and key in note.fields:
                return note
        raise AssertionError(f"no {key} within {within:g} s; got {self.keys()}")

    def listen(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._receive(remaining)

    def keys(self) -> list[str]:
        return [",".join(note.fields) for note in self.received]

    def index(self, key: str) -> int:
        return next(i for i, note in enumerate(self.received) if key in note.fields)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[NotifySocket, str]]:
    name = f"live-sfu-test-{uuid.uuid4().hex}"
    listener = NotifySocket("\0" + name)
    yield listener, "@" + name
    listener.close()


@pytest.fixture
def path_socket() -> Iterator[tuple[NotifySocket, str]]:
    # A short path: sockaddr_un holds 108 bytes, pytest's tmp_path may be longer.
    path = f"/tmp/live-sfu-notify-{uuid.uuid4().hex[:12]}"
    listener = NotifySocket(path)
    yield listener, path
    listener.close()
    os.unlink(path)


def _watchdog_pings_between(listener: NotifySocket, start: int, end: int) -> int:
    return sum("WATCHDOG" in note.fields for note in listener.received[start:end])


def test_gateway_ready_watchdog_reloading_stopping(
    gateway_factory: Callable[..., GatewayProcess],
    abstract_socket: tuple[NotifySocket, str],
) -> None:
    listener, address = abstract_socket
    gateway = gateway_factory(
        workers=1, wait=None, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": WATCHDOG_USEC}
    )
    ready = listener.wait_for("READY", within=30)
    # READY=1 means: HTTP is up and a worker registered, so /readyz is 200 already.
    assert http_status(gateway.url + "/readyz") == 200, gateway.log(3000)
    assert ready.fields["READY"] == "1"
    assert ready.fields["STATUS"] == "0 rooms, 0 sessions, 1 of 1 workers responsive"
    # The watchdog pings at half of WATCHDOG_USEC, repeatedly; STATUS= is refreshed.
    listener.listen(1.5)
    after_ready = listener.index("READY")
    assert _watchdog_pings_between(listener, after_ready, len(listener.received)) >= 4
    listener.wait_for("STATUS", within=6)
    # systemctl reload: RELOADING=1, then READY=1 once the new configuration is in force.
    gateway.process.send_signal(signal.SIGHUP)
    reloading = listener.wait_for("RELOADING", within=10)
    assert reloading.fields["RELOADING"] == "1" and "MONOTONIC_USEC" in reloading.fields
    listener.wait_for("READY", within=10)
    gateway.process.send_signal(signal.SIGTERM)
    stopping = listener.wait_for("STOPPING", within=10)
    assert stopping.fields["STOPPING"] == "1"
    assert gateway.process.wait(20) == 0
    keys = listener.keys()
    assert keys.count("READY,STATUS") == 1, keys
    readies = [i for i, note in enumerate(listener.received) if "READY" in note.fields]
    # In order: READY, watchdog pings, RELOADING, READY, STOPPING.
    assert readies[0] < listener.index("RELOADING") < readies[1] < listener.index("STOPPING")
    # Only the gateway itself speaks (NotifyAccess=main): its local worker inherited no
    # NOTIFY_SOCKET, and the watchdog pings come from the gateway's pid.
    assert {note.pid for note in listener.received} == {gateway.process.pid}


def test_gateway_is_not_ready_before_a_worker_registers(
    gateway_factory: Callable[..., GatewayProcess],
    abstract_socket: tuple[NotifySocket, str],
) -> None:
    listener, address = abstract_socket
    gateway = gateway_factory(
        workers=0, wait="/healthz", env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": WATCHDOG_USEC}
    )
    listener.listen(1.5)
    assert "READY" not in ",".join(listener.keys()), listener.keys()
    assert any("WATCHDOG" in note.fields for note in listener.received)
    assert http_status(gateway.url + "/readyz") == 503


def test_standalone_worker_ready_watchdog_stopping(
    gateway_factory: Callable[..., GatewayProcess],
    path_socket: tuple[NotifySocket, str],
    tmp_path: Path,
) -> None:
    listener, address = path_socket
    gateway = gateway_factory(workers=0, own_ipc_dir=True, wait="/healthz")
    worker = RemoteWorker(
        tmp_path,
        gateway.ipc_endpoint,
        "media-1",
        env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": WATCHDOG_USEC},
    )
    try:
        ready = listener.wait_for("READY", within=30)
        assert "registered with gateway as media-1" in worker.output()
        assert ready.pid == worker.process.pid
        assert "registered with the gateway" in ready.fields["STATUS"]
        listener.listen(1.5)
        after_ready = listener.index("READY")
        assert _watchdog_pings_between(listener, after_ready, len(listener.received)) >= 4
        worker.process.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING", within=10)
        assert worker.process.wait(20) == 0, worker.output()
        assert listener.index("READY") < listener.index("STOPPING")
        assert {note.pid for note in listener.received} == {worker.process.pid}
    finally:
        worker.stop()


def env_for(address: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}


def test_no_watchdog_for_another_pid_and_environment_taken(
    abstract_socket: tuple[NotifySocket, str],
) -> None:
    listener, address = abstract_socket
    env = {**env_for(address), "WATCHDOG_PID": "1"}
    target = notify.configure(env)
    try:
        assert env == {}  # children started later inherit none of it
        assert target.watchdog_interval is None  # WATCHDOG_PID names another process
        assert notify.ready("up") and notify.status("x\ny") and notify.stopping()
        listener.listen(0.3)
        assert [note.fields for note in listener.received] == [
            {"READY": "1", "STATUS": "up"},
            {"STATUS": "x y"},
            {"STOPPING": "1"},
        ]
        own = {**env_for(address), "WATCHDOG_PID": str(os.getpid())}
        assert notify.configure(own).watchdog_interval == 0.5
        assert notify.reloading()
        reload = listener.wait_for("RELOADING", within=2)
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert 0 <= now_usec - int(reload.fields["MONOTONIC_USEC"]) < 5_000_000
    finally:
        notify.configure({})


def test_notify_never_raises() -> None:
    try:
        notify.configure({"NOTIFY_SOCKET": "/nonexistent/notify.sock"})
        assert notify.ready() is False  # nobody listens: False, no exception
        notify.configure({"NOTIFY_SOCKET": "vsock:2:1234"})
        assert not notify.enabled() and notify.watchdog() is False
        notify.configure({})
        assert notify.status("nothing") is False
    finally:
        notify.configure({})


def test_post_before_the_first_worker_waits_for_it(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    # Right after a (re)start the HTTP port is up before any local worker has registered: a
    # client that arrives then is served once the worker is there, not refused with 503.
    gateway = gateway_factory(workers=1, wait="/healthz")
    if http_status(gateway.url + "/readyz") != 503:
        pytest.skip("the worker registered before the first request could be sent")
    request = urllib.request.Request(
        gateway.url + "/api/whip/publish/early",
        data=OFFER.encode(),
        headers={"Content-Type": "application/sdp"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, body = int(response.status), b""
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    assert b"no_worker" not in body, body
    assert status in (201, 400), (status, body)  # the worker answered (400: offer refused)
