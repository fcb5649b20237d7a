"""Time to connect over UDP and ICE-TCP, in the namespaces of testkit/netns.py (issue 16's
figure). Not a test: run it by hand, as root, from the repository root:

    .venv/bin/python -m tests.network.measure_connect --rounds 3

One gateway (2 workers, UDP_MUX_PORT and TCP_MUX_PORT, the server firewalled to those ports
and HTTP, a STUN server on the public LAN), an aiortc publisher in natc1, then per round:
* aiortc viewer in natc2 (UDP mux): POST to first decoded frame (its first_frame_ms);
* Chromium player (play.html) in natc2 (UDP) and in blk (UDP dropped: ICE-TCP): the answer
  applied to "connected" (ICE + DTLS) and the RTCPeerConnection's creation to "connected"
  (gathering and HTTP included).
Prints one JSON line per sample and a summary (median, min, max) per path.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from testkit import client
from testkit.netns import UDP_BLOCKED, Topology, unavailable
from testkit.processes import REPO, child_env
from tests.network.conftest import HTTP_PORT, WORKERS, mux_env, mux_ports

CHROMIUM_PEER = REPO / "tests" / "network" / "chromium_peer.py"


def _last_json(out: str) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.strip().startswith("{")]
    data: dict[str, Any] = json.loads(lines[-1]) if lines else {"ok": False, "error": "no output"}
    return data


def measure(rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}

    def add(path: str, value: float | None) -> None:
        if value is not None:
            samples.setdefault(path, []).append(float(value))

    with Topology() as net, tempfile.TemporaryDirectory() as tmp:
        env = {**mux_env(), "STUN_URLS": net.start_stun_server()}
        gateway = net.start_gateway(Path(tmp), http_port=HTTP_PORT, workers=WORKERS, env=env)
        net.firewall_server_allow_only(mux_ports(), mux_ports(), HTTP_PORT)
        room = "m-" + uuid.uuid4().hex[:8]
        publish = client.command("publish", gateway.url, room, "--seconds", "600", "--fps", "15")
        net.run("natc1", publish, env=child_env(), stdout=subprocess.DEVNULL)
        for index in range(rounds):
            view = client.command(
                "view", gateway.url, room, "--seconds", "10", "--stop-when-satisfied",
                "--min-video-frames", "1", "--min-audio-frames", "1",
            )  # fmt: skip
            result = _last_json(
                subprocess.run(
                    net.argv("natc2", view), capture_output=True, text=True, timeout=60,
                    env=child_env(), cwd=REPO,
                ).stdout
            )  # fmt: skip
            print(
                json.dumps({"path": "aiortc udp", "first_frame_ms": result.get("first_frame_ms")})
            )
            add("aiortc udp mux: POST to first frame", result.get("first_frame_ms"))
            for host, transport in (("natc2", "udp"), (UDP_BLOCKED, "tcp")):
                argv = [sys.executable, str(CHROMIUM_PEER), "play", "--url", gateway.url]
                argv += ["--room", room, "--profile-dir", f"{tmp}/chromium-{host}-{index}"]
                argv += ["--min-frames", "1", "--seconds", "20"]
                result = _last_json(
                    subprocess.run(
                        net.argv(host, argv), capture_output=True, text=True, timeout=90,
                        env=child_env(), cwd=REPO,
                    ).stdout
                )  # fmt: skip
                pair = ((result.get("pair") or {}).get("local") or {}).get("protocol")
                keys = ("answer_to_connected_ms", "connect_ms", "gathered_ms", "first_frame_ms")
                print(json.dumps({"path": f"chromium {transport}", "pair": pair,
                                  **{k: result.get(k) for k in keys}}))  # fmt: skip
                if pair == transport:
                    add(f"chromium {transport}: answer to connected", result.get(keys[0]))
                    add(f"chromium {transport}: pc made to connected", result.get(keys[1]))
        gateway.stop()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reason = unavailable()
    if reason is not None:
        print(f"cannot measure: {reason}", file=sys.stderr)
        return 2
    samples = measure(max(1, min(args.rounds, 20)))
    for path, values in samples.items():
        print(
            f"{path}: median {statistics.median(values):.0f} ms, min {min(values):.0f}, "
            f"max {max(values):.0f} (n={len(values)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
