"""The mux survives hostile traffic to its ports while a session is live (issue 16).

While natc1 publishes and natc2 views on the mux (tests/network/watch_viewer.py, which counts
frames at each step): the viewer's own host sends STUN bindings with the session's real
USERNAME but a wrong MESSAGE-INTEGRITY, and RTP, from new ports (a hijack attempt from the
same NAT address); then three hosts (the public one and both NAT'ed ones) send random
datagrams, STUN binding requests with unknown usernames (well formed, correct FINGERPRINT),
a STUN response nobody asked for, truncated STUN, RTP/RTCP/DTLS-looking datagrams, and on the
TCP port: garbage, RFC 4571 frames with absurd lengths, idle connections. The live viewer's
frame count keeps growing during and after the burst, the workers stay the same processes,
and a new viewer connects after it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testkit.netns import PUBLIC_CLIENT, SERVER_ADDRESS, Topology
from testkit.processes import REPO, child_env, worker_pids
from tests.network.conftest import (
    HTTP_PORT,
    WORKERS,
    mux_drops,
    mux_env,
    mux_ports,
    new_room,
    read_step,
    require_mux,
)
from tests.support.clients import PeerProcess

FPS = 15
PUBLISH_ARGS = ["--fps", str(FPS), "--width", "320", "--height", "180"]
AFTER = 2.0  # seconds the live viewer watches after the hostile burst
WATCH_VIEWER = REPO / "tests" / "network" / "watch_viewer.py"

# Sends the hostile traffic to every mux port (argv: address, first port, count, seed); prints
# what it sent. Bounded: a fixed number of datagrams, and a TCP phase of a few seconds.
HOSTILE = r"""
import os, random, socket, struct, sys, time, zlib
address, first, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
sent = {}

def note(kind):
    sent[kind] = sent.get(kind, 0) + 1

def attr(kind, value):
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)

