"""A worker process registered with an in-test ROUTER that speaks the real gateway protocol.

These tests look at one worker in isolation; the full path through sfu-gateway is covered
by the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ipc import messages as m
from ipc.channel import Channel, router_channel

ROOT = Path(__file__).parents[2]


@dataclass
class WorkerHarness:
    channel: Channel
    process: subprocess.Popen[bytes]
    worker_id: bytes
    registered: asyncio.Event
    heartbeats: list[m.Heartbeat] = field(default_factory=list)
    states: list[m.SessionState] = field(default_factory=list)

    async def request(self, body: m.Message, timeout: float = 10) -> m.Message:
        return await self.channel.request(body, peer=self.worker_id, timeout=timeout)


@pytest.fixture
def worker_args(request: pytest.FixtureRequest) -> list[str]:
    """Extra sfu-worker flags; parametrize indirectly to change them."""
    return list(getattr(request, "param", []))


@pytest.fixture
async def worker(tmp_path: Path, worker_args: list[str]) -> AsyncIterator[WorkerHarness]:
    endpoint = f"ipc://{tmp_path}/gateway.sock"
    channel = router_channel([endpoint])
    channel.start()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sfu",
            "--connect",
            endpoint,
            "--worker-id",
            "w-test",
            "--bind-addresses",
            "127.0.0.1",
            "--session-connect-timeout",
            "5",
            *worker_args,
        ],
        cwd=ROOT,
    )
    harness = WorkerHarness(channel, process, b"w-test", asyncio.Event())

    async def serve(peer: bytes, body: m.Message) -> m.Message:
        if isinstance(body, m.Hello):
            harness.registered.set()
            return m.Welcome(heartbeat_interval=0.25)
        if isinstance(body, m.Heartbeat):
            harness.heartbeats.append(body)
            return m.HeartbeatAck()
        return m.Failure("internal", "unexpected")

    channel.on_request = serve
    channel.on_notification = lambda peer, body: harness.states.append(body)  # type: ignore[arg-type]
    await asyncio.wait_for(harness.registered.wait(), 20)
    yield harness
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    await channel.close()
