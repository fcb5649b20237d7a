"""The embedded supervisor: crash-loop protection and no orphaned workers."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from testkit.processes import GatewayProcess, process_gone, worker_pids


def test_worker_failing_at_boot_is_retried_with_backoff(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    # Two ports for three addresses: fine for the gateway (two per worker), but a worker
    # needs a port per address for its first session, so every one of them exits 2 at boot
    # while the gateway itself runs fine.
    env = {"UDP_PORTS": "40000-40001", "BIND_ADDRESSES": "127.0.0.1,127.0.0.2,127.0.0.3"}
    gateway = gateway_factory(workers=1, env=env, wait=None)
    time.sleep(4.5)
    starts = gateway.log().count("started local-0")
    # Backoff 1 s, 2 s, ...: at most the first start plus two retries in 4.5 s.
    assert 2 <= starts <= 3, gateway.log()
    assert "before registering; retrying in" in gateway.log()
    try:
        urllib.request.urlopen(gateway.url + "/readyz", timeout=2)
        raise AssertionError("/readyz answered 200 without a worker")
    except urllib.error.HTTPError as exc:
        assert exc.code == 503


def test_workers_exit_when_their_gateway_is_killed(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(workers=1)
    workers = worker_pids(gateway)
    assert len(workers) == 1
    os.kill(gateway.process.pid, signal.SIGKILL)  # the gateway alone, not its process group
    gateway.process.wait(5)
    deadline = time.monotonic() + 5
    while not all(process_gone(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(process_gone(pid) for pid in workers), "a worker outlived its gateway"
