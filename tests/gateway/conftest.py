"""Fixtures for the gateway tests: hand-started workers, an HTTP session, a shared bare
gateway (gateways come from tests/conftest.py's gateway_factory)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from testkit.processes import GatewayProcess, RemoteWorker, start_gateway


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., RemoteWorker]]:
    """start_worker(connect, worker_id, *extra): a real `python -m sfu` worker started by hand
    (a "remote" worker); all are killed at teardown."""
    started: list[RemoteWorker] = []

    def start(connect: str, worker_id: str, *extra: str) -> RemoteWorker:
        worker = RemoteWorker(tmp_path, connect, worker_id, *extra)
        started.append(worker)
        return worker

    yield start
    for worker in reversed(started):
        worker.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
def bare_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway without any worker, shared by a module: the checks on it change nothing."""
    gateway = start_gateway(tmp_path_factory.mktemp("bare"), workers=0, wait="/healthz")
    yield gateway
    gateway.stop()
