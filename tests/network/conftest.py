"""Fixtures for the network tests: a fresh namespace topology per test (testkit/netns.py), the
gateway inside its server host, and clients inside the client hosts.

Every test gets its own namespaces (named `lsfu-<pid>-<random>-<host>`), torn down with everything
that runs in them, also when the test fails. Without root, `ip netns` or iptables the tests
skip, except under CI=true, where they fail (tests/support/clients.skip_or_fail).

The mux tests need the gateway's UDP_MUX_PORT/TCP_MUX_PORT settings (issue 16): they skip,
saying so, only while `python -m gateway --help` does not list UDP_MUX_PORT, and run as soon
as it does.
"""

from __future__ import annotations

import functools
import json
import select
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit import client
from testkit.netns import PUBLIC_CLIENT, Topology, unavailable
from testkit.processes import child_env, run_gateway_cli
from tests.support.clients import PeerProcess, skip_or_fail

HTTP_PORT = 8080  # every test has its own namespaces: fixed ports never clash
MUX_PORT = 8189  # worker k listens on MUX_PORT + k (UDP, and TCP for ICE-TCP)
WORKERS = 2
PUBLISH_ARGS = ["--fps", "15", "--width", "320", "--height", "180", "--connect-timeout", "10"]
VIEW_FRAMES = ["--min-video-frames", "15", "--min-audio-frames", "25"]
VIEW_ARGS = [*VIEW_FRAMES, "--stop-when-satisfied", "--retry-404-for", "10"]


@functools.cache
def _netns_unavailable() -> str | None:
    return unavailable()


@functools.cache
def _gateway_help() -> str:
    done = run_gateway_cli("--help")
    if done.returncode != 0:  # a broken gateway must fail the mux tests, not skip them
        pytest.fail(f"`python -m gateway --help` exited {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


def gateway_has_setting(name: str) -> bool:
    """Whether `python -m gateway --help` lists the setting (e.g. UDP_MUX_PORT)."""
    return name in _gateway_help()


def require_mux() -> None:
    """Skip while the gateway has no UDP_MUX_PORT (issue 16's one UDP port per worker)."""
    if not gateway_has_setting("UDP_MUX_PORT"):
        pytest.skip("the gateway has no UDP_MUX_PORT setting yet (`python -m gateway --help`)")


def mux_env(tcp: bool = True) -> dict[str, str]:
    """Gateway settings for one UDP (and TCP) port per worker."""
    env = {"UDP_MUX_PORT": str(MUX_PORT)}
    if tcp:
        env["TCP_MUX_PORT"] = str(MUX_PORT)
    return env


def mux_ports(workers: int = WORKERS) -> range:
    return range(MUX_PORT, MUX_PORT + workers)


def new_room() -> str:
    return "n-" + uuid.uuid4().hex[:10]


@pytest.fixture
def net(request: pytest.FixtureRequest) -> Iterator[Topology]:
    """A fresh topology (srv, pub, rtr, natc1, natc2, blk), removed after the test; Topology's
    keywords through indirect parametrization:
    `@pytest.mark.parametrize("net", [{"server_nat": True}], indirect=True)`."""
    reason = _netns_unavailable()
    if reason is not None:
        skip_or_fail(reason, "run as root with iproute2; scripts/test.sh installs iptables")
    options: dict[str, Any] = getattr(request, "param", {})
    with Topology(**options) as topology:
        yield topology


@pytest.fixture
def net_peer(net: Topology) -> Iterator[Callable[..., PeerProcess]]:
    """net_peer(host, "publish"|"view", url, room, *args): the aiortc client inside `host`;
    killed at teardown if still running (the topology's close kills it anyway)."""
    running: list[PeerProcess] = []

    def spawn(host: str, mode: str, url: str, room: str, *args: str) -> PeerProcess:
        argv = client.command(mode, url, room, *args)
        process: subprocess.Popen[Any] = net.run(
            host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
        )
        peer = PeerProcess(argv=[host, *argv], process=process)
        running.append(peer)
        return peer

    yield spawn
    for peer in running:
        peer.kill()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Where the gateway's log goes (shown in failures; kept by pytest after the run)."""
    return tmp_path


def publish_and_view(
    net_peer: Callable[..., PeerProcess],
    url: str,
    viewers: list[str],
    publisher: str = "natc1",
    seconds: float = 10.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Publisher in `publisher`, a viewer in each host of `viewers` at once; their results."""
    room = new_room()
    pub = net_peer(publisher, "publish", url, room, "--seconds", str(seconds), *PUBLISH_ARGS)
    views = [
        net_peer(host, "view", url, room, "--seconds", str(seconds), *VIEW_ARGS) for host in viewers
    ]
    view_results = [view.result(timeout=seconds + 30) for view in views]
    pub.process.terminate()  # the viewers are done: no need to wait for the publisher's end
    try:
        pub_result = pub.result(timeout=15)
    except AssertionError:
        pub_result = {"ok": None, "note": "publisher stopped early"}
    return pub_result, view_results


def describe(viewer: dict[str, Any]) -> str:
    return (
        f"video_frames={viewer.get('video_frames')} audio_frames={viewer.get('audio_frames')} "
        f"first_frame_ms={viewer.get('first_frame_ms')} connected={viewer.get('connected')} "
        f"error={viewer.get('error')}"
    )


def read_step(process: subprocess.Popen[str], step: str, within: float) -> dict[str, Any]:
    """The first JSON line with {"step": step} that `process` prints on stdout, waiting
    `within` seconds at most; AssertionError (with its stderr) when it does not come."""
    assert process.stdout is not None
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([process.stdout], [], [], left)[0]:
            break
        line = process.stdout.readline()
        if not line:
            break
        if line.strip().startswith("{"):
            data: dict[str, Any] = json.loads(line)
            if data.get("step") in (step, "final") or "step" not in data:
                return data
    process.kill()
    stderr = process.stderr.read() if process.stderr is not None else ""
    raise AssertionError(f"no {step!r} line within {within:g} s:\n{stderr[-3000:]}")


def mux_drops(net: Topology, url: str, wait_for: str, within: float = 6.0) -> dict[str, float]:
    """live_worker_ice_mux_dropped(_total) by reason, summed over workers, from /metrics;
    polled until the `wait_for` reason is above 0 (the workers report with their heartbeats)
    or `within` seconds have passed."""
    deadline = time.monotonic() + within
    while True:
        drops: dict[str, float] = {}
        for line in net.http_text(PUBLIC_CLIENT, url + "/metrics").splitlines():
            if line.startswith(
                ("live_worker_ice_mux_dropped_total{", "live_worker_ice_mux_dropped{")
            ):
                labels, value = line.rsplit(" ", 1)
                reason = (
                    labels.split('reason="', 1)[1].split('"', 1)[0] if "reason=" in labels else "?"
                )
                drops[reason] = drops.get(reason, 0.0) + float(value)
        if drops.get(wait_for, 0) > 0 or time.monotonic() > deadline:
            return drops
        time.sleep(0.5)


def mux_routes(net: Topology, url: str) -> float | None:
    """live_worker_ice_mux_routes summed over workers (None: not reported)."""
    total = None
    for line in net.http_text(PUBLIC_CLIENT, url + "/metrics").splitlines():
        if line.startswith("live_worker_ice_mux_routes{"):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total
