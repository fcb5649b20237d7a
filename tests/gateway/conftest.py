"""Fixtures for the gateway tests (helpers live in gateway_testkit.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from gateway_testkit import FakeWorker, GatewayProcess


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess | FakeWorker]]:
    started: list[GatewayProcess | FakeWorker] = []
    yield started
    for process in reversed(started):
        process.stop()


@pytest.fixture
def start_gateway(
    tmp_path: Path, processes: list[GatewayProcess | FakeWorker]
) -> Callable[..., GatewayProcess]:
    def start(*args: str, env: dict[str, str] | None = None) -> GatewayProcess:
        gateway = GatewayProcess(tmp_path, list(args), env)
        processes.append(gateway)
        return gateway

    return start


@pytest.fixture
def start_fake_worker(
    tmp_path: Path, processes: list[GatewayProcess | FakeWorker]
) -> Callable[..., FakeWorker]:
    def start(connect: str, worker_id: str, *extra: str) -> FakeWorker:
        worker = FakeWorker(tmp_path, connect, worker_id, *extra)
        processes.append(worker)
        return worker

    return start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def bare_gateway(start_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    """A gateway without any worker."""
    gateway = start_gateway("--workers", "0")
    await gateway.wait_healthy()
    return gateway
