"""Chromium in network namespaces (tests/network/chromium_peer.py, run with `ip netns exec`):
a publisher behind the NAT, and a client whose network drops UDP and so can only use ICE-TCP.

The aiortc client cannot cover the UDP-blocked case: aioice (0.13) gathers and checks UDP
candidates only; it has no ICE-TCP (RFC 6544) on the client side. So the UDP-blocked host
plays and publishes with Chromium, and the aiortc clients are the other ends, on UDP.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.netns import UDP_BLOCKED, NetnsGateway, Topology
from testkit.processes import REPO, child_env
from tests.network.conftest import (
    HTTP_PORT,
    WORKERS,
    mux_drops,
    mux_env,
    mux_ports,
    new_room,
    read_step,
    require_mux,
)
from tests.support.browser import require_chromium
from tests.support.clients import PeerProcess

pytestmark = pytest.mark.browser

SCRIPT = REPO / "tests" / "network" / "chromium_peer.py"
STALL_SECONDS = 10.0
PUBLISH_ARGS = ["--fps", "15", "--width", "320", "--height", "180", "--connect-timeout", "15"]


class ChromiumPeer:
    """chromium_peer.py running inside a host; result() is its JSON line."""

    def __init__(
        self, net: Topology, host: str, mode: str, url: str, room: str, profile: Path, *args: str
    ) -> None:
        self.host = host
        self.stop_file = profile.with_suffix(".stop")
        argv = [sys.executable, str(SCRIPT), mode, "--url", url, "--room", room]
        argv += ["--profile-dir", str(profile), "--stop-file", str(self.stop_file), *args]
        self.process: subprocess.Popen[str] = net.run(
            host, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
        )

    def wait_step(self, step: str, within: float) -> dict[str, Any]:
        """Its {"step": step} line (a held player's "playing")."""
        return read_step(self.process, step, within)

    def stop(self, timeout: float = 20.0) -> dict[str, Any]:
        """Ask it to end now (a publisher) and return its result."""
        self.stop_file.touch()
        return self.result(timeout)

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            stdout, stderr = self.process.communicate()
            raise AssertionError(f"chromium in {self.host} hung:\n{stderr[-3000:]}") from None
        lines = [line for line in stdout.splitlines() if line.strip()]
        if not lines:
            raise AssertionError(f"chromium in {self.host} printed nothing:\n{stderr[-3000:]}")
        data: dict[str, Any] = json.loads(lines[-1])
        return data


@pytest.fixture
def chromium_peer(net: Topology, tmp_path: Path) -> Callable[..., ChromiumPeer]:
    """chromium_peer(host, "publish"|"play", url, room, *args) (see chromium_peer.py)."""
    require_chromium()
    count = 0

    def start(host: str, mode: str, url: str, room: str, *args: str) -> ChromiumPeer:
        nonlocal count
        count += 1
        profile = tmp_path / f"chromium-{host}-{count}"
        return ChromiumPeer(net, host, mode, url, room, profile, *args)

    return start  # the topology's teardown kills whatever is still running


def _pair(result: dict[str, Any]) -> str:
    pair = result.get("pair") or {}
    local, remote = pair.get("local") or {}, pair.get("remote") or {}
    return (
        f"{local.get('protocol')}/{local.get('type')}/{local.get('tcpType')} "
        f"{local.get('address')}:{local.get('port')} -> "
        f"{remote.get('protocol')}/{remote.get('type')} "
        f"{remote.get('address')}:{remote.get('port')}"
    )


def _describe(result: dict[str, Any]) -> str:
    keys: tuple[str, ...] = ("ok", "connected", "gathered_ms", "answer_to_connected_ms")
    keys += ("connect_ms", "first_frame_ms", "frames", "packets", "offered_candidates", "error")
    return " ".join(f"{k}={result.get(k)}" for k in keys) + f" pair={_pair(result)}"


def _start(net: Topology, log_dir: Path, mux: bool, workers: int = WORKERS) -> NetnsGateway:
    """A STUN server on the public LAN (announced by /api/bootstrap: the pages then gather
    server-reflexive candidates behind the NAT, as against a public STUN server), the gateway;
    with `mux`, UDP_MUX_PORT + TCP_MUX_PORT and the server firewalled to those ports + HTTP."""
    env = {"STUN_URLS": net.start_stun_server()}
    if mux:
        require_mux()
        env.update(mux_env())
    gateway = net.start_gateway(log_dir, http_port=HTTP_PORT, workers=workers, env=env)
    if mux:
        net.firewall_server_allow_only(mux_ports(workers), mux_ports(workers), HTTP_PORT)
    return gateway


def _protocol(result: dict[str, Any]) -> str | None:
    protocol: str | None = ((result.get("pair") or {}).get("local") or {}).get("protocol")
    return protocol


def test_chromium_publisher_behind_nat_aiortc_viewer(
    net: Topology,
    net_peer: Callable[..., PeerProcess],
    chromium_peer: Callable[..., ChromiumPeer],
    log_dir: Path,
) -> None:
    """Chromium publishes from natc1 (publish.html), an aiortc viewer in natc2 gets frames;
    UDP_MUX_PORT, the server firewalled to the mux ports + HTTP. (Per-session ports through
    the NAT: tests/network/test_nat.py.)"""
    gateway = _start(net, log_dir, mux=True)
    viewer, published = _chromium_publisher_aiortc_viewer(
        net_peer, chromium_peer, gateway.url, "natc1"
    )
    assert viewer["ok"], (
        f"aiortc viewer of a Chromium publisher behind NAT: video_frames="
        f"{viewer.get('video_frames')} audio_frames={viewer.get('audio_frames')} "
        f"first_frame_ms={viewer.get('first_frame_ms')} error={viewer.get('error')}\n"
        f"publisher: {_describe(published)}\n{gateway.log(4000)}"
    )
    print(
        f"chromium publisher behind NAT: {_describe(published)}; "
        f"viewer video_frames={viewer['video_frames']} "
        f"first_frame_ms={viewer['first_frame_ms']} codecs={viewer.get('codecs')}"
    )


def _chromium_publisher_aiortc_viewer(
    net_peer: Callable[..., PeerProcess],
    chromium_peer: Callable[..., ChromiumPeer],
    url: str,
    publisher_host: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Chromium publishes from `publisher_host`, an aiortc viewer in natc2 watches; returns
    (the viewer's result, the publisher's)."""
    room = new_room()
    publisher = chromium_peer(publisher_host, "publish", url, room, "--seconds", "25")
    viewer = net_peer(
        "natc2", "view", url, room, "--seconds", "25", "--min-video-frames", "20",
        "--min-audio-frames", "20", "--stop-when-satisfied", "--retry-404-for", "20",
    ).result(timeout=60)  # fmt: skip
    return viewer, publisher.stop()


def test_udp_blocked_chromium_plays_over_ice_tcp(
    net: Topology,
    net_peer: Callable[..., PeerProcess],
    chromium_peer: Callable[..., ChromiumPeer],
    log_dir: Path,
) -> None:
    """An aiortc publisher in natc1 (UDP mux), a Chromium player in the UDP-blocked host:
    it plays over ICE-TCP (TCP_MUX_PORT), the selected pair says tcp. Then a Chromium player
    in natc2 (UDP) for the time-to-connect comparison."""
    gateway = _start(net, log_dir, mux=True)
    room = new_room()
    publisher = net_peer("natc1", "publish", gateway.url, room, "--seconds", "40", *PUBLISH_ARGS)
    tcp = chromium_peer(
        UDP_BLOCKED, "play", gateway.url, room, "--seconds", "20", "--min-frames", "20"
    ).result(timeout=60)
    assert tcp["ok"], f"chromium over ICE-TCP: {_describe(tcp)}\n{gateway.log(4000)}"
    assert _protocol(tcp) == "tcp", _describe(tcp)
    udp = chromium_peer(
        "natc2", "play", gateway.url, room, "--seconds", "20", "--min-frames", "20"
    ).result(timeout=60)
    publisher.process.terminate()
    assert udp["ok"], f"chromium over UDP: {_describe(udp)}\n{gateway.log(4000)}"
    # ICE-TCP is offered to it too, at a lower priority: UDP must win where it works.
    assert _protocol(udp) == "udp", _describe(udp)
    print(f"chromium play over ICE-TCP: {_describe(tcp)}")
    print(f"chromium play over UDP mux: {_describe(udp)}")


def test_udp_blocked_chromium_publishes_over_ice_tcp(
    net: Topology,
    net_peer: Callable[..., PeerProcess],
    chromium_peer: Callable[..., ChromiumPeer],
    log_dir: Path,
) -> None:
    """Chromium publishes from the UDP-blocked host over ICE-TCP; an aiortc viewer in natc2
    (UDP mux) gets its frames."""
    gateway = _start(net, log_dir, mux=True)
    viewer, published = _chromium_publisher_aiortc_viewer(
        net_peer, chromium_peer, gateway.url, UDP_BLOCKED
    )
    assert viewer["ok"], (
        f"viewer of a Chromium publisher on ICE-TCP: video_frames={viewer.get('video_frames')} "
        f"first_frame_ms={viewer.get('first_frame_ms')} error={viewer.get('error')}\n"
        f"publisher: {_describe(published)}\n{gateway.log(4000)}"
    )
    assert _protocol(published) == "tcp", _describe(published)
    print(f"chromium publisher over ICE-TCP: {_describe(published)}")


@pytest.mark.slow
def test_stalled_tcp_viewer_does_not_stall_the_fanout(
    net: Topology,
    net_peer: Callable[..., PeerProcess],
    chromium_peer: Callable[..., ChromiumPeer],
    log_dir: Path,
) -> None:
    """A Chromium player over ICE-TCP (blk, receive buffer 4 KiB) is frozen (SIGSTOP of all
    that runs in blk): the worker's TCP buffer for it fills, and an aiortc viewer on UDP in
    the same room (one worker: the same fan-out) keeps getting every frame meanwhile. The
    mux counts what it drops for the frozen peer (live_worker_ice_mux_dropped_total
    {reason="tcp_send_dropped"}). Slow (-m slow): filling the buffers takes seconds."""
    net.sysctl(UDP_BLOCKED, "net.ipv4.tcp_rmem", "4096 4096 4096")
    gateway = _start(net, log_dir, mux=True, workers=1)
    room = new_room()
    publisher = net_peer("natc1", "publish", gateway.url, room, "--seconds", "90",
                         "--fps", "30", "--connect-timeout", "15")  # fmt: skip
    tcp = chromium_peer(
        UDP_BLOCKED, "play", gateway.url, room, "--seconds", "60", "--min-frames", "10", "--hold"
    )
    playing = tcp.wait_step("playing", 40)
    assert playing.get("step") == "playing", f"{playing}\n{gateway.log(4000)}"
    frozen = net.pids(UDP_BLOCKED)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        udp = net_peer(
            "natc2", "view", gateway.url, room, "--seconds", str(STALL_SECONDS),
            "--min-video-frames", "1", "--min-audio-frames", "1",
        ).result(timeout=STALL_SECONDS + 30)  # fmt: skip
        drops = mux_drops(net, gateway.url, "tcp_send_dropped", within=4.0)
    finally:
        for pid in frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    thawed = tcp.stop()
    publisher.process.terminate()
    first_s = (udp.get("first_frame_ms") or 0) / 1000
    expected = 30 * (STALL_SECONDS - first_s)
    report = (
        f"UDP viewer while the TCP player was frozen: video_frames={udp.get('video_frames')} "
        f"(~{expected:.0f} sent over {STALL_SECONDS - first_s:.1f} s) first_frame_ms="
        f"{udp.get('first_frame_ms')}; mux drops {drops}; frozen {len(frozen)} processes; "
        f"TCP player before {playing.get('frames')} frames, after thawing: {_describe(thawed)}"
    )
    print(report)
    assert udp.get("ok") and udp["video_frames"] >= 0.6 * expected, f"{report}\n{gateway.log(4000)}"
    assert drops.get("tcp_send_dropped", 0) > 0, f"nothing counted as dropped: {report}"
