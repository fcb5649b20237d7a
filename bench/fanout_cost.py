"""Worker CPU per forwarded viewer-packet, measured on a real worker process.

One worker process registers with this script (which speaks the gateway's IPC protocol), a
publisher process sends VP8 (aiortc encoder, 640x360 at 30 fps) plus Opus, and N cheap
viewers in this process complete ICE and DTLS-SRTP like real clients but count packets
instead of decoding them. The worker's CPU comes from /proc/<pid>/stat (user + system), and
the packets it forwarded from its own heartbeat counters.

    python bench/fanout_cost.py --viewers 1 10 40 --seconds 10

Prints one JSON line per N and the marginal cost per viewer-packet between the smallest and
the largest N (which cancels the fixed per-inbound-packet cost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402

from ipc import messages as m  # noqa: E402
from ipc.channel import router_channel  # noqa: E402

PUBLISHER = """
import asyncio, sys
sys.path.insert(0, {root!r})
from tests.sfu.media import MovingPattern, new_pc
from aiortc.mediastreams import AudioStreamTrack
from aiortc import RTCSessionDescription
async def main():
    pc = new_pc()
    pc.addTransceiver(MovingPattern(640, 360), direction="sendonly")
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    print(pc.localDescription.sdp.replace("\\r\\n", "\\\\n"), flush=True)
    answer = sys.stdin.readline().strip().replace("\\\\n", "\\r\\n")
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def counting_viewer(offer_to_answer) -> tuple[RTCPeerConnection, list[int]]:  # type: ignore[no-untyped-def]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    answer = await offer_to_answer(pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    received = [0]
    dtls = pc.getTransceivers()[0].receiver.transport

    async def count(data: bytes, arrival_time_ms: int) -> None:
        received[0] += 1

    dtls._handle_rtp_data = count  # a viewer that accounts packets without decoding
    return pc, received


async def run(viewer_counts: list[int], seconds: float) -> list[dict[str, float]]:
    tmp = tempfile.mkdtemp()
    channel = router_channel([f"ipc://{tmp}/gateway.sock"])
    channel.start()
    heartbeats: list[m.Heartbeat] = []
    registered = asyncio.Event()

    async def serve(peer: bytes, body: m.Message) -> m.Message:
        if isinstance(body, m.Hello):
            registered.set()
            return m.Welcome(0.5)
        if isinstance(body, m.Heartbeat):
            heartbeats.append(body)
        return m.HeartbeatAck()

    channel.on_request = serve
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sfu",
            "--connect",
            f"ipc://{tmp}/gateway.sock",
            "--worker-id",
            "bench",
            "--bind-addresses",
            "127.0.0.1",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
    )
    publisher = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER.format(root=str(ROOT))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    results = []
    try:
        await asyncio.wait_for(registered.wait(), 20)
        assert publisher.stdout and publisher.stdin
        offer = publisher.stdout.readline().strip().replace("\\n", "\r\n")
        answer = await channel.request(
            m.OpenPublisher("bench", "pub", offer), peer=b"bench", timeout=10
        )
        assert isinstance(answer, m.SessionAnswer)
        publisher.stdin.write(answer.answer.replace("\r\n", "\\n") + "\n")
        publisher.stdin.flush()
        viewers: list[tuple[RTCPeerConnection, list[int]]] = []
        for target in viewer_counts:
            while len(viewers) < target:
                index = len(viewers)

                async def open_viewer(sdp: str, index: int = index) -> str:
                    reply = await channel.request(
                        m.OpenSubscriber("bench", f"v{index}", sdp), peer=b"bench", timeout=10
                    )
                    assert isinstance(reply, m.SessionAnswer)
                    return reply.answer

                viewers.append(await counting_viewer(open_viewer))
            await asyncio.sleep(3)  # let every viewer connect and the encoder settle
            start_cpu, start_wall = cpu_seconds(worker.pid), time.monotonic()
            start_out = heartbeats[-1].packets_out
            start_in = heartbeats[-1].packets_in
            start_rx = sum(r[0] for _, r in viewers)
            await asyncio.sleep(seconds)
            cpu, wall = cpu_seconds(worker.pid) - start_cpu, time.monotonic() - start_wall
            out = heartbeats[-1].packets_out - start_out
            inbound = heartbeats[-1].packets_in - start_in
            received = sum(r[0] for _, r in viewers) - start_rx
            results.append(
                {
                    "viewers": target,
                    "inbound_pps": inbound / wall,
                    "forwarded_pps": out / wall,
                    "viewer_received_pps": received / wall,
                    "worker_cpu_percent": 100 * cpu / wall,
                    "worker_cpu_us_per_forwarded_packet": 1e6 * cpu / out if out else float("nan"),
                }
            )
            print(json.dumps(results[-1]), flush=True)
        for pc, _ in viewers:
            await pc.close()
    finally:
        publisher.kill()
        worker.terminate()
        worker.wait(10)
        await channel.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", type=int, nargs="+", default=[1, 10, 40])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    results = asyncio.run(run(sorted(args.viewers), args.seconds))
    low, high = results[0], results[-1]
    if high["forwarded_pps"] > low["forwarded_pps"]:
        marginal = (
            (high["worker_cpu_percent"] - low["worker_cpu_percent"])
            / 100
            / (high["forwarded_pps"] - low["forwarded_pps"])
        )
        print(json.dumps({"marginal_worker_cpu_us_per_viewer_packet": round(marginal * 1e6, 2)}))


if __name__ == "__main__":
    main()
