"""Clients behind a real NAT (iptables MASQUERADE in a router namespace) publish and play
through the gateway running in a server namespace (issue 16, testkit/netns.py).

* per-session UDP ports (today's default), server open: works through the NAT;
* the server firewalled to the mux ports + HTTP: the per-session ports are visibly blocked,
  and with UDP_MUX_PORT the same publisher and viewers play;
* two viewers behind the same NAT address (same IP, different ports) on the mux at once;
* a viewer whose NAT gives it a new public port mid-session keeps playing on the mux.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testkit.netns import ROUTER_PUBLIC_ADDRESS, SERVER, SERVER_ADDRESS, Topology
from testkit.processes import REPO, child_env
from tests.network.conftest import (
    HTTP_PORT,
    PUBLISH_ARGS,
    WORKERS,
    describe,
    mux_env,
    mux_ports,
    mux_routes,
    new_room,
    publish_and_view,
    read_step,
    require_mux,
)
from tests.support.clients import PeerProcess

WATCH_VIEWER = REPO / "tests" / "network" / "watch_viewer.py"
REBIND_WAIT = 20.0  # seconds the viewer waits at most for media to resume after the rebind

# A UDP echo run inside srv: answers each datagram with the address it came from.
ECHO = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
sock.settimeout(10)
while True:
    data, source = sock.recvfrom(2048)
    sock.sendto(f"{source[0]}:{source[1]}".encode(), source)
"""
ASK = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(float(sys.argv[3]))
try:
    sock.sendto(b"who am i", (sys.argv[1], int(sys.argv[2])))
    print(sock.recvfrom(2048)[0].decode())
except OSError as exc:
    print(type(exc).__name__)
