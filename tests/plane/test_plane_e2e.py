"""The shared-memory plane end to end: sfu-gateway with two local workers, one room's
publisher on its home worker, viewers placed on both workers (SPREAD_THRESHOLD=1 spills
from the first viewer on), aiortc clients in their own processes decoding what they get.

Placement with SPREAD_THRESHOLD=1: the publisher goes to worker A (its home, 1 session);
the first viewer to B (0 sessions, B is less loaded); the second back to A (a tie goes to
the home), and so on.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from testkit.processes import GatewayProcess, process_gone, wait_sync, worker_id_of, worker_pids
from tests.support.clients import PeerProcess

SPREAD = {"SPREAD_THRESHOLD": "1"}
Peers = Callable[..., PeerProcess]


def room_info(gateway: GatewayProcess, room: str) -> dict[str, Any] | None:
    with urllib.request.urlopen(f"{gateway.url}/api/rooms", timeout=5) as response:
        rooms: list[dict[str, Any]] = json.load(response)
    return next((r for r in rooms if r["name"] == room), None)


def wait_for_viewers(gateway: GatewayProcess, room: str, per_worker: dict[str, int]) -> None:
    def placed() -> bool:
        info = room_info(gateway, room)
        return info is not None and info["viewersPerWorker"] == per_worker

    wait_sync(placed, 20, f"viewers of {room} placed as {per_worker}")


def wait_for_publisher(gateway: GatewayProcess, room: str) -> str:
    def connected() -> bool:
        info = room_info(gateway, room)
        return info is not None and info["publisherState"] == "connected"

    wait_sync(connected, 20, f"a connected publisher in {room}")
    info = room_info(gateway, room)
    assert info is not None
    return str(info["home"])


def pid_of(gateway: GatewayProcess, worker_id: str) -> int:
    return next(pid for pid in worker_pids(gateway) if worker_id_of(pid) == worker_id)


def ring_fds_and_maps(pid: int) -> list[str]:
    """The ring memfds a process holds open or mapped."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "live-sfu-ring" in target:
            found.append(target)
    with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as maps:
        found += [line for line in maps if "live-sfu-ring" in line]
    return found


def rings_held(gateway: GatewayProcess) -> list[str]:
    return [ring for pid in worker_pids(gateway) for ring in ring_fds_and_maps(pid)]


def view(
    peers: Peers, gateway: GatewayProcess, room: str, seconds: float, *args: str
) -> PeerProcess:
    return peers("view", gateway.url, room, "--seconds", str(seconds), *args)


