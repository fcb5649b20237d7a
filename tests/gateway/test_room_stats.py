"""Live room stats and kicking sessions (issue 17), against real media: one gateway with one
worker, an aiortc publisher and two aiortc viewers as processes (testkit/client.py), plus one
WHEP session made in this process (its full id opens its event stream).

One test, so that the gateway and the publisher serve every check (a few seconds of media).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection

from testkit.client import new_pc, viewer_offer
from testkit.processes import GatewayProcess, start_gateway

pytestmark = pytest.mark.timeout(60)

ADMIN_TOKEN = "stats-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROOM = "stats-room"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {"ADMIN_TOKEN": ADMIN_TOKEN}
    args = ["--bind-addresses", "127.0.0.1"]
    process = start_gateway(tmp_path_factory.mktemp("stats"), workers=1, args=args, env=env)
    yield process
    process.stop()


async def _json(
    http: aiohttp.ClientSession, method: str, url: str, status: int = 200, **kwargs: Any
) -> Any:
    async with http.request(method, url, **kwargs) as response:
        body = await response.json()
        assert response.status == status, (method, url, response.status, body)
        return body


async def _until(check: Callable[[], Any], what: str, within: float = 15.0) -> Any:
    """Poll the async `check` until it answers something truthy; the last answer on failure."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last and last[0]:
            return last[1]
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def _video(room: dict[str, Any]) -> dict[str, Any]:
    return next((t for t in room["media"] if t["kind"] == "video"), {})


