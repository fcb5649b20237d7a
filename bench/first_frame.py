"""Time to first frame: how long a viewer joining a live room waits for its first picture.

    .venv/bin/python -m bench.first_frame                 # both modes, 24 viewers each
    .venv/bin/python -m bench.first_frame --viewers 40 --keyframe-interval 3 --json out.json
    .venv/bin/python -m bench.first_frame --mode spread --viewers 12   # home vs edge viewers

For each mode (INSTANT_START on, then off) it starts sfu-gateway with one worker, publishes
a 640x360 VP8 pattern over WHIP from an aiortc publisher that sends a keyframe every
--keyframe-interval seconds and, like OBS or ffmpeg, ignores keyframe requests (with
--honor-pli it answers them, like a browser). Viewers (aiortc, decoding) then join over
WHEP one after another, each at a random moment of the keyframe cycle, and measure:

* from_post: from sending the WHEP offer to the first decoded video frame (what a user
  sees: signalling, ICE, DTLS and the wait for a decodable picture);
* from_connected: from the connection being up to the first decoded frame (the media part).

Mode `spread` (instant start on) starts the gateway with 2 workers and SPREAD_THRESHOLD=1, so
that a viewer goes to the least loaded worker (the room's home on a tie): the publisher's
worker is the room's *home*, the other an *edge* that reads the home's packets from shared
memory. It then repeats a cycle of three measured joins, steering each by the sessions it
keeps open (the gateway counts sessions per worker):

* edge_first: the first viewer of the room on the edge (the edge attaches to the home's
  rings for it); it stays open for the rest of the cycle;
* home: the next viewer goes to the home (a tie);
* edge: a non-decoding viewer is added first (to the home, a tie), then the measured viewer
  goes to the edge, which already serves the room.

Each measured viewer's worker is checked (the worker process holding the UDP port of its
WHEP answer's ICE candidates) and it is counted under the worker it really got. --viewers
is then the number of joins of each kind.

It prints p50/p95 per mode and exits 0; a mode where some viewer never decoded a frame
exits 1. Figures from one run on a shared 2-core VM are indicative; compare modes within
the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench.agents import candidate_ports
from sfu import aiortc_adapter as adapter
from testkit.client import delete_session, endpoint, new_pc, post_offer, wait_connected
from testkit.media import KeyframeSchedule, PatternVideoTrack
from testkit.processes import (
    GatewayProcess,
    start_gateway,
    udp_port_owners,
    worker_id_of,
    worker_pids,
)

CONNECT_TIMEOUT = 20.0
FIRST_FRAME_TIMEOUT = 20.0
SPREAD_WORKERS = 2
SPREAD_KINDS = ("home", "edge", "edge_first")

T = TypeVar("T")


async def _publish(
    http: aiohttp.ClientSession, url: str, room: str, interval: float, honor_pli: bool
) -> tuple[RTCPeerConnection, KeyframeSchedule | None, str]:
    pc = new_pc()
    transceiver = pc.addTransceiver(PatternVideoTrack(640, 360, 30), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    session = await post_offer(http, endpoint(url, "whip", room), pc.localDescription.sdp, None)
    schedule = None if honor_pli else KeyframeSchedule(transceiver.sender, interval)
    await pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
    if not await wait_connected(pc, CONNECT_TIMEOUT):
        raise RuntimeError("the publisher did not connect")
    return pc, schedule, session.location


async def _periodic_keyframes(pc: RTCPeerConnection, interval: float) -> None:
    """--honor-pli: aiortc answers PLIs by itself; add the periodic keyframes on top."""
    sender = pc.getTransceivers()[0].sender
    while True:
        await asyncio.sleep(interval)
        sender._send_keyframe()


async def _first_frame(track: MediaStreamTrack, done: asyncio.Future[float]) -> None:
    try:
        await track.recv()
    except MediaStreamError:
        return
    if not done.done():
        done.set_result(time.monotonic())
    while True:  # keep draining: aiortc's frame queue is unbounded
        try:
            await track.recv()
        except MediaStreamError:
            return


class FrameViewer:
    """One WHEP viewer; with `decode`, it times its first decoded video frame."""

    def __init__(self, decode: bool = True) -> None:
        self.pc = new_pc()
        self.pc.addTransceiver("video", direction="recvonly")
        if not decode:
            adapter.stop_decoders(self.pc)  # ballast: holds a session, decodes nothing
        self.first_frame: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.tasks: list[asyncio.Task[None]] = []
        self.location = ""
        self.server_ports: list[int] = []  # the answer's ICE candidate ports

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video" and decode:
                self.tasks.append(asyncio.ensure_future(_first_frame(track, self.first_frame)))

    async def open(self, http: aiohttp.ClientSession, url: str, room: str) -> dict[str, Any]:
        """POST, connect, wait for the first decoded frame; the viewer stays open."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        posted = time.monotonic()
        result: dict[str, Any] = {"ok": False}
        sdp = self.pc.localDescription.sdp
        try:
            session = await post_offer(http, endpoint(url, "whep", room), sdp, None)
            self.location = session.location
            self.server_ports = candidate_ports(session.answer)
            await self.pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
            if not await wait_connected(self.pc, CONNECT_TIMEOUT):
                result["error"] = "not connected"
                return result
            connected = time.monotonic()
            frame_at = await asyncio.wait_for(self.first_frame, FIRST_FRAME_TIMEOUT)
            result = {
                "ok": True,
                "from_post_ms": (frame_at - posted) * 1000,
                "from_connected_ms": (frame_at - connected) * 1000,
            }
        except TimeoutError:
            result["error"] = f"no frame within {FIRST_FRAME_TIMEOUT:g} s"
        return result

    async def connect_only(self, http: aiohttp.ClientSession, url: str, room: str) -> None:
        """POST and connect, no frame awaited (a ballast viewer)."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        sdp = self.pc.localDescription.sdp
        session = await post_offer(http, endpoint(url, "whep", room), sdp, None)
        self.location = session.location
        await self.pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
        if not await wait_connected(self.pc, CONNECT_TIMEOUT):
            raise RuntimeError("a ballast viewer did not connect")

    async def close(self, http: aiohttp.ClientSession) -> None:
        for task in self.tasks:
            task.cancel()
        await self.pc.close()
        if self.location:
            await delete_session(http, self.location, None)
            self.location = ""


async def _one_viewer(http: aiohttp.ClientSession, url: str, room: str) -> dict[str, Any]:
    viewer = FrameViewer()
    try:
        return await viewer.open(http, url, room)
    finally:
        await viewer.close(http)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in results if r["ok"]]
    return {
        "viewers": len(results),
        "decoded": len(ok),
        "errors": sorted({r.get("error", "") for r in results if not r["ok"]}),
        "from_post_ms": _percentiles([r["from_post_ms"] for r in ok]),
        "from_connected_ms": _percentiles([r["from_connected_ms"] for r in ok]),
    }


Joins = Callable[[aiohttp.ClientSession, str, random.Random], Awaitable[T]]


async def _in_live_room(url: str, options: argparse.Namespace, joins: Joins[T]) -> T:
    """Publish to a new room, let it go live, run `joins(http, room, rng)`, clean up."""
    room = "ttff-" + uuid.uuid4().hex[:8]
    rng = random.Random(options.seed)
    async with aiohttp.ClientSession() as http:
        publisher, schedule, location = await _publish(
            http, url, room, options.keyframe_interval, options.honor_pli
        )
        extra = None
        if options.honor_pli:
            extra = asyncio.ensure_future(_periodic_keyframes(publisher, options.keyframe_interval))
        try:
            await asyncio.sleep(options.keyframe_interval + 1.0)  # the room is live
            return await joins(http, room, rng)
        finally:
            if schedule is not None:
                schedule.stop()
            if extra is not None:
                extra.cancel()
            await publisher.close()
            await delete_session(http, location, None)


async def _measure(url: str, options: argparse.Namespace) -> dict[str, Any]:
    async def joins(
        http: aiohttp.ClientSession, room: str, rng: random.Random
    ) -> list[dict[str, Any]]:
        results = []
        for _ in range(options.viewers):
            # Join at a random moment of the keyframe cycle.
            await asyncio.sleep(rng.uniform(0.2, options.keyframe_interval))
            results.append(await _one_viewer(http, url, room))
        return results

    return _summary(await _in_live_room(url, options, joins))


def _worker_of(ports: list[int], workers: dict[int, str]) -> str:
    """The worker (id) whose process holds the UDP port of these ICE candidates."""
    owners = udp_port_owners(list(workers))
    found = {workers[owners[port]] for port in ports if port in owners}
    return found.pop() if len(found) == 1 else "unknown"


async def _room_home(http: aiohttp.ClientSession, url: str, room: str) -> str:
    async with http.get(f"{url}/api/rooms") as response:
        rooms = await response.json()
    home = next((r.get("home") for r in rooms if r.get("name") == room), None)
    if not home:
        raise RuntimeError(f"/api/rooms names no home for {room}: {rooms}")
    return str(home)


async def _measure_spread(
    url: str, options: argparse.Namespace, workers: dict[int, str]
) -> dict[str, Any]:
    """The spread mode's cycles (module docstring): per kind of join, the summary."""

    async def joins(http: aiohttp.ClientSession, room: str, rng: random.Random) -> dict[str, Any]:
        home = await _room_home(http, url, room)
        results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in SPREAD_KINDS}
        misplaced = 0

        async def measured(expected: str) -> FrameViewer:
            nonlocal misplaced
            await asyncio.sleep(rng.uniform(0.2, options.keyframe_interval))
            viewer = FrameViewer()
            try:
                result = await viewer.open(http, url, room)
            except BaseException:
                await viewer.close(http)
                raise
            worker = result["worker"] = _worker_of(viewer.server_ports, workers)
            kind = "home" if worker == home else expected if expected != "home" else "edge"
            misplaced += kind != expected
            results[kind].append(result)
            return viewer

        for _ in range(options.viewers):
            first = await measured("edge_first")  # stays open: the edge now serves the room
            try:
                await (await measured("home")).close(http)
                ballast = FrameViewer(decode=False)
                try:
                    await ballast.connect_only(http, url, room)  # to the home (a tie)
                    await (await measured("edge")).close(http)
                finally:
                    await ballast.close(http)
            finally:
                await first.close(http)
            await asyncio.sleep(1.0)  # the edge leaves the room before the next first viewer
        return {
            "home_worker": home,
            "misplaced": misplaced,
            "kinds": {kind: _summary(results[kind]) for kind in SPREAD_KINDS},
        }

    return await _in_live_room(url, options, joins)


