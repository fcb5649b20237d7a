"""The receive cost per datagram of the worker's ICE mux against one socket per session.

Both variants run in one invocation, alternating over `--runs` runs, with the same real
aioice objects: S sessions, each an `aioice.ice.Connection` (server side) whose
`StunProtocol` receives the datagrams, and S client UDP sockets on the bench's own thread.

* `per-session`: today's path without UDP_MUX_PORT: one socket per session, bound by
  `loop.create_datagram_endpoint(local_addr=(ip, 0))` as aioice does;
* `mux`: `IceMux` installed on the server loop (sfu/aiortc_adapter/mux.py): the same call
  gets a virtual transport over one shared socket; each client first sends one
  authenticated STUN Binding request (its route), then media.

Clients send 1200-byte RTP-shaped datagrams round-robin in paced batches. The server's
loop runs on its own thread; its CPU (`time.thread_time` on that thread) from the first to
the last datagram, divided by the datagrams received, is the per-datagram cost: the
kernel's receive, the loop's wake-ups, the demultiplexing and aioice's STUN test, up to
`Connection.data_received` (replaced by a counter in both variants, since what follows it
is identical). The egress side needs no bench: the mux's transport hands out the shared
socket's own `sendto`, so a forwarded packet costs the same system call either way.

Run: `.venv/bin/python -m bench.ice_mux --sessions 50,200 --datagrams 40000 --runs 3`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aioice.ice
import uvloop
from aioice import stun

from sfu.aiortc_adapter.mux import IceMux

HOST = "127.0.0.1"
RESULTS = Path(__file__).parent / "results"
T = TypeVar("T")


class Server:
    """A uvloop on a thread with S aioice sessions; counts what reaches them."""

    def __init__(self, sessions: int, mux: bool) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.received = 0
        self.cpu_start = 0.0
        self.cpu_end = 0.0
        self.expected = 0
        self.done = threading.Event()
        self.mux = IceMux([HOST], udp_port=0, tcp_port=None) if mux else None
        if self.mux is not None:
            self.run(self.mux.start(self.loop))
        self.connections: list[aioice.ice.Connection] = []
        self.ports: list[int] = []
        self.run(self._open(sessions))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)

    async def _open(self, sessions: int) -> None:
        for _ in range(sessions):
            connection = aioice.ice.Connection(ice_controlling=False)
            connection.data_received = self._count  # type: ignore[method-assign]
            await connection.get_component_candidates(component=1, addresses=[HOST])
            self.connections.append(connection)
            self.ports.append(connection._protocols[-1].transport.get_extra_info("sockname")[1])

    def _count(self, data: bytes, component: int) -> None:
        self.received += 1
        if self.received == 1:
            self.cpu_start = time.thread_time()
        if self.received >= self.expected:
            self.cpu_end = time.thread_time()
            self.done.set()

    def arm(self, expected: int) -> None:
        async def reset() -> None:
            self.received = 0
            self.expected = expected
            self.done.clear()

        self.run(reset())

    def finish(self) -> tuple[int, float]:
        async def read() -> tuple[int, float]:
            end = self.cpu_end if self.done.is_set() else time.thread_time()
            return self.received, end - self.cpu_start

        return self.run(read())

    def close(self) -> None:
        async def close_all() -> None:
            for connection in self.connections:
                await connection.close()
            if self.mux is not None:
                self.mux.close()

        self.run(close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def binding_request(connection: aioice.ice.Connection) -> bytes:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{connection.local_username}:bench"
    request.attributes["PRIORITY"] = 1
    request.attributes["ICE-CONTROLLING"] = 1
    request.add_message_integrity(connection.local_password.encode())
    request.add_fingerprint()
    return bytes(request)


def measure(sessions: int, datagrams: int, mux: bool, batch: int) -> dict[str, Any]:
    server = Server(sessions, mux)
    clients = []
    try:
        for connection, port in zip(server.connections, server.ports, strict=True):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((HOST, 0))
            sock.setblocking(True)
            if mux:
                sock.sendto(binding_request(connection), (HOST, port))
            clients.append((sock, port))
        time.sleep(0.2)  # routes made, responses sent
        server.arm(datagrams)
        payload = bytes([0x80, 96]) + os.urandom(1198)
        sent = 0
        started = time.perf_counter()
        while sent < datagrams:
            for _ in range(batch):
                sock, port = clients[sent % sessions]
                sock.sendto(payload, (HOST, port))
                sent += 1
            time.sleep(0.0005)  # paced: the receiver must keep up, a drop is not a saving
        server.done.wait(5)
        wall = time.perf_counter() - started
        received, cpu = server.finish()
    finally:
        for sock, _ in clients:
            sock.close()
        server.close()
    return {
        "variant": "mux" if mux else "per-session",
        "sessions": sessions,
        "sent": datagrams,
        "received": received,
        "cpu_s": cpu,
        "us_per_datagram": cpu / max(received, 1) * 1e6,
        "wall_s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ice_mux", description=__doc__)
    parser.add_argument("--sessions", default="50,200", help="comma list of session counts")
    parser.add_argument("--datagrams", type=int, default=40000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=20, help="datagrams per paced batch")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    table = [
        "| sessions | per-session µs/dgram | mux µs/dgram | mux / per-session | lost |",
        "| --- | --- | --- | --- | --- |",
    ]
    for sessions in [int(s) for s in args.sessions.split(",")]:
        runs: dict[str, list[dict[str, Any]]] = {"per-session": [], "mux": []}
        for run in range(args.runs):
            for mux in (run % 2 == 0, run % 2 != 0):
                result = measure(sessions, args.datagrams, mux, args.batch)
                runs[result["variant"]].append(result)
                rows.append(result)
        base = statistics.median(r["us_per_datagram"] for r in runs["per-session"])
        muxed = statistics.median(r["us_per_datagram"] for r in runs["mux"])
        lost = sum(r["sent"] - r["received"] for r in rows if r["sessions"] == sessions)
        table.append(f"| {sessions} | {base:.2f} | {muxed:.2f} | {muxed / base:.2f} | {lost} |")
    print("\n".join(table))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ice_mux-latest.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
