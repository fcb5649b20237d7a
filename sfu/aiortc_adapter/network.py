"""Where aioice gathers: the host addresses, and binds inside the configured UDP port
range (aioice has no option for either)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import aioice
import aioice.ice

log = logging.getLogger(__name__)


# --- network -----------------------------------------------------------------------------


def restrict_host_addresses(addresses: list[str]) -> None:
    """Gather ICE host candidates on exactly these addresses."""
    fixed = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


def default_host_addresses() -> list[str]:
    """aioice's own choice (every non-loopback address), or loopback when that is empty."""
    found = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
    return found or ["127.0.0.1"]


class PortRange:
    """Hands out UDP ports from [low, high], skipping ports that are in use."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high
        self._next = low
        self.exhausted_at = -1.0  # time.monotonic() of the last bind that found no port

    def bind(self, family: int, host: str) -> socket.socket:
        size = self.high - self.low + 1
        for _ in range(size):
            port = self._next
            self._next = self.low if port >= self.high else port + 1
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            sock.setblocking(False)
            return sock
        self.exhausted_at = time.monotonic()
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {self.low}-{self.high}")


_installed_ranges: list[PortRange] = []


def udp_ports_exhausted_since(moment: float) -> bool:
    """Whether a bind found the installed UDP port range full at or after `moment`
    (time.monotonic()). aioice only logs such a failure and gathers no candidate."""
    return any(ports.exhausted_at >= moment for ports in _installed_ranges)


def install_port_range(loop: asyncio.AbstractEventLoop, ports: PortRange) -> None:
    """Make aioice's `create_datagram_endpoint(local_addr=(ip, 0))` bind inside `ports`.

    aioice has no port-range option (aiortc#487, aioice#47). It asks the running loop for
    an ephemeral port; we wrap that one call on the worker's loop instance.
    """
    original = loop.create_datagram_endpoint
    _installed_ranges.append(ports)

    async def create_datagram_endpoint(
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str, int] | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        if local_addr is not None and local_addr[1] == 0 and not kwargs:
            family = socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET
            sock = ports.bind(family, local_addr[0])
            return await original(protocol_factory, sock=sock)
        return await original(protocol_factory, local_addr=local_addr, **kwargs)

    loop.create_datagram_endpoint = create_datagram_endpoint  # type: ignore[method-assign,assignment]  # per-loop seam
