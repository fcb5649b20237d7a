"""The server host behind a NAT of its own (testkit.netns.Topology(server_nat=True)): srv sees
only 172.31.0.1, its router srtr holds the public 10.77.0.1 that clients use (issue 16's
"1:1 NAT" and "Docker/bridge" situations). The clients are behind their own NAT as well.

* 1:1 NAT, PUBLIC_IP=10.77.0.1, per-session ports (the settings that exist today);
* 1:1 NAT, the public address found with STUN_DISCOVER (a STUN server on the public LAN),
  on the mux, the server firewalled to the mux ports + HTTP;
* port forwards only (Docker's -p: HTTP and the mux ports), PUBLIC_IP, on the mux.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from testkit.netns import SERVER_ADDRESS, SERVER_PRIVATE_ADDRESS, Topology
from tests.network.conftest import (
    HTTP_PORT,
    WORKERS,
    describe,
    gateway_has_setting,
    mux_env,
    mux_ports,
    publish_and_view,
    require_mux,
)
from tests.support.clients import PeerProcess

server_nat = pytest.mark.parametrize("net", [{"server_nat": True}], indirect=True, ids=["srv-nat"])


def _media_line(log: str) -> str:
    return next((line for line in log.splitlines() if "media: announcing" in line), "")


@server_nat
def test_one_to_one_nat_with_public_ip(
    net: Topology, net_peer: Callable[..., PeerProcess], log_dir: Path
) -> None:
    net.server_forward_all()
    gateway = net.start_gateway(
        log_dir, http_port=HTTP_PORT, workers=WORKERS, env={"PUBLIC_IP": SERVER_ADDRESS}
    )
    _, (viewer,) = publish_and_view(net_peer, gateway.url, ["natc2"])
    assert viewer["ok"], f"1:1 NAT, PUBLIC_IP: {describe(viewer)}\n{gateway.log(4000)}"
    print(f"1:1 NAT with PUBLIC_IP, per-session ports: {describe(viewer)}")


@server_nat
def test_one_to_one_nat_found_with_stun_discover(
    net: Topology, net_peer: Callable[..., PeerProcess], log_dir: Path
) -> None:
    require_mux()
    if not gateway_has_setting("STUN_DISCOVER"):
        pytest.skip("the gateway has no STUN_DISCOVER setting yet")
    net.server_forward_all()
    env = {**mux_env(), "STUN_DISCOVER": net.start_stun_server()}
    gateway = net.start_gateway(log_dir, http_port=HTTP_PORT, workers=WORKERS, env=env)
    net.firewall_server_allow_only(mux_ports(), mux_ports(), HTTP_PORT)
    media = _media_line(gateway.log())
    assert SERVER_ADDRESS in media, f"the discovered address is not announced:\n{gateway.log()}"
    _, (viewer,) = publish_and_view(net_peer, gateway.url, ["natc2"])
    assert viewer["ok"], f"1:1 NAT, STUN_DISCOVER: {describe(viewer)}\n{gateway.log(4000)}"
    print(f"1:1 NAT found by STUN_DISCOVER, mux: {describe(viewer)}; {media.strip()}")


@server_nat
def test_port_forwards_only(
    net: Topology, net_peer: Callable[..., PeerProcess], log_dir: Path
) -> None:
    """Docker's `-p 8080:8080 -p 8189-8190:8189-8190/udp -p 8189-8190:8189-8190/tcp`: only
    those ports reach srv; PUBLIC_IP announces the host's address."""
    require_mux()
    net.server_forward_ports(mux_ports(), range(HTTP_PORT, HTTP_PORT + 1))
    net.server_forward_ports(range(0), mux_ports())
    env = {**mux_env(), "PUBLIC_IP": SERVER_ADDRESS}
    gateway = net.start_gateway(log_dir, http_port=HTTP_PORT, workers=WORKERS, env=env)
    media = _media_line(gateway.log())
    _, (viewer,) = publish_and_view(net_peer, gateway.url, ["natc2"])
    assert viewer["ok"], (
        f"port forwards to {SERVER_PRIVATE_ADDRESS}: {describe(viewer)}\n{gateway.log(4000)}"
    )
    print(f"port forwards only, mux: {describe(viewer)}; {media.strip()}")
