"""The gateway with real local workers (`python -m sfu`): supervision and one media round trip."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable

import aiohttp
import pytest

from testkit.processes import REPO, GatewayProcess, process_gone, wait_until
from tests.support.sdp import OFFER

pytestmark = pytest.mark.skipif(
    not (REPO / "sfu" / "__main__.py").exists(), reason="the sfu worker is not there"
)
SDP = {"Content-Type": "application/sdp"}


async def ready(http: aiohttp.ClientSession, gateway: GatewayProcess, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        async with http.get(gateway.url + "/readyz") as response:
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"gateway not ready:\n{gateway.log()}")
        await asyncio.sleep(0.05)


def worker_pid(gateway: GatewayProcess, slot: int = 0) -> int:
    """The pid of the newest registered local-{slot}, from the gateway's log."""
    pattern = rf"worker local-{slot} registered \(pid (\d+)"
    return int(re.findall(pattern, gateway.log())[-1])


async def local_gateway(
    gateway_factory: Callable[..., GatewayProcess], http: aiohttp.ClientSession, *args: str
) -> GatewayProcess:
    gateway = gateway_factory(
        workers=1, args=["--bind-addresses", "127.0.0.1", "--stun-urls", "", *args], wait=None
    )
    await gateway.wait_healthy()
    await ready(http, gateway, within=20)
    return gateway


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])
async def test_dead_local_worker_is_replaced(
    gateway_factory: Callable[..., GatewayProcess],
    http: aiohttp.ClientSession,
    how: signal.Signals,
) -> None:
    # A stopped worker is unresponsive after WORKER_TIMEOUT and dead after this.
    gateway = await local_gateway(gateway_factory, http, "--worker-dead-timeout", "1.5")
    first = worker_pid(gateway)
    url = gateway.url + "/api/whip/publish/r"
    async with http.post(url, data=OFFER, headers=SDP) as response:
        # Any SDP verdict will do; what matters is that a session may exist on that worker.
        location = response.headers.get("Location")
    os.kill(first, how)
    started = time.monotonic()
    await wait_until(
        lambda: f"process {first} exited" in gateway.log() or "no heartbeat" in gateway.log(),
        2.0,
        "the gateway to declare the worker dead",
    )
    assert time.monotonic() - started < 2.0
    if location:
        async with http.get(gateway.url + location) as r:
            assert r.status == 404
    await wait_until(lambda: worker_pid(gateway) != first, 15, "a replacement worker")
    await ready(http, gateway, within=5)
    await wait_until(lambda: process_gone(first), 5, "the old worker to be reaped")


async def test_stop_leaves_no_worker_behind(
    gateway_factory: Callable[..., GatewayProcess], http: aiohttp.ClientSession
) -> None:
    gateway = await local_gateway(gateway_factory, http)
    pid = worker_pid(gateway)
    assert gateway.stop() == 0
    await wait_until(lambda: process_gone(pid), 6, "the worker to exit with the gateway")