def stun(kind, attrs):
    body = b"".join(attrs) + attr(0x0008, os.urandom(20))  # bogus MESSAGE-INTEGRITY
    tid = os.urandom(12)
    head = struct.pack("!HHI", kind, len(body) + 8, 0x2112A442) + tid
    crc = (zlib.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
    return head + body + attr(0x8028, struct.pack("!I", crc))

def binding():
    user = f"{rng.getrandbits(32):08x}:{rng.getrandbits(32):08x}".encode()
    attrs = [attr(0x0006, user), attr(0x0024, struct.pack("!I", rng.getrandbits(31))),
             attr(0x802A, os.urandom(8))]
    if rng.random() < 0.5:
        attrs.append(attr(0x0025, b""))  # USE-CANDIDATE
    return stun(0x0001, attrs)

def rtp(rtcp=False):
    if rtcp:
        return struct.pack("!BBHI", 0x81, 200, 6, rng.getrandbits(32)) + os.urandom(20)
    pt = rng.choice([96, 97, 102, 111, 127])
    return struct.pack("!BBHII", 0x80, pt | (0x80 if rng.random() < 0.1 else 0),
                       rng.getrandbits(16), rng.getrandbits(32), rng.getrandbits(32)
                       ) + os.urandom(rng.randrange(0, 1200))

makers = [
    ("random", lambda: os.urandom(rng.randrange(1, 1500))),
    ("empty", lambda: b""),
    ("stun_unknown_user", binding),
    ("stun_response", lambda: stun(0x0101, [attr(0x0020, os.urandom(8))])),
    ("stun_truncated", lambda: binding()[: rng.randrange(1, 40)]),
    ("rtp", rtp),
    ("rtcp", lambda: rtp(rtcp=True)),
    ("dtls", lambda: bytes([22, 254, 253]) + os.urandom(rng.randrange(10, 300))),
]
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
for i in range(count):
    name, make = makers[i % len(makers)]
    sock = socks[i % len(socks)]
    for port in range(first, first + int(sys.argv[5])):
        try:
            sock.sendto(make(), (address, port))
            note(name)
        except OSError as exc:
            note("error_" + type(exc).__name__)
    if i % 50 == 0:
        time.sleep(0.01)

# TCP: garbage, absurd RFC 4571 lengths, a STUN binding framed, connections left idle.
idle = []
for port in range(first, first + int(sys.argv[5])):
    for payload in (os.urandom(3000), b"\xff\xff" + os.urandom(100), b"\x00\x00",
                    struct.pack("!H", 60) + binding(), b"GET / HTTP/1.1\r\n\r\n"):
        try:
            conn = socket.create_connection((address, port), timeout=2)
            conn.sendall(payload)
            note("tcp_sent")
            idle.append(conn)
        except OSError as exc:
            note("tcp_error_" + type(exc).__name__)
time.sleep(1.0)
for conn in idle:
    conn.close()
print(" ".join(f"{k}={v}" for k, v in sorted(sent.items())), flush=True)
"""


def test_mux_survives_hostile_datagrams(
    net: Topology, net_peer: Callable[..., PeerProcess], log_dir: Path
) -> None:
    require_mux()
    gateway = net.start_gateway(log_dir, http_port=HTTP_PORT, workers=WORKERS, env=mux_env())
    net.firewall_server_allow_only(mux_ports(), mux_ports(), HTTP_PORT)
    workers_before = worker_pids(gateway)
    room = new_room()
    publisher = net_peer("natc1", "publish", gateway.url, room, "--seconds", "60", *PUBLISH_ARGS)
    argv = [sys.executable, str(WATCH_VIEWER), "--url", gateway.url, "--room", room]
    argv += ["--after", str(AFTER)]
    watcher: subprocess.Popen[str] = net.run(
        "natc2", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=child_env(),
    )  # fmt: skip
    ready = read_step(watcher, "ready", 40)
    assert ready.get("step") == "ready", f"{ready}\n{gateway.log(4000)}"
    burst_started = time.monotonic()
    senders = []
    for seed, host in enumerate((PUBLIC_CLIENT, "natc1", "natc2")):
        hostile = [sys.executable, "-c", HOSTILE, SERVER_ADDRESS, str(mux_ports()[0]), "300"]
        hostile += [str(seed), str(len(mux_ports()))]
        senders.append(
            (host, net.run(host, hostile, stdout=subprocess.PIPE, text=True, env=child_env()))
        )
    sent = {}
    for host, sender in senders:
        out, _ = sender.communicate(timeout=30)
        sent[host] = out.strip()
    burst_s = time.monotonic() - burst_started
    out, err = watcher.communicate("done\n", timeout=AFTER + 30)
    lines = [line for line in out.splitlines() if line.strip().startswith("{")]
    assert lines, f"the watching viewer printed nothing:\n{err[-3000:]}"
    seen: dict[str, Any] = json.loads(lines[-1])
    # Another viewer after all that: the worker still opens and connects sessions.
    after = net_peer(
        PUBLIC_CLIENT, "view", gateway.url, room, "--seconds", "8", "--min-video-frames", "5",
        "--min-audio-frames", "5", "--stop-when-satisfied",
    ).result(timeout=40)  # fmt: skip
    publisher.process.terminate()
    workers_after = worker_pids(gateway)
    drops = mux_drops(net, gateway.url, "unknown_username")

    def video(step: str) -> int:
        return int((seen.get(step) or {}).get("video", 0))

    during_burst = video("frames_burst_done") - video("frames_spoofed")
    after_burst = video("frames_end") - video("frames_burst_done")
    report = (
        f"live viewer (natc2): {seen.get('error') or ''} frames at ready/spoofed/burst done/end"
        f" = {video('frames_ready')}/{video('frames_spoofed')}/{video('frames_burst_done')}/"
        f"{video('frames_end')} ({during_burst} during the {burst_s:.1f} s burst, {after_burst}"
        f" in the {AFTER:g} s after; {FPS} fps sent), state {seen.get('state_end')}; "
        f"forged bindings + RTP with its own username from new ports: {seen.get('spoofed')}; "
        f"hostile from other hosts: {sent}; viewer after it all: ok={after.get('ok')} "
        f"video_frames={after.get('video_frames')} first_frame_ms={after.get('first_frame_ms')}; "
        f"workers {sorted(workers_before)} -> {sorted(workers_after)}; "
        f"live_worker_ice_mux_dropped: {drops}"
    )
    print(report)
    failure = f"{report}\n{gateway.log(4000)}"
    assert seen.get("ok"), failure
    assert during_burst >= 0.5 * FPS * burst_s, failure
    assert after_burst >= 0.6 * FPS * AFTER, failure
    assert after["ok"], failure
    assert workers_after == workers_before, f"a worker died or was replaced: {failure}"
    assert gateway.process.poll() is None, gateway.log(4000)
    # What the mux refused is counted (reported with the workers' heartbeats): at least the
    # binding requests for usernames no session has.
    assert drops.get("unknown_username", 0) > 0, f"not counted: {failure}"
    # The forged bindings with the live session's own username were refused as such.
    assert drops.get("bad_integrity", 0) > 0, f"forged bindings not counted: {failure}"
