"""The bare fan-out baseline: the most a single Python process can forward on this machine.

For each packet of one second of the load generator's media (bench/media.py, same sizes and
mix), and for each of N viewers: rewrite the viewer's RTP header in place (the same
preformatted header with a MID extension the SFU uses), SRTP-protect with pylibsrtp under
the profile the live run negotiated, and sendto the viewer's UDP sink. Nothing else: no
event loop, no ICE, no feedback, no bookkeeping. Its packets per CPU-second are the
denominator of the forwarding efficiency.

The source packets are paced at the live run's inbound rate, and the sinks are uvloop
datagram endpoints in as many processes as the live run had viewer processes: the kernel
does the same delivery and wake-up work it does for real viewers, and only the sender's
CPU is counted.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

import pylibsrtp
import uvloop

from bench.media import VideoProfile, one_second_of_packets
from sfu.media.fanout import BYTE1_SEQ_TS_SSRC, header_template

# name -> (libsrtp profile, master key + salt bytes)
SRTP_PROFILES: dict[str, tuple[int, int]] = {
    "SRTP_AEAD_AES_256_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 32 + 12),
    "SRTP_AEAD_AES_128_GCM": (pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16 + 12),
    "SRTP_AES128_CM_SHA1_80": (pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16 + 14),
}
DEFAULT_SRTP_PROFILE = "SRTP_AEAD_AES_256_GCM"  # what two aiortc 1.16 peers agree on


def srtp_session(profile: str) -> pylibsrtp.Session:
    libsrtp_profile, key_length = SRTP_PROFILES.get(profile, SRTP_PROFILES[DEFAULT_SRTP_PROFILE])
    policy = pylibsrtp.Policy(
        key=os.urandom(key_length),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=libsrtp_profile,
    )
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return pylibsrtp.Session(policy=policy)


def sink_main(conn: Connection, count: int) -> None:
    """Bind `count` UDP sinks on loopback, send their addresses, count what arrives until
    told to stop. Each sink is a uvloop datagram endpoint, as a viewer's socket is, so the
    kernel wakes this process the way it wakes the viewer processes."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        received = [0]

        class Sink(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                received[0] += 1

        transports = []
        for _ in range(count):
            transport, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
            transports.append(transport)
        conn.send([t.get_extra_info("sockname") for t in transports])
        stop = asyncio.Event()
        loop.add_reader(conn.fileno(), stop.set)
        await stop.wait()
        conn.recv()
        conn.send(received[0])
        for transport in transports:
            transport.close()

    uvloop.run(main())


def bare_fanout_main(
    conn: Connection,
    addresses: list[tuple[str, int]],
    seconds: float,
    profile: str,
    inbound_pps: float,
    rooms: int = 1,
) -> None:
    """Fan the media out for `seconds` of wall time: with several rooms, the addresses are
    split into that many equal audiences and source packets go to each room in turn.

    Source packets are paced at `inbound_pps` (the live run's publisher rate, so that both
    pay the same wake-ups per source packet), or sent back to back when the loop cannot
    keep up or `inbound_pps` is 0.
    """
    packets = one_second_of_packets(VideoProfile())
    senders: list[tuple[Any, Any, tuple[str, int]]] = []
    for address in addresses:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        senders.append((srtp_session(profile).protect, sock.sendto, address))
    audience = max(1, len(senders) // rooms)
    audiences = [senders[i * audience : (i + 1) * audience] for i in range(rooms)]
    header = header_template(4, "0")
    pack_into = BYTE1_SEQ_TS_SSRC.pack_into
    sent = dropped = 0
    seq = 0
    start_wall = time.monotonic()
    start_cpu = time.process_time()
    deadline = start_wall + seconds
    interval = 1 / inbound_pps if inbound_pps > 0 else 0.0
    due = start_wall
    while time.monotonic() < deadline:
        for index, payload in enumerate(packets):
            if interval:
                due += interval
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            seq = (seq + 1) & 0xFFFF
            ssrc = 1000
            for protect, sendto, address in audiences[index % rooms]:
                pack_into(header, 1, 96, seq, seq * 3000, ssrc)
                try:
                    sendto(protect(bytes(header) + payload), address)
                    sent += 1
                except OSError:  # a full socket buffer: counted, as the SFU counts it
                    dropped += 1
                ssrc += 1
            if time.monotonic() >= deadline:
                break
    cpu = time.process_time() - start_cpu
    wall = time.monotonic() - start_wall
    conn.send(
        {
            "viewers": len(addresses),
            "rooms": rooms,
            "srtp_profile": profile if profile in SRTP_PROFILES else DEFAULT_SRTP_PROFILE,
            "packets": sent,
            "dropped": dropped,
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "paced_inbound_pps": round(inbound_pps),
            "pps": round(sent / wall),
            "pps_per_cpu_s": round(sent / cpu) if cpu > 0 else None,
            "mean_packet_bytes": round(sum(len(p) for p in packets) / len(packets) + len(header)),
        }
    )
