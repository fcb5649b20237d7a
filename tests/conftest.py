"""Shared fixtures: real gateway processes, the aiortc client as a process, Chromium.

Everything here runs real processes (no mocks): the gateway is started exactly as an operator
would (`python -m gateway`, testkit/processes.py), and the media clients run in their own
processes (testkit/client.py, tests/support/clients.py) so the server's event loop is never
shared with a client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext

from testkit.processes import GatewayProcess, pick_free_port, start_gateway
from tests.support.browser import launch_chromium, persistent_context
from tests.support.clients import PeerProcess, spawn_peer
from tests.support.clients import run_peer as run_peer_process


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    """Call it with testkit.processes.start_gateway's keywords (workers=, args=, env=, wait=,
    own_ipc_dir=) to start gateways; all are stopped at teardown."""
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


@pytest.fixture
def free_port() -> Callable[[], int]:
    """free_port() -> a TCP port on 127.0.0.1 that is free right now."""
    return pick_free_port


@pytest.fixture
def run_peer() -> Callable[..., dict[str, Any]]:
    """run_peer("view", url, room, "--seconds", "5", timeout=60) -> the client's JSON result."""
    return run_peer_process


@pytest.fixture
def peers() -> Iterator[Callable[..., PeerProcess]]:
    """spawn_peer() that also kills any client a failing test left running."""
    running: list[PeerProcess] = []

    def spawn(mode: str, url: str, room: str, *args: str) -> PeerProcess:
        peer = spawn_peer(mode, url, room, *args)
        running.append(peer)
        return peer

    yield spawn
    for peer in running:
        peer.kill()


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[BrowserContext]:
    """A fresh persistent Chromium context (new user data dir per test)."""
    yield from persistent_context(tmp_path / "chromium-profile")


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """One Chromium for a whole test module; tests open their own contexts and pages in it.

    Launching costs seconds on a 2-core machine, so modules that run many short media cases
    share one browser rather than one per test.
    """
    yield from launch_chromium()
