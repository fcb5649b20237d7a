"""Graceful drain: after SIGTERM the live sessions go on until they end by themselves (or
DRAIN_TIMEOUT), new ones get 503 + Retry-After, and a second signal stops at once.

Real processes throughout: `python -m gateway` with one local worker, aiortc publisher and
viewer clients (testkit.client). The timings each test measured are printed (pytest -s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common.sidecar import COMPLETE, media_name_of, read_sidecar
from testkit.processes import GatewayProcess, http_status
from tests.support.clients import PeerProcess
from tests.support.sdp import OFFER


def _post_offer(url: str) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(
        url, data=OFFER.encode(), method="POST", headers={"Content-Type": "application/sdp"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def _wait_for(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:g} s waiting for {what}")
        time.sleep(0.05)


def _wait_exit(gateway: GatewayProcess, within: float) -> tuple[int, float]:
    started = time.monotonic()
    try:
        code = gateway.process.wait(within)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"gateway still running after {within:g} s:\n{gateway.log()}"
        ) from None
    return code, time.monotonic() - started


def test_sigterm_lets_live_sessions_finish_and_refuses_new_ones(
    gateway_factory: Callable[..., GatewayProcess],
    peers: Callable[..., PeerProcess],
    tmp_path: Path,
) -> None:
    record_dir = tmp_path / "rec"
    gateway = gateway_factory(
        workers=1,
        args=["--drain-timeout", "20", "--record-enabled", "1", "--record-dir", str(record_dir)],
    )
    publisher = peers("publish", gateway.url, "drain", "--seconds", "10")
    time.sleep(1.5)  # the room exists once the publisher posted
    viewer_started = time.monotonic()
    # 8 s at 30 fps is ~240 frames; 150 of them can only come after the SIGTERM below.
    viewer = peers("view", gateway.url, "drain", "--seconds", "8", "--min-video-frames", "150")
    time.sleep(2.0)
    os.kill(gateway.process.pid, signal.SIGTERM)
    sigterm_at = time.monotonic()

    # Draining: not ready, new sessions refused with Retry-After, the process still serves.
    _wait_for(lambda: http_status(gateway.url + "/readyz") == 503, 3, "/readyz to say 503")
    status, headers, body = _post_offer(gateway.url + "/api/whep/play/drain")
    assert status == 503, body
    assert headers.get("Retry-After", "").isdigit(), headers
    assert "shutting_down" in body
    assert http_status(gateway.url + "/healthz") == 200
    refused_after = time.monotonic() - sigterm_at

    watched = viewer.result(timeout=30)
    viewer_done = time.monotonic() - sigterm_at
    published = publisher.result(timeout=30)
    publisher_done = time.monotonic() - sigterm_at
    code, exit_wait = _wait_exit(gateway, 20)
    exited = time.monotonic() - sigterm_at
    print(
        f"\ndrain figures: SIGTERM {sigterm_at - viewer_started:.1f} s after the viewer's start; "
        f"new WHEP POST refused {refused_after:.2f} s after SIGTERM; viewer ended "
        f"{viewer_done:.1f} s after it with {watched['video_frames']} video / "
        f"{watched['audio_frames']} audio frames, DELETE {watched['delete_status']}; publisher "
        f"ended {publisher_done:.1f} s after it (DELETE {published['delete_status']}); "
        f"gateway exited (code {code}) {exited:.1f} s after SIGTERM, "
        f"{exit_wait:.1f} s after the last client"
    )

    assert watched["ok"], watched
    assert watched["video_frames"] >= 150 and watched["delete_status"] == 200, watched
    assert published["ok"] and published["delete_status"] == 200, published
    assert code == 0, gateway.log()
    assert exited < 15, f"the gateway should stop once the sessions ended:\n{gateway.log()}"
    log = gateway.log()
    assert "drained: every session ended" in log, log
    assert "passed: closing the" not in log, log
    # The recordings of the drained room were finalized (the next start uploads them).
    names = [n for n in (media_name_of(e) for e in os.listdir(record_dir)) if n is not None]
    assert names, list(record_dir.iterdir())
    for name in names:
        info = read_sidecar(str(record_dir), name)
        assert info is not None and info.state == COMPLETE, (name, info)


def test_drain_timeout_closes_what_is_still_live(
    gateway_factory: Callable[..., GatewayProcess], peers: Callable[..., PeerProcess]
) -> None:
    gateway = gateway_factory(workers=1, args=["--drain-timeout", "2"])
    publisher = peers("publish", gateway.url, "long", "--seconds", "30")
    time.sleep(3.0)  # connected
    os.kill(gateway.process.pid, signal.SIGTERM)
    code, waited = _wait_exit(gateway, 15)
    publisher.kill()
    print(f"\nDRAIN_TIMEOUT=2 with a 30 s publisher: the gateway exited after {waited:.1f} s")
    assert code == 0
    assert 2.0 <= waited < 10, gateway.log()
    assert "DRAIN_TIMEOUT (2 s) passed: closing the 1 sessions still live" in gateway.log()


def test_a_second_signal_during_the_drain_stops_at_once(
    gateway_factory: Callable[..., GatewayProcess], peers: Callable[..., PeerProcess]
) -> None:
    gateway = gateway_factory(workers=1, args=["--drain-timeout", "30"])
    publisher = peers("publish", gateway.url, "stuck", "--seconds", "30")
    time.sleep(3.0)
    os.kill(gateway.process.pid, signal.SIGTERM)
    _wait_for(lambda: "draining: waiting" in gateway.log(), 5, "the drain to start")
    time.sleep(1.0)
    assert gateway.process.poll() is None, "the first SIGTERM must wait for the live session"
    os.kill(gateway.process.pid, signal.SIGINT)
    code, waited = _wait_exit(gateway, 5)
    publisher.kill()
    print(f"\nsecond signal during the drain: the gateway exited after {waited:.2f} s")
    assert code == 0
    assert waited < 3, gateway.log()
    assert "second signal: stopping now" in gateway.log()
