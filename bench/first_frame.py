"""Time to first frame: how long a viewer joining a live room waits for its first picture.

    .venv/bin/python -m bench.first_frame                 # both modes, 24 viewers each
    .venv/bin/python -m bench.first_frame --viewers 40 --keyframe-interval 3 --json out.json

For each mode (INSTANT_START on, then off) it starts sfu-gateway with one worker, publishes
a 640x360 VP8 pattern over WHIP from an aiortc publisher that sends a keyframe every
--keyframe-interval seconds and, like OBS or ffmpeg, ignores keyframe requests (with
--honor-pli it answers them, like a browser). Viewers (aiortc, decoding) then join over
WHEP one after another, each at a random moment of the keyframe cycle, and measure:

* from_post: from sending the WHEP offer to the first decoded video frame (what a user
  sees: signalling, ICE, DTLS and the wait for a decodable picture);
* from_connected: from the connection being up to the first decoded frame (the media part).

It prints p50/p95 per mode and exits 0; a mode where some viewer never decoded a frame
exits 1. Figures from one run on a shared 2-core VM are indicative; compare modes within
the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from testkit.client import delete_session, endpoint, new_pc, post_offer, wait_connected
from testkit.media import KeyframeSchedule, PatternVideoTrack
from testkit.processes import start_gateway

CONNECT_TIMEOUT = 20.0
FIRST_FRAME_TIMEOUT = 20.0


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


async def _one_viewer(http: aiohttp.ClientSession, url: str, room: str) -> dict[str, Any]:
    pc = new_pc()
    pc.addTransceiver("video", direction="recvonly")
    loop = asyncio.get_running_loop()
    first_frame: asyncio.Future[float] = loop.create_future()
    tasks: list[asyncio.Task[None]] = []

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "video":
            tasks.append(asyncio.ensure_future(_first_frame(track, first_frame)))

    await pc.setLocalDescription(await pc.createOffer())
    posted = time.monotonic()
    result: dict[str, Any] = {"ok": False}
    location = ""
    try:
        session = await post_offer(http, endpoint(url, "whep", room), pc.localDescription.sdp, None)
        location = session.location
        await pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
        if not await wait_connected(pc, CONNECT_TIMEOUT):
            result["error"] = "not connected"
            return result
        connected = time.monotonic()
        frame_at = await asyncio.wait_for(first_frame, FIRST_FRAME_TIMEOUT)
        result = {
            "ok": True,
            "from_post_ms": (frame_at - posted) * 1000,
            "from_connected_ms": (frame_at - connected) * 1000,
        }
    except TimeoutError:
        result["error"] = f"no frame within {FIRST_FRAME_TIMEOUT:g} s"
    finally:
        for task in tasks:
            task.cancel()
        await pc.close()
        if location:
            await delete_session(http, location, None)
    return result


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None}
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


async def _measure(url: str, options: argparse.Namespace) -> dict[str, Any]:
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
            results = []
            for _ in range(options.viewers):
                # Join at a random moment of the keyframe cycle.
                await asyncio.sleep(rng.uniform(0.2, options.keyframe_interval))
                results.append(await _one_viewer(http, url, room))
        finally:
            if schedule is not None:
                schedule.stop()
            if extra is not None:
                extra.cancel()
            await publisher.close()
            await delete_session(http, location, None)
    ok = [r for r in results if r["ok"]]
    return {
        "viewers": len(results),
        "decoded": len(ok),
        "errors": sorted({r.get("error", "") for r in results if not r["ok"]}),
        "from_post_ms": _percentiles([r["from_post_ms"] for r in ok]),
        "from_connected_ms": _percentiles([r["from_connected_ms"] for r in ok]),
    }


def _run_mode(instant_start: bool, options: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    args = ["--bind-addresses", "127.0.0.1", "--log-level", "warning"]
    args += ["--instant-start", "true" if instant_start else "false"]
    gateway = start_gateway(log_dir, workers=1, args=args)
    try:
        return asyncio.run(_measure(gateway.url, options))
    finally:
        gateway.stop()


def _format(value: float | None) -> str:
    return "-" if value is None else f"{value:7.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.first_frame", description=__doc__.split("\n")[0])
    parser.add_argument("--viewers", type=int, default=24, help="viewers per mode (24)")
    parser.add_argument(
        "--keyframe-interval", type=float, default=2.5, help="publisher keyframe period, s (2.5)"
    )
    parser.add_argument(
        "--honor-pli", action="store_true", help="the publisher answers keyframe requests"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the join times (1)")
    parser.add_argument(
        "--mode", choices=("both", "on", "off"), default="both", help="INSTANT_START modes"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    options = parser.parse_args(argv)
    if options.viewers < 1 or options.keyframe_interval <= 0:
        parser.error("--viewers must be >= 1 and --keyframe-interval > 0")
    modes = {"both": [True, False], "on": [True], "off": [False]}[options.mode]
    report: dict[str, Any] = {
        "keyframe_interval_s": options.keyframe_interval,
        "publisher_honors_pli": options.honor_pli,
        "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="first-frame-") as log_dir:
        for instant_start in modes:
            name = "instant_start_on" if instant_start else "instant_start_off"
            report["modes"][name] = _run_mode(instant_start, options, Path(log_dir))
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
    if options.json is not None:
        options.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