def test_viewers_on_both_workers_decode_and_rings_are_released(
    gateway_factory: Callable[..., GatewayProcess], peers: Peers
) -> None:
    gateway = gateway_factory(workers=2, env=SPREAD)
    publisher = peers("publish", gateway.url, "spread", "--seconds", "13")
    home = wait_for_publisher(gateway, "spread")
    edge = "local-1" if home == "local-0" else "local-0"
    viewers = []
    for count in range(4):
        viewers.append(
            view(
                peers, gateway, "spread", 8, "--min-video-frames", "90", "--min-audio-frames", "150"
            )
        )
        expected = {edge: (count + 2) // 2, home: (count + 1) // 2}
        wait_for_viewers(gateway, "spread", {k: v for k, v in expected.items() if v})
    results = [viewer.result(timeout=60) for viewer in viewers]
    for result in results:
        assert result["ok"], result
        assert (result["width"], result["height"]) == (640, 360)
    assert publisher.result(timeout=60)["ok"]
    # Everyone left: the rooms closed on both workers, and with them every ring.
    wait_sync(lambda: room_info(gateway, "spread") is None, 15, "the room to close")
    wait_sync(lambda: not rings_held(gateway), 10, "the workers to drop their rings")
    assert not [name for name in os.listdir("/dev/shm") if "live-sfu" in name]


def test_edge_viewer_keyframe_requests_and_nacks_reach_the_home(
    gateway_factory: Callable[..., GatewayProcess], peers: Peers
) -> None:
    # Without instant start, a late viewer decodes only once a keyframe comes; the
    # publisher counts the keyframe requests it acts on (testkit KeyframeRequestCounter).
    gateway = gateway_factory(workers=2, env={**SPREAD, "INSTANT_START": "false"})
    publisher = peers("publish", gateway.url, "pli", "--seconds", "13")
    home = wait_for_publisher(gateway, "pli")
    time.sleep(2)
    viewer = view(peers, gateway, "pli", 8, "--min-video-frames", "60", "--drop-every", "25")
    edge = "local-1" if home == "local-0" else "local-0"
    wait_for_viewers(gateway, "pli", {edge: 1})
    result = viewer.result(timeout=60)
    assert result["ok"], result
    # The edge answered the viewer's NACKs from the home's ring.
    assert result["dropped"] >= 10, result
    assert result["recovered"] >= 0.8 * result["dropped"], result
    published = publisher.result(timeout=60)
    assert published["ok"], published
    # One request when its stream starts (a new source epoch), one more from the edge
    # viewer's join, relayed by the edge to the home (a publisher alone sees 1).
    assert published["keyframe_requests"] >= 2, published


def test_sigkill_of_the_edge_leaves_home_viewers_playing(
    gateway_factory: Callable[..., GatewayProcess], peers: Peers
) -> None:
    gateway = gateway_factory(workers=2, env=SPREAD)
    peers("publish", gateway.url, "edgekill", "--seconds", "20")
    home = wait_for_publisher(gateway, "edgekill")
    edge = "local-1" if home == "local-0" else "local-0"
    on_edge = view(peers, gateway, "edgekill", 14)
    wait_for_viewers(gateway, "edgekill", {edge: 1})
    on_home = view(peers, gateway, "edgekill", 10, "--min-video-frames", "240")
    wait_for_viewers(gateway, "edgekill", {edge: 1, home: 1})
    time.sleep(2)
    os.kill(pid_of(gateway, edge), signal.SIGKILL)
    result = on_home.result(timeout=60)
    assert result["ok"], result  # 10 s at 30 fps: 240 frames means no stall of note
    video = result["rtp"]["video"]
    assert video["packetsReceived"] > 0 and video["packetsLost"] == 0, video
    on_edge.kill()


def test_sigkill_of_the_home_edge_viewers_resume_on_republish(
    gateway_factory: Callable[..., GatewayProcess], peers: Peers
) -> None:
    gateway = gateway_factory(workers=2, env=SPREAD)
    first = peers("publish", gateway.url, "homekill", "--seconds", "30")
    home = wait_for_publisher(gateway, "homekill")
    edge = "local-1" if home == "local-0" else "local-0"
    # 20 s of viewing: 4 s before the kill; the rest only if it resumes after the republish.
    viewer = view(peers, gateway, "homekill", 20, "--min-video-frames", "330")
    wait_for_viewers(gateway, "homekill", {edge: 1})
    time.sleep(4)
    home_pid = pid_of(gateway, home)
    os.kill(home_pid, signal.SIGKILL)
    first.kill()
    wait_sync(lambda: process_gone(home_pid), 10, "the home worker to go")
    second = peers("publish", gateway.url, "homekill", "--seconds", "14")
    wait_for_publisher(gateway, "homekill")
    info = room_info(gateway, "homekill")
    assert info is not None and info["viewersPerWorker"] == {edge: 1}
    result = viewer.result(timeout=60)
    assert result["ok"], result
    assert result["post_attempts"] == 1  # the same WHEP session throughout
    second.kill()
    wait_sync(lambda: room_info(gateway, "homekill") is None, 20, "the room to close")
    wait_sync(lambda: not rings_held(gateway), 10, "the workers to drop their rings")