def _gateway_args(instant_start: bool) -> list[str]:
    args = ["--bind-addresses", "127.0.0.1", "--log-level", "warning"]
    return args + ["--instant-start", "true" if instant_start else "false"]


def _run_mode(instant_start: bool, options: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    gateway = start_gateway(log_dir, workers=1, args=_gateway_args(instant_start))
    try:
        return asyncio.run(_measure(gateway.url, options))
    finally:
        gateway.stop()


def _registered_workers(gateway: GatewayProcess, token: str, count: int) -> dict[int, str]:
    """{pid: worker id} once `count` local workers run and have registered."""
    deadline = time.monotonic() + 30
    while True:
        request = urllib.request.Request(f"{gateway.url}/api/admin/workers")
        request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                listed = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError):
            listed = []
        pids = worker_pids(gateway)
        if len(listed) >= count and len(pids) >= count:
            return {pid: worker_id_of(pid) for pid in pids}
        if time.monotonic() > deadline or gateway.process.poll() is not None:
            raise RuntimeError(f"{count} workers did not register:\n{gateway.log(2000)}")
        time.sleep(0.1)


def _run_spread(options: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    token = secrets.token_hex(16)
    env = {"SPREAD_ROOMS": "true", "SPREAD_THRESHOLD": "1", "ADMIN_TOKEN": token}
    gateway = start_gateway(log_dir, workers=SPREAD_WORKERS, args=_gateway_args(True), env=env)
    try:
        workers = _registered_workers(gateway, token, SPREAD_WORKERS)
        return asyncio.run(_measure_spread(gateway.url, options, workers))
    finally:
        gateway.stop()


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:7.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.first_frame", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--viewers",
        type=int,
        default=24,
        help="viewers per mode; with --mode spread, joins of each kind (24)",
    )
    parser.add_argument(
        "--keyframe-interval", type=float, default=2.5, help="publisher keyframe period, s (2.5)"
    )
    parser.add_argument(
        "--honor-pli", action="store_true", help="the publisher answers keyframe requests"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the join times (1)")
    parser.add_argument(
        "--mode",
        choices=("both", "on", "off", "spread"),
        default="both",
        help="INSTANT_START modes; spread: 2 workers, home against edge viewers",
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    options = parser.parse_args(argv)
    if options.viewers < 1 or options.keyframe_interval <= 0:
        parser.error("--viewers must be >= 1 and --keyframe-interval > 0")
    modes = {"both": [True, False], "on": [True], "off": [False], "spread": []}[options.mode]
    report: dict[str, Any] = {
        "keyframe_interval_s": options.keyframe_interval,
        "publisher_honors_pli": options.honor_pli,
        "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="first-frame-") as log_dir:
        for instant_start in modes:
            name = "instant_start_on" if instant_start else "instant_start_off"
            report["modes"][name] = _run_mode(instant_start, options, Path(log_dir))
        if options.mode == "spread":
            spread = report["spread"] = _run_spread(options, Path(log_dir))
            for kind, summary in spread["kinds"].items():
                report["modes"][f"spread_{kind}"] = summary
    print(
        f"time to first decoded frame, ms (keyframe every {options.keyframe_interval:g} s, "
        f"publisher {'answers' if options.honor_pli else 'ignores'} PLI)"
    )
    print(f"{'mode':18} {'viewers':>8} {'post p50':>9} {'p95':>7} {'conn p50':>9} {'p95':>7}")
    complete = True
    for name, result in report["modes"].items():
        post, conn = result["from_post_ms"], result["from_connected_ms"]
        print(
            f"{name:18} {result['decoded']:>4}/{result['viewers']:<3} "
            f"{_format(post['p50']):>9} {_format(post['p95']):>7} "
            f"{_format(conn['p50']):>9} {_format(conn['p95']):>7}"
        )
        if result["errors"]:
            print(f"  errors: {', '.join(result['errors'])}")
        complete = complete and result["decoded"] == result["viewers"]
    if "spread" in report:
        spread = report["spread"]
        medians = {k: _format(v["from_post_ms"]["p50"]).strip() for k, v in spread["kinds"].items()}
        print(
            f"spread: home {spread['home_worker']}; medians from POST (ms): edge "
            f"{medians['edge']}, first on the edge {medians['edge_first']}, home "
            f"{medians['home']} (target: edge <= home); {spread['misplaced']} join(s) "
            "landed elsewhere than planned (counted where they landed)"
        )
    if options.json is not None:
        options.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
