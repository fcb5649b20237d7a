"""The web pages ask /api/bootstrap for the ICE servers and give them to their
RTCPeerConnection (a browser behind NAT needs the configured STUN/TURN servers), in Chromium
against a gateway whose worker takes every session on its one UDP_MUX_PORT."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable

from playwright.sync_api import BrowserContext

from testkit.processes import GatewayProcess, udp_port_owners, worker_pids
from tests.browser.pages import connected, open_page, poll, wait_decoding

CONFIGURATION_JS = "window.sfuPc ? window.sfuPc.getConfiguration().iceServers : null"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_pages_use_the_bootstrap_ice_servers_and_play_over_the_mux(
    gateway_factory: Callable[..., GatewayProcess], browser_context: BrowserContext
) -> None:
    # Nothing listens on these: the browser only has to be told about them.
    stun = "stun:127.0.0.1:3478"
    turn = "turn:127.0.0.1:3479?transport=udp"
    mux_port = _free_udp_port()
    gateway = gateway_factory(
        workers=1,
        env={
            "STUN_URLS": stun,
            "TURN_URLS": turn,
            "TURN_USERNAME": "user",
            "TURN_PASSWORD": "secret",
            "BIND_ADDRESSES": "127.0.0.1",
            "UDP_MUX_PORT": str(mux_port),
        },
    )
    room = "reach-" + uuid.uuid4().hex[:8]
    console: list[str] = []
    expected = [
        {"urls": [stun]},
        {"urls": [turn], "username": "user", "credential": "secret"},
    ]
    publisher = open_page(browser_context, f"{gateway.url}/web/publish.html?room={room}", console)
    poll("publisher connected", publisher, lambda: connected(publisher))
    assert publisher.evaluate("window.sfuIceServers") == expected
    servers = publisher.evaluate(CONFIGURATION_JS)
    assert [s["urls"] for s in servers] == [[stun], [turn]]
    assert servers[1]["username"] == "user" and servers[1]["credential"] == "secret"

    player = open_page(browser_context, f"{gateway.url}/web/play.html?room={room}", console)
    wait_decoding(player, more_frames=5)
    assert player.evaluate("window.sfuIceServers") == expected
    assert [s["urls"] for s in player.evaluate(CONFIGURATION_JS)] == [[stun], [turn]]
    assert not [line for line in console if "bootstrap failed" in line], console
    # Both sessions on the worker's one UDP socket: no port per session.
    assert sorted(udp_port_owners(worker_pids(gateway))) == [mux_port]