async def test_room_stats_sessions_list_and_kicking_a_session(
    gateway: GatewayProcess, http: aiohttp.ClientSession, peers: Callable[..., Any]
) -> None:
    url = gateway.url
    publisher = peers("publish", url, ROOM, "--seconds", "16")
    viewers = [peers("view", url, ROOM, "--seconds", "10") for _ in range(2)]

    # --- per-track figures, as the home measured them (rates over >= 1 s of heartbeats) ---
    async def measured() -> tuple[bool, dict[str, Any] | None]:
        async with http.get(f"{url}/api/rooms/{ROOM}") as response:
            if response.status == 404:  # the publisher is not there yet
                return False, None
            room = await response.json()
        video = _video(room)
        ready = (
            room["viewersPerWorker"] == {"local-0": 2}
            # aiortc's encoder sends 30 frames/s; the window is >= 1 s of marker bits, so a
            # loaded machine (frames late or bunched across the window's edges) stays in
            # 20..40, while a count of packets or of keyframes instead would fall outside.
            and 20 <= video.get("frameRate", 0) <= 40
            and video.get("keyframeIntervalSeconds") is not None  # the second keyframe
        )
        return ready, room

    room = await _until(measured, "the video track's figures and both viewers")
    video = _video(room)
    assert video["codec"] == "VP8" and video["codecDetail"] == "VP8"
    assert (video["width"], video["height"]) == (640, 360)  # from the keyframe's header
    assert video["bitrateBps"] > 0 and video["packetsReceived"] > 0
    assert video["packetsLost"] >= 0 and 0 <= video["lossRatio"] <= 0.05  # loopback
    assert video["keyframes"] >= 2 and video["keyframeIntervalSeconds"] > 0
    assert 0 <= video["lastKeyframeSecondsAgo"] < 16
    audio = next(t for t in room["media"] if t["kind"] == "audio")
    assert audio["codec"] == "opus" and audio["bitrateBps"] > 0
    assert "frameRate" not in audio and "width" not in audio
    assert room["publisherState"] == "connected" and room["subscribers"] == 2
    assert isinstance(room["publisher"], str) and len(room["publisher"]) == 8
    # /api/rooms: the same room with a summary of each track.
    listed = next(r for r in await _json(http, "GET", f"{url}/api/rooms") if r["name"] == ROOM)
    summary = _video(listed)
    assert summary["width"] == 640 and summary["bitrateBps"] > 0 and "frameRate" in summary
    assert "packetsLost" not in summary and "publisher" not in listed
    await _json(http, "GET", f"{url}/api/rooms/no-such-room", status=404)
    await _json(http, "GET", f"{url}/api/rooms/bad%20name", status=400)

    # --- the sessions list: admin only (client addresses are personal data) ---
    sessions_url = f"{url}/api/admin/rooms/{ROOM}/sessions"
    await _json(http, "GET", sessions_url, status=401)
    await _json(http, "GET", sessions_url, status=401, headers={"X-Auth-Token": "wrong"})

    async def all_connected() -> tuple[bool, list[dict[str, Any]]]:
        listed = await _json(http, "GET", sessions_url, headers=ADMIN)
        return all(s["connected"] for s in listed), listed

    sessions = await _until(all_connected, "three connected sessions")
    assert sorted(s["kind"] for s in sessions) == ["publisher", "subscriber", "subscriber"]
    assert {s["client"] for s in sessions} == {"127.0.0.1"}
    assert {s["worker"] for s in sessions} == {"local-0"}
    assert all(len(s["id"]) == 8 and s["durationSeconds"] > 0 for s in sessions)
    assert [s["id"] for s in sessions if s["kind"] == "publisher"] == [room["publisher"]]

    # --- kicking: refused without admin, 404 for an unknown id ---
    kicked = next(s["id"] for s in sessions if s["kind"] == "subscriber")
    await _json(http, "DELETE", f"{url}/api/admin/sessions/{kicked}", status=401)
    await _json(http, "DELETE", f"{url}/api/admin/sessions/nosuchsession", 404, headers=ADMIN)
    await _json(http, "DELETE", f"{url}/api/admin/sessions/{kicked[:7]}", 404, headers=ADMIN)
    closed = await _json(http, "DELETE", f"{url}/api/admin/sessions/{kicked}", headers=ADMIN)
    assert closed == {"closed": kicked, "kind": "subscriber", "room": ROOM}
    left = await _json(http, "GET", sessions_url, headers=ADMIN)
    assert kicked not in {s["id"] for s in left} and len(left) == 2
    room = await _json(http, "GET", f"{url}/api/rooms/{ROOM}")
    assert room["subscribers"] == 1 and room["viewersPerWorker"] == {"local-0": 1}

    # --- a kicked WHEP session's event stream ends (by its full id) ---
    pc: RTCPeerConnection = new_pc()
    try:
        offer = await viewer_offer(pc)
        headers = {"Content-Type": "application/sdp"}
        async with http.post(f"{url}/api/whep/play/{ROOM}", data=offer, headers=headers) as r:
            assert r.status == 201, await r.text()
            location = r.headers["Location"]
        session_id = location.rstrip("/").rsplit("/", 1)[1]
        async with http.get(f"{url}{location}/events") as stream:
            assert stream.status == 200
            first = await asyncio.wait_for(stream.content.readline(), 5)
            assert first.startswith(b"event: ")
            answer = await _json(
                http, "DELETE", f"{url}/api/admin/sessions/{session_id}", headers=ADMIN
            )
            assert answer["closed"] == session_id[:8]
            rest = await asyncio.wait_for(stream.content.read(), 5)  # to the end of stream
            assert b"event: reconnect" not in rest
        async with http.delete(f"{url}{location}") as gone:
            assert gone.status == 404
    finally:
        await pc.close()

    # --- the viewer processes: the kicked one found its session gone ---
    results = [viewer.result(timeout=30) for viewer in viewers]
    by_prefix = {r["location"].rstrip("/").rsplit("/", 1)[1][:8]: r for r in results}
    assert set(by_prefix) == {s["id"] for s in sessions if s["kind"] == "subscriber"}
    assert by_prefix[kicked]["delete_status"] == 404  # the session had ended under it
    (other,) = (r for prefix, r in by_prefix.items() if prefix != kicked)
    assert other["delete_status"] == 200 and other["ok"], other
    publisher.kill()


def test_session_ids_are_shown_by_their_random_part() -> None:
    from gateway.http.control import _short

    assert _short("AbCdEfGhIjKlMnOp") == "AbCdEfGh"
    assert _short("node-a.AbCdEfGhIjKl") == "node-a.AbCdEfGh"  # several nodes: <node>.<random>
