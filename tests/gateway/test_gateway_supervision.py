"""The embedded supervisor: crash-loop protection and no orphaned workers."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.conftest import GatewayProcess


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.update(int(child) for child in text)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_worker_failing_at_boot_is_retried_with_backoff(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    # The workers read GATEWAY_TIMEOUT themselves; an invalid value makes every one of
    # them exit 2 at boot while the gateway itself runs fine.
    gateway = gateway_factory(workers=1, env={"GATEWAY_TIMEOUT": "abc"}, wait=False)
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
    workers = _children(gateway.proc.pid)
    assert len(workers) == 1
    os.kill(gateway.proc.pid, signal.SIGKILL)  # the gateway alone, not its process group
    gateway.proc.wait(5)
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "a worker outlived its gateway"