"""


def _seen_as(net: Topology, host: str, port: int, timeout: float = 2.0) -> str:
    argv = [sys.executable, "-c", ASK, SERVER_ADDRESS, str(port), str(timeout)]
    out = net.check_output(host, argv)
    return out.strip()


def test_topology_is_a_real_nat(net: Topology) -> None:
    """The harness itself: NAT'ed clients appear as the router's address, two of them on
    different ports; the UDP-blocked host cannot send UDP; the server cannot reach private
    addresses; the firewall drops what it does not allow."""
    port = 9999
    echo = net.run(SERVER, [sys.executable, "-c", ECHO, SERVER_ADDRESS, str(port)],
                   stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert echo.stdout is not None and echo.stdout.readline().strip() == "ready"
    natc1, natc2 = _seen_as(net, "natc1", port), _seen_as(net, "natc2", port)
    assert natc1.split(":")[0] == ROUTER_PUBLIC_ADDRESS, natc1
    assert natc2.split(":")[0] == ROUTER_PUBLIC_ADDRESS, natc2
    pub = _seen_as(net, "pub", port)
    assert pub.split(":")[0] == net.hosts["pub"].address, pub
    assert _seen_as(net, "blk", port) == "PermissionError"  # its own iptables: UDP dropped
    # The server host has no route to the clients' private network (like the internet).
    unreachable = net.check_output(
        SERVER,
        [sys.executable, "-c",
         "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "try:\n    s.sendto(b'x', ('192.168.77.11', 9))\nexcept OSError as e:\n"
         "    print(e.errno)"],
    )  # fmt: skip
    assert unreachable.strip() == str(101), unreachable  # ENETUNREACH
    net.firewall_server_allow_only(range(0), range(0), HTTP_PORT)
    assert _seen_as(net, "natc1", port, timeout=0.5) == "TimeoutError", net.firewall_report()
    net.firewall_server_open()
    assert _seen_as(net, "natc1", port).startswith(ROUTER_PUBLIC_ADDRESS)
    echo.kill()


def test_nat_clients_play_on_per_session_ports(
    net: Topology, net_peer: Callable[..., PeerProcess], log_dir: Path
) -> None:
    """Today's path: one UDP port per session, no firewall. natc1 publishes, natc2 views,
    both behind the same NAT address."""
    gateway = net.start_gateway(log_dir, http_port=HTTP_PORT, workers=WORKERS)
    publisher, (viewer,) = publish_and_view(net_peer, gateway.url, ["natc2"])
    assert viewer["ok"], f"viewer behind NAT: {describe(viewer)}\n{gateway.log(3000)}"
    print(f"per-session UDP through NAT: {describe(viewer)}")


def test_firewall_blocks_per_session_ports(
    net: Topology, net_peer: Callable[..., PeerProcess], log_dir: Path
) -> None:
    """The control for the mux tests: with the server open only on the mux ports and HTTP, a
    gateway on per-session ports answers the offer but no media connects."""
    gateway = net.start_gateway(log_dir, http_port=HTTP_PORT, workers=WORKERS)
    net.firewall_server_allow_only(mux_ports(), mux_ports(), HTTP_PORT)
    result = net_peer(
        "natc1", "publish", gateway.url, new_room(), "--seconds", "2.5",
        *PUBLISH_ARGS[:-2], "--connect-timeout", "2.5",
    ).result(timeout=40)  # fmt: skip
    report = net.firewall_report()
    assert result.get("location"), f"the HTTP exchange itself must work: {result}"
    assert not result["connected"], f"media got through the firewall: {result}\n{report}"


def test_nat_clients_play_through_firewall_on_mux(
    net: Topology, net_peer: Callable[..., PeerProcess], log_dir: Path
) -> None:
    """UDP_MUX_PORT, the server firewalled to the mux ports + HTTP: natc1 publishes and
    natc2 views through the NAT."""
    require_mux()
    gateway = net.start_gateway(log_dir, http_port=HTTP_PORT, workers=WORKERS, env=mux_env())
    net.firewall_server_allow_only(mux_ports(), mux_ports(), HTTP_PORT)
    publisher, (viewer,) = publish_and_view(net_peer, gateway.url, ["natc2"])
    report = net.firewall_report()
    assert viewer["ok"], f"viewer on the mux: {describe(viewer)}\n{report}\n{gateway.log(4000)}"
    print(f"UDP mux through NAT and firewall: {describe(viewer)}")


def test_two_viewers_behind_one_nat_address_on_mux(
    net: Topology, net_peer: Callable[..., PeerProcess], log_dir: Path
) -> None:
    """Two viewers with the same public address (the router's) and different ports play at
    the same time on the mux (one worker: both sessions on the same socket), the publisher
    behind the same NAT too."""
    require_mux()
    gateway = net.start_gateway(log_dir, http_port=HTTP_PORT, workers=1, env=mux_env())
    net.firewall_server_allow_only(mux_ports(1), mux_ports(1), HTTP_PORT)
    publisher, viewers = publish_and_view(net_peer, gateway.url, ["natc1", "natc2"])
    described = "; ".join(describe(v) for v in viewers)
    assert all(v["ok"] for v in viewers), f"{described}\n{gateway.log(4000)}"
    print(f"two viewers behind one NAT address on one mux socket: {described}")


def test_viewer_follows_nat_rebinding_on_mux(
    net: Topology, net_peer: Callable[..., PeerProcess], log_dir: Path
) -> None:
    """Mid-session, the viewer's NAT gives it a new public port (net.nat_rebind: new mappings
    from random ports, old ones dropped): the server must follow the viewer to its new
    address once a consent check (a STUN binding with the right credentials) comes from
    there, and media resumes. Without that, media goes to a port nobody listens on."""
    require_mux()
    gateway = net.start_gateway(log_dir, http_port=HTTP_PORT, workers=1, env=mux_env())
    net.firewall_server_allow_only(mux_ports(1), mux_ports(1), HTTP_PORT)
    room = new_room()
    publisher = net_peer("natc1", "publish", gateway.url, room, "--seconds", "60", *PUBLISH_ARGS)
    argv = [sys.executable, str(WATCH_VIEWER), "--url", gateway.url, "--room", room]
    argv += ["--no-spoof", "--after", str(REBIND_WAIT), "--end-after-frames", "30"]
    watcher: subprocess.Popen[str] = net.run(
        "natc2", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=child_env(),
    )  # fmt: skip
    ready = read_step(watcher, "ready", 40)
    assert ready.get("step") == "ready", f"{ready}\n{gateway.log(4000)}"
    time.sleep(1.0)
    routes_before = mux_routes(net, gateway.url)
    rebound_at = time.monotonic()
    net.nat_rebind("natc2")
    out, err = watcher.communicate("rebound\n", timeout=REBIND_WAIT + 30)
    routes_after = mux_routes(net, gateway.url)
    publisher.process.terminate()
    lines = [line for line in out.splitlines() if line.strip().startswith("{")]
    assert lines, f"the watching viewer printed nothing:\n{err[-3000:]}"
    seen: dict[str, Any] = json.loads(lines[-1])
    timeline = [(t - rebound_at, frames) for t, frames in seen.get("timeline", [])]
    at_rebind = max((f for t, f in timeline if t <= 0), default=0)
    after = [(t, f) for t, f in timeline if t > 0]
    resumed = next((t for t, f in after if f >= at_rebind + 5), None)
    report = (
        f"viewer frames at the rebind {at_rebind}, at the end {seen.get('frames_end')}; "
        f"5 more frames {resumed if resumed is None else round(resumed, 2)} s after the "
        f"rebind; state {seen.get('state_end')}; error {seen.get('error')}; mux routes "
        f"(live_worker_ice_mux_routes) {routes_before} before, {routes_after} after"
    )
    print(report)
    assert resumed is not None, f"media never resumed: {report}\n{gateway.log(4000)}"
    assert seen.get("ok"), f"{report}\n{gateway.log(4000)}"
