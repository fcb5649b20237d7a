"""A WHEP viewer (the aiortc pieces of testkit/client.py) that a test runs inside a network
namespace and steers through stdin, counting decoded frames at each step; it also tries to
steal its own session from another address. For tests/network/test_hostile.py:

    watch_viewer.py --url http://10.77.0.1:8080 --room r1

1. connects and waits for its first 10 video frames; prints {"step": "ready", ...} with the
   frame counts and the server's candidates;
2. sends, from new sockets (same host, so the same NAT address with new ports), STUN Binding
   requests with the session's real USERNAME (server ufrag : our ufrag), USE-CANDIDATE and a
   high priority, but a MESSAGE-INTEGRITY made with a wrong password, followed by RTP-looking
   datagrams: a mux that moved the session to an address on such a request (without checking
   the integrity) would hand the session to an attacker;
   (--no-spoof: not);
3. reads one line from stdin (the test's hostile burst from other hosts is over), notes the
   frames, watches for --after seconds more, DELETEs the session and prints the final JSON
   line: frames at each step, connection state, spoofed datagrams sent, and "timeline":
   [time.monotonic(), video frames] every 0.25 s from step 2 on (the same clock as the
   test's: CLOCK_MONOTONIC is system-wide). --end-after-frames N ends step 3 as soon as N
   more video frames came.

All waits are bounded (--connect-timeout, --stdin-timeout, --after).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import socket
import struct
import sys
import time
import zlib
from typing import Any

import aiohttp
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from testkit.client import (
    _consume,
    _Counters,
    delete_session,
    endpoint,
    new_pc,
    post_offer,
    viewer_offer,
    wait_connected,
)

COOKIE = 0x2112A442


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def forged_binding(username: str) -> bytes:
    """A Binding request with USERNAME, PRIORITY, ICE-CONTROLLING, USE-CANDIDATE, a
    MESSAGE-INTEGRITY keyed with a wrong password and a correct FINGERPRINT."""
    attrs = b"".join(
        [
            _attr(0x0006, username.encode()),
            _attr(0x0024, struct.pack("!I", 0x7FFFFFFF)),
            _attr(0x802A, os.urandom(8)),
            _attr(0x0025, b""),
        ]
    )
    tid = os.urandom(12)
    # MESSAGE-INTEGRITY covers the header with the length up to and including itself.
    head = struct.pack("!HHI", 0x0001, len(attrs) + 24, COOKIE) + tid
    mac = hmac.new(b"not-the-password", head + attrs, hashlib.sha1).digest()
    body = attrs + _attr(0x0008, mac)
    head = struct.pack("!HHI", 0x0001, len(body) + 8, COOKIE) + tid
    crc = (zlib.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
    return head + body + _attr(0x8028, struct.pack("!I", crc))


def _sdp_value(sdp: str, prefix: str) -> str:
    return next(line[len(prefix) :].strip() for line in sdp.splitlines() if line.startswith(prefix))


def udp_candidates(sdp: str) -> list[tuple[str, int]]:
    """(address, port) of the UDP candidates of an SDP."""
    found = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if parts[2].lower() == "udp":
                found.append((parts[4], int(parts[5])))
    return sorted(set(found))


def spoof(username: str, targets: list[tuple[str, int]], rounds: int = 30) -> int:
    """Forged bindings then RTP-looking datagrams to each target from 3 new sockets."""
    sent = 0
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for i in range(rounds):
            for sock in socks:
                for target in targets:
                    sock.sendto(forged_binding(username), target)
                    rtp = struct.pack("!BBHII", 0x80, 96, i, i * 3000, 0x12345678)
                    sock.sendto(rtp + os.urandom(200), target)
                    sent += 2
            time.sleep(0.01)
    finally:
        for sock in socks:
            sock.close()
    return sent


async def _read_line(timeout: float) -> str:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.run_in_executor(None, sys.stdin.readline), timeout)


async def watch(args: argparse.Namespace) -> dict[str, Any]:
    pc = new_pc()
    counters = _Counters()
    tasks: list[asyncio.Task[None]] = []
    result: dict[str, Any] = {"ok": False}
    first_frames = asyncio.Event()
    enough = asyncio.Event()  # --end-after-frames reached
    end_at: list[int] = []  # the video frame count that sets `enough`, once known

    def on_frame() -> None:
        if counters.video_frames >= 10:
            first_frames.set()
        if end_at and counters.video_frames >= end_at[0]:
            enough.set()

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        tasks.append(asyncio.ensure_future(_consume(track, counters, on_frame)))

    def frames() -> dict[str, int]:
        return {"video": counters.video_frames, "audio": counters.audio_frames}

    try:
        offer = await viewer_offer(pc)
        async with aiohttp.ClientSession() as http:
            session = await post_offer(
                http, endpoint(args.url, "whep", args.room), offer, None, retry_404_for=10.0
            )
            await pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
            result["connected"] = await wait_connected(pc, args.connect_timeout)
            try:
                await asyncio.wait_for(first_frames.wait(), args.connect_timeout)
            except TimeoutError:
                pass
            result["frames_ready"] = frames()
            targets = udp_candidates(session.answer)
            username = (
                f"{_sdp_value(session.answer, 'a=ice-ufrag:')}:"
                f"{_sdp_value(pc.localDescription.sdp, 'a=ice-ufrag:')}"
            )
            if args.spoof:
                result["spoofed"] = await asyncio.get_running_loop().run_in_executor(
                    None, spoof, username, targets
                )
            result["frames_spoofed"] = frames()
            timeline: list[tuple[float, int]] = []
            result["timeline"] = timeline

            async def sample() -> None:
                while True:
                    timeline.append((round(time.monotonic(), 3), counters.video_frames))
                    await asyncio.sleep(0.25)

            tasks.append(asyncio.ensure_future(sample()))
            print(json.dumps({**result, "step": "ready", "targets": targets}), flush=True)
            try:
                await _read_line(args.stdin_timeout)
            except TimeoutError:
                result["note"] = "no word from the test; went on"
            result["frames_burst_done"] = frames()
            if args.end_after_frames:
                end_at.append(counters.video_frames + args.end_after_frames)
            try:
                await asyncio.wait_for(enough.wait(), args.after)
            except TimeoutError:
                pass
            # The last frames may have come since the last sample (a jitter buffer that
            # overflowed hands over a burst at once): the timeline ends with them.
            timeline.append((round(time.monotonic(), 3), counters.video_frames))
            result["frames_end"] = frames()
            result["state_end"] = pc.connectionState
            result["delete_status"] = await delete_session(http, session.location, None)
    finally:
        await pc.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result["ok"] = bool(result.get("connected")) and result["state_end"] == "connected"
    result["step"] = "final"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--room", required=True)
    parser.add_argument("--connect-timeout", type=float, default=15.0)
    parser.add_argument("--stdin-timeout", type=float, default=30.0)
    parser.add_argument("--after", type=float, default=3.0)
    parser.add_argument(
        "--end-after-frames",
        type=int,
        default=0,
        help="end step 3 early once this many more video frames came (0: watch --after s)",
    )
    parser.add_argument(
        "--no-spoof", dest="spoof", action="store_false", help="skip step 2 (forged bindings)"
    )
    args = parser.parse_args()
    try:
        result = asyncio.run(watch(args))
    except Exception as exc:  # the test reads the JSON line: report, never a bare traceback
        result = {"ok": False, "step": "final", "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
