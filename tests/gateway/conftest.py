"""Fixtures for the gateway tests (helpers live in gateway_testkit.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from gateway_testkit import GatewayProcess, RealWorker, http_status, wait_sync


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess | RealWorker]]:
    started: list[GatewayProcess | RealWorker] = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.fixture
def start_gateway(
    tmp_path: Path, processes: list[GatewayProcess | RealWorker]
) -> Callable[..., GatewayProcess]:
    def start(*args: str, env: dict[str, str] | None = None) -> GatewayProcess:
        gateway = GatewayProcess(tmp_path, list(args), env)
        processes.append(gateway)
        return gateway

    return start


@pytest.fixture
def start_worker(
    tmp_path: Path, processes: list[GatewayProcess | RealWorker]
) -> Callable[..., RealWorker]:
    """A real `python -m sfu` worker started by hand (a "remote" worker)."""

    def start(connect: str, worker_id: str, *extra: str) -> RealWorker:
        worker = RealWorker(tmp_path, connect, worker_id, *extra)
        processes.append(worker)
        return worker

    return start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
def bare_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway without any worker, shared by a module: the checks on it change nothing."""
    gateway = GatewayProcess(tmp_path_factory.mktemp("bare"), ["--workers", "0"], None)
    wait_sync(
        lambda: gateway.process.poll() is not None or _healthy(gateway), 15, "a healthy gateway"
    )
    assert gateway.process.poll() is None, gateway.log()
    yield gateway
    gateway.stop()


def _healthy(gateway: GatewayProcess) -> bool:
    return http_status(gateway.url + "/healthz") == 200
