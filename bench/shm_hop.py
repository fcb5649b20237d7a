"""The cross-process RTP hop: the shared-memory ring (ipc/shm) against sockets and ZeroMQ.

One writer process sends packets of `--size` bytes in seeded random bursts of 5-10 at
`--rate` packets/s to R reader processes (forked, each on its own uvloop loop), for a window
of `--seconds` per variant. Every variant runs in one invocation, in an order rotated on each
of `--runs` runs, and each cell reports min/median over the runs, so that a noisy machine
shows as spread rather than as a wrong ranking.

Variants:

* `null`: no IPC and no readers: the writer's pacing loop alone (the baseline subtracted
  from every other variant's writer CPU);
* `shm-eventfd-burst`: `RingWriter.write` per packet; the first write of a loop turn
  schedules (`loop.call_soon`) one `Doorbell.ring` per reader; readers `add_reader` their
  eventfd, `clear` it and `RingReader.drain`;
* `shm-eventfd-packet`: the same, the doorbells rung after every packet;
* `shm-poll-1ms`: no doorbell, readers drain on a 1 ms timer;
* `unix-dgram`: an AF_UNIX SOCK_DGRAM socketpair per reader, non-blocking, one datagram
  per packet per reader (a full socket is a writer-side drop);
* `udp`: one datagram per packet per reader to a loopback UDP socket per reader;
* `zmq`: one pyzmq PUSH socket per reader over ipc://, the reader's PULL socket's FD
  watched with `add_reader` and drained until `zmq.Again`.

Figures (µs unless named otherwise):

* writer CPU/pkt: the writer process's CPU (`time.process_time`, all threads: ZeroMQ's
  I/O thread included) over the window / packets sent;
* writer IPC/pkt: the same minus the `null` variant's of the same run and reader count;
  IPC per reader: that / R; hop/pkt/reader: IPC per reader + reader CPU/pkt;
* reader CPU/pkt: the readers' process CPU from the window's start until they are told to
  stop (the writer's last packet plus 0.1 s) / packets they received (wake-ups included,
  and the bench's own bookkeeping: a clock read, a stamp read and an append per packet,
  alike in every variant);
* pkts/wake: packets received / reader callbacks run (a doorbell, a readable socket, a
  poll tick: each is one wake of the loop);
* latency p50/p99: the reader's `time.monotonic_ns()` at delivery minus the writer's stamp
  (the ring's own `arrival_ns`; for sockets, a stamp in the payload), pooled over readers;
* lost: packets sent x R - packets received (writer-side drops included; `drops` counts
  those alone).

Run: `.venv/bin/python -m bench.shm_hop --readers 1,3 --rate 3000 --seconds 1.5 --runs 3`;
one markdown table per reader count on stdout, JSON in bench/results/shm_hop-latest.json.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import importlib.metadata
import json
import multiprocessing
import os
import platform
import random
import socket
import statistics
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import uvloop
import zmq

from ipc.shm.link import Doorbell
from ipc.shm.ring import RingReader, RingWriter, supported

VARIANTS: tuple[str, ...] = (
    "null",
    "shm-eventfd-burst",
    "shm-eventfd-packet",
    "shm-poll-1ms",
    "unix-dgram",
    "udp",
    "zmq",
)
SHM_VARIANTS = ("shm-eventfd-burst", "shm-eventfd-packet", "shm-poll-1ms")
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_JSON = RESULTS / "shm_hop-latest.json"

BURST_MIN, BURST_MAX = 5, 10
SETTLE_S = 0.3  # from "every reader is ready" to the window's start (zmq connects meanwhile)
GRACE_S = 0.1  # readers are stopped this long after the writer's last packet
READY_TIMEOUT_S = 10.0  # a child that is not ready by then fails the cell
RESULT_TIMEOUT_S = 15.0  # beyond the window, for a child's result
START_MARGIN_S = 0.02  # readers start counting CPU this long before the window
POLL_INTERVAL_S = 0.001
RECV_BYTES = 2048
_STAMP = struct.Struct("<qQ")  # the writer's monotonic_ns, the packet index (socket variants)

# Figures per cell, summarised as min/median over runs (None where they do not apply).
FIGURES: tuple[str, ...] = (
    "writer_cpu_us_per_pkt",
    "writer_ipc_us_per_pkt",
    "writer_ipc_us_per_pkt_per_reader",
    "reader_cpu_us_per_pkt",
    "hop_us_per_pkt_per_reader",
    "pkts_per_wake",
    "latency_p50_us",
    "latency_p99_us",
    "achieved_pps",
    "writer_late_ms_max",
    "host_busy",
)
COUNTS: tuple[str, ...] = ("sent", "received", "lost", "drops", "laps")


# --- what a cell shares with its children ---------------------------------------------------


@dataclass
class Plumbing:
    """The kernel objects of one cell, made before the fork so every child inherits them."""

    variant: str
    readers: int
    ring: RingWriter | None = None
    bells: list[Doorbell] = field(default_factory=list)
    pairs: list[tuple[socket.socket, socket.socket]] = field(default_factory=list)
    udp: list[socket.socket] = field(default_factory=list)
    zmq_paths: list[str] = field(default_factory=list)

    @classmethod
    def make(cls, variant: str, readers: int, tmpdir: str) -> Plumbing:
        plumbing = cls(variant, readers)
        try:
            if variant in SHM_VARIANTS:
                plumbing.ring = RingWriter("video")
                if variant != "shm-poll-1ms":
                    plumbing.bells = [Doorbell() for _ in range(readers)]
            elif variant == "unix-dgram":
                for _ in range(readers):
                    pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
                    plumbing.pairs.append(pair)
                    for end in pair:
                        end.setblocking(False)
            elif variant == "udp":
                for _ in range(readers):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    plumbing.udp.append(sock)
                    sock.bind(("127.0.0.1", 0))
                    sock.setblocking(False)
            elif variant == "zmq":
                plumbing.zmq_paths = [f"ipc://{tmpdir}/r{i}" for i in range(readers)]
        except BaseException:
            plumbing.close()
            raise
        return plumbing

    def close(self) -> None:
        if self.ring is not None:
            self.ring.close()
        for bell in self.bells:
            bell.close()
        for pair in self.pairs:
            for end in pair:
                end.close()
        for sock in self.udp:
            sock.close()


@dataclass(frozen=True)
class Window:
    t_start: float  # time.monotonic() (CLOCK_MONOTONIC: the same clock in every process)
    seconds: float

    @property
    def t_end(self) -> float:
        return self.t_start + self.seconds


# --- readers ----------------------------------------------------------------------------------


class ReaderStats:
    __slots__ = ("received", "wakes", "latencies")

    def __init__(self) -> None:
        self.received = 0
        self.wakes = 0
        self.latencies = array.array("q")


def _reader_child(conn: Connection, plumbing: Plumbing, index: int, seconds: float) -> None:
    try:
        result = _reader(conn, plumbing, index, seconds)
        conn.send(result)
    except BaseException:
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


def _reader(conn: Connection, plumbing: Plumbing, index: int, seconds: float) -> dict[str, Any]:
    """Set up, say ready, wait for the window, run the loop through it; the figures."""
    variant = plumbing.variant
    ring: RingReader | None = None
    zctx: zmq.Context[zmq.Socket[bytes]] | None = None
    zsock: zmq.Socket[bytes] | None = None
    if plumbing.ring is not None:
        ring = RingReader(plumbing.ring.fd, plumbing.ring.ring_id)
        # Steady state: every page of the ring mapped here before the window (each page
        # holds a slot's stamp). The reader starts at the live edge, after the warm lap.
        for slot in range(ring.next - ring.slots, ring.next):
            ring.arrival_ns(slot)
    if variant == "zmq":
        zctx = zmq.Context()
        zsock = zctx.socket(zmq.PULL)
        zsock.setsockopt(zmq.LINGER, 0)
        zsock.bind(plumbing.zmq_paths[index])
    try:
        conn.send("ready")
        if not conn.poll(READY_TIMEOUT_S + SETTLE_S):
            raise TimeoutError("no window from the orchestrator")
        window = Window(float(conn.recv()), seconds)
        loop = uvloop.new_event_loop()
        try:
            return loop.run_until_complete(_read(loop, conn, plumbing, index, window, ring, zsock))
        finally:
            loop.close()
    finally:
        if ring is not None:
            ring.close()
        if zsock is not None:
            zsock.close(0)
        if zctx is not None:
            zctx.term()


async def _read(
    loop: asyncio.AbstractEventLoop,
    conn: Connection,
    plumbing: Plumbing,
    index: int,
    window: Window,
    ring: RingReader | None,
    zsock: zmq.Socket[bytes] | None,
) -> dict[str, Any]:
    variant = plumbing.variant
    st = ReaderStats()
    monotonic_ns = time.monotonic_ns
    append = st.latencies.append
    unpack_stamp = _STAMP.unpack_from
    watched = -1
    ticking = False
    wake: Callable[[], None]
    handle: asyncio.TimerHandle | None = None

    if ring is not None:
        arrival_ns = ring.arrival_ns
        drain = ring.drain
        shm_ring = ring

        def deliver(seq: int, ts: int, flags: int, epoch: int, level: int, payload: bytes) -> None:
            now = monotonic_ns()
            arrival = arrival_ns(shm_ring.next - 1)  # drain has advanced `next` past it
            if arrival >= 0:
                append(now - arrival)
            st.received += 1

        if plumbing.bells:
            bell = plumbing.bells[index]
            clear = bell.clear

            def on_bell() -> None:
                clear()
                st.wakes += 1
                drain(deliver)

            wake = on_bell
            watched = bell.fd
            loop.add_reader(watched, on_bell)
        else:

            def tick() -> None:
                nonlocal handle
                st.wakes += 1
                drain(deliver)
                if ticking:
                    handle = loop.call_later(POLL_INTERVAL_S, tick)

            wake = tick
            ticking = True
            handle = loop.call_later(POLL_INTERVAL_S, tick)
    elif zsock is not None:
        recv_z = zsock.recv
        noblock = zmq.NOBLOCK
        again = zmq.Again

        def on_zmq() -> None:
            st.wakes += 1
            while True:
                try:
                    data = recv_z(noblock)
                except again:
                    return
                now = monotonic_ns()
                append(now - unpack_stamp(data, 0)[0])
                st.received += 1

        wake = on_zmq
        watched = int(zsock.getsockopt(zmq.FD))
        loop.add_reader(watched, on_zmq)
        on_zmq()  # the FD is edge-like: start from an empty queue
    else:
        sock = plumbing.pairs[index][1] if variant == "unix-dgram" else plumbing.udp[index]
        recv = sock.recv

        def on_socket() -> None:
            st.wakes += 1
            while True:
                try:
                    data = recv(RECV_BYTES)
                except BlockingIOError:
                    return
                now = monotonic_ns()
                append(now - unpack_stamp(data, 0)[0])
                st.received += 1

        wake = on_socket
        watched = sock.fileno()
        loop.add_reader(watched, on_socket)

    # The window ends when the orchestrator says so: after the writer's last packet (it may
    # lag behind its schedule on a busy machine) and a grace period; or at a deadline.
    stop: asyncio.Future[None] = loop.create_future()

    def on_stop() -> None:
        loop.remove_reader(conn.fileno())
        conn.recv()
        if not stop.done():
            stop.set_result(None)

    loop.add_reader(conn.fileno(), on_stop)
    deadline = False
    try:
        # Nothing is sent before the window, so nothing is reset at its start; the CPU count
        # starts a little early, lest a late timer here miss the first packets' cost.
        await asyncio.sleep(max(window.t_start - START_MARGIN_S - time.monotonic(), 0.0))
        cpu0 = time.process_time()
        st.wakes = 0
        try:
            await asyncio.wait_for(stop, window.t_end + RESULT_TIMEOUT_S - time.monotonic())
        except TimeoutError:
            deadline = True
        wake()  # whatever is still queued (a poll tick or a wake-up not run yet)
        cpu = time.process_time() - cpu0
    finally:
        ticking = False
        if handle is not None:
            handle.cancel()
        if watched >= 0:
            loop.remove_reader(watched)
        if not stop.done():
            loop.remove_reader(conn.fileno())
    return {
        "cpu_s": cpu,
        "received": st.received,
        "wakes": st.wakes,
        "stopped_by_deadline": deadline,
        "latencies_ns": st.latencies.tobytes(),
        "ring_lost": ring.lost if ring is not None else 0,
        "laps": ring.laps if ring is not None else 0,
    }


# --- the writer -------------------------------------------------------------------------------


def _writer_child(
    conn: Connection, plumbing: Plumbing, seconds: float, rate: float, size: int, seed: int
) -> None:
    try:
        loop = uvloop.new_event_loop()
        writer: Writer | None = None
        try:
            writer = Writer(loop, plumbing, size)
            writer.warm()
            conn.send("ready")
            if not conn.poll(READY_TIMEOUT_S * 2 + SETTLE_S):
                raise TimeoutError("no window from the orchestrator")
            window = Window(float(conn.recv()), seconds)
            result = loop.run_until_complete(_write(loop, writer, window, rate, seed))
        finally:
            if writer is not None:
                writer.close()
            loop.close()
        conn.send(result)
    except BaseException:
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


class Writer:
    """The per-packet send of each variant, and the counters it keeps."""

    def __init__(self, loop: asyncio.AbstractEventLoop, plumbing: Plumbing, size: int) -> None:
        self.loop = loop
        self.plumbing = plumbing
        self.drops = 0
        self.rings = 0
        self.pending = False
        self.payload = bytes(size)
        self.buf = bytearray(size)
        self.zctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self.zsocks: list[zmq.Socket[bytes]] = []
        self.usock: socket.socket | None = None
        self.addrs: list[tuple[str, int]] = []
        self.bells = [Doorbell(bell.fd) for bell in plumbing.bells]
        variant = plumbing.variant
        self.send: Callable[[int], None] | None
        if variant == "null":
            self.send = None
        elif variant == "shm-eventfd-burst":
            self.send = self.send_shm_burst
        elif variant == "shm-eventfd-packet":
            self.send = self.send_shm_packet
        elif variant == "shm-poll-1ms":
            self.send = self.send_shm
        elif variant == "unix-dgram":
            self.send = self.send_unix
        elif variant == "udp":
            self.usock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.usock.setblocking(False)
            self.addrs = [sock.getsockname() for sock in plumbing.udp]
            self.send = self.send_udp
        elif variant == "zmq":
            self.zctx = zmq.Context()
            for path in plumbing.zmq_paths:
                zsock = self.zctx.socket(zmq.PUSH)
                zsock.setsockopt(zmq.LINGER, 1000)
                zsock.connect(path)
                self.zsocks.append(zsock)
            self.send = self.send_zmq
        else:
            raise ValueError(f"unknown variant {variant}")

    def warm(self) -> None:
        """Steady state before the window: one lap of the ring, so that its pages exist and
        are mapped here (a fresh ring would take a page fault every few records)."""
        ring = self.plumbing.ring
        if ring is not None:
            for index in range(ring.slots):
                ring.write(index & 0xFFFF, 0, 0, 0, 0, self.payload)

    def close(self) -> None:
        for zsock in self.zsocks:
            zsock.close()
        if self.zctx is not None:
            self.zctx.term()
        if self.usock is not None:
            self.usock.close()

    # The ring stamps each record itself (arrival_ns): no stamp to pack here.
    def send_shm(self, index: int) -> None:
        ring = self.plumbing.ring
        assert ring is not None
        ring.write(index & 0xFFFF, 0, 0, 0, 0, self.payload)

    def send_shm_packet(self, index: int) -> None:
        self.send_shm(index)
        for bell in self.bells:
            bell.ring()
        self.rings += len(self.bells)

    def send_shm_burst(self, index: int) -> None:
        self.send_shm(index)
        if not self.pending:  # the first record of this loop turn: one flush after it
            self.pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.pending = False
        for bell in self.bells:
            bell.ring()
        self.rings += len(self.bells)

    def send_unix(self, index: int) -> None:
        buf = self.buf
        _STAMP.pack_into(buf, 0, time.monotonic_ns(), index)
        for writer_end, _reader_end in self.plumbing.pairs:
            try:
                writer_end.send(buf)
            except BlockingIOError:
                self.drops += 1

    def send_udp(self, index: int) -> None:
        buf = self.buf
        _STAMP.pack_into(buf, 0, time.monotonic_ns(), index)
        sock = self.usock
        assert sock is not None
        for addr in self.addrs:
            try:
                sock.sendto(buf, addr)
            except BlockingIOError:
                self.drops += 1

    def send_zmq(self, index: int) -> None:
        buf = self.buf
        _STAMP.pack_into(buf, 0, time.monotonic_ns(), index)
        for zsock in self.zsocks:
            try:
                zsock.send(buf, zmq.NOBLOCK)
            except zmq.Again:
                self.drops += 1


async def _write(
    loop: asyncio.AbstractEventLoop, writer: Writer, window: Window, rate: float, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    # Bounded in count as well as in time: never more than the window's share.
    max_packets = int(rate * window.seconds) + BURST_MAX
    sizes = [rng.randint(BURST_MIN, BURST_MAX) for _ in range(max_packets // BURST_MIN + 1)]
    done: asyncio.Future[tuple[float, float]] = loop.create_future()
    state = {"sent": 0, "bursts": 0}
    late_max = 0.0
    send = writer.send
    cpu0 = 0.0
    wall0 = 0.0
    due = window.t_start

    def finish() -> None:  # after the last burst's flush (call_soon is FIFO)
        if not done.done():
            done.set_result((time.process_time() - cpu0, time.monotonic() - wall0))

    def burst() -> None:
        nonlocal due, late_max
        late_max = max(late_max, time.monotonic() - due)
        sent = state["sent"]
        n = min(sizes[state["bursts"]], max_packets - sent)
        if send is not None:
            for index in range(sent, sent + n):
                send(index)
        state["sent"] = sent + n
        state["bursts"] += 1
        due += n / rate
        if due >= window.t_end or state["sent"] >= max_packets:
            loop.call_soon(finish)
            return
        # uvloop's timers have 1 ms resolution: a burst may leave up to 1 ms early or
        # late, but `due` is absolute, so the rate holds over the window.
        loop.call_later(max(due - time.monotonic(), 0.0), burst)

    await asyncio.sleep(max(window.t_start - time.monotonic(), 0.0))
    cpu0 = time.process_time()
    wall0 = time.monotonic()
    burst()
    cpu, wall = await asyncio.wait_for(done, window.seconds + RESULT_TIMEOUT_S)
    await asyncio.sleep(max(window.t_end + GRACE_S / 2 - time.monotonic(), 0.0))
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "sent": state["sent"],
        "bursts": state["bursts"],
        "drops": writer.drops,
        "doorbell_rings": writer.rings,
        "late_s_max": late_max,
    }


# --- the orchestrator -------------------------------------------------------------------------


def _stop(procs: Sequence[BaseProcess]) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(1.0)
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


def _receive(conn: Connection, timeout: float, who: str) -> Any:
    if not conn.poll(timeout):
        raise TimeoutError(f"{who}: no answer within {timeout:.1f} s")
    message = conn.recv()
    if isinstance(message, dict) and "error" in message:
        raise RuntimeError(f"{who} failed:\n{message['error']}")
    return message


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def _percentile(sorted_values: Sequence[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def run_cell(
    variant: str, readers: int, rate: float, seconds: float, size: int, seed: int
) -> dict[str, Any]:
    """One variant with `readers` readers for one window: the raw figures of that run."""
    ctx = multiprocessing.get_context("fork")
    procs: list[BaseProcess] = []
    conns: list[Connection] = []
    n_readers = 0 if variant == "null" else readers
    with tempfile.TemporaryDirectory(prefix="shm_hop-") as tmpdir:
        plumbing = Plumbing.make(variant, n_readers, tmpdir)
        try:
            # The writer first: it warms the ring, then readers attach at its live edge.
            wparent, wchild = ctx.Pipe()
            writer = ctx.Process(
                target=_writer_child,
                args=(wchild, plumbing, seconds, rate, size, seed),
                name="shm_hop-writer",
                daemon=True,
            )
            writer.start()
            wchild.close()
            procs.append(writer)
            conns.append(wparent)
            if _receive(wparent, READY_TIMEOUT_S, "writer") != "ready":
                raise RuntimeError("writer: unexpected message")
            for index in range(n_readers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_reader_child,
                    args=(child, plumbing, index, seconds),
                    name=f"shm_hop-reader-{index}",
                    daemon=True,
                )
                proc.start()
                child.close()
                procs.append(proc)
                conns.append(parent)
            for index, conn in enumerate(conns[1:]):
                if _receive(conn, READY_TIMEOUT_S, f"reader {index}") != "ready":
                    raise RuntimeError(f"reader {index}: unexpected message")
            window = Window(time.monotonic() + SETTLE_S, seconds)
            for conn in conns:
                conn.send(window.t_start)
            time.sleep(max(window.t_start - time.monotonic(), 0.0))
            busy0, total0 = _cpu_ticks()
            time.sleep(max(window.t_end - time.monotonic(), 0.0))
            busy1, total1 = _cpu_ticks()
            timeout = GRACE_S + RESULT_TIMEOUT_S
            wres: dict[str, Any] = _receive(wparent, timeout, "writer")
            time.sleep(GRACE_S)  # for the last packets to arrive
            for conn in conns[1:]:
                conn.send("stop")
            rres: list[dict[str, Any]] = [
                _receive(conn, timeout, f"reader {i}") for i, conn in enumerate(conns[1:])
            ]
        finally:
            _stop(procs)
            for conn in conns:
                conn.close()
            plumbing.close()

    sent = int(wres["sent"])
    latencies: list[int] = []
    for r in rres:
        lat = array.array("q")
        lat.frombytes(r["latencies_ns"])
        latencies.extend(lat)
    latencies.sort()
    received = sum(int(r["received"]) for r in rres)
    wakes = sum(int(r["wakes"]) for r in rres)
    reader_cpu = sum(float(r["cpu_s"]) for r in rres)
    return {
        "variant": variant,
        "readers": n_readers,
        "sent": sent,
        "received": received,
        "readers_stopped_by_deadline": sum(bool(r["stopped_by_deadline"]) for r in rres),
        "writer_late_ms_max": 1e3 * float(wres["late_s_max"]),
        "lost": sent * n_readers - received,
        "drops": int(wres["drops"]),
        "laps": sum(int(r["laps"]) for r in rres),
        "bursts": int(wres["bursts"]),
        "doorbell_rings": int(wres["doorbell_rings"]),
        "wakes": wakes,
        "writer_cpu_s": float(wres["cpu_s"]),
        "reader_cpu_s": [float(r["cpu_s"]) for r in rres],
        "achieved_pps": sent / float(wres["wall_s"]) if wres["wall_s"] else float("nan"),
        "host_busy": (busy1 - busy0) / (total1 - total0) if total1 > total0 else float("nan"),
        "writer_cpu_us_per_pkt": 1e6 * float(wres["cpu_s"]) / sent if sent else None,
        "reader_cpu_us_per_pkt": 1e6 * reader_cpu / received if received else None,
        "pkts_per_wake": received / wakes if wakes else None,
        "latency_p50_us": _percentile(latencies, 0.50) / 1e3 if latencies else None,
        "latency_p99_us": _percentile(latencies, 0.99) / 1e3 if latencies else None,
        "latency_samples": len(latencies),
    }


def _derive(cells: dict[str, dict[str, Any]], readers: int) -> None:
    """Per run: the writer's IPC cost (minus the null variant's) and the hop per reader."""
    null = cells["null"]["writer_cpu_us_per_pkt"]
    for variant, cell in cells.items():
        if variant == "null" or cell["writer_cpu_us_per_pkt"] is None or null is None:
            cell["writer_ipc_us_per_pkt"] = None
            cell["writer_ipc_us_per_pkt_per_reader"] = None
            cell["hop_us_per_pkt_per_reader"] = None
            continue
        ipc = cell["writer_cpu_us_per_pkt"] - null
        cell["writer_ipc_us_per_pkt"] = ipc
        cell["writer_ipc_us_per_pkt_per_reader"] = ipc / readers
        reader = cell["reader_cpu_us_per_pkt"]
        cell["hop_us_per_pkt_per_reader"] = ipc / readers + reader if reader is not None else None


def _summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in FIGURES:
        values = [float(run[name]) for run in runs if run.get(name) is not None]
        summary[name] = (
            {"min": min(values), "median": statistics.median(values)} if values else None
        )
    for name in COUNTS:
        summary[name] = sum(int(run[name]) for run in runs)
    return summary


def _fmt(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _pair(summary: dict[str, Any], name: str) -> str:
    figure = summary[name]
    if figure is None:
        return "–"
    return f"{_fmt(figure['min'])}/{_fmt(figure['median'])}"


def table(readers: int, results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"R = {readers} reader(s), {args.rate:g} pps, {args.size} B, {args.seconds:g} s x "
        f"{args.runs} runs; µs, min/median over runs",
        "",
        "| variant | writer CPU/pkt | writer IPC/pkt | IPC per reader | reader CPU/pkt "
        "| hop/pkt/reader | pkts/wake | p50 | p99 | lost (drops) | host busy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for variant, entry in results.items():
        s = entry["summary"]
        cols = [
            variant,
            *(
                _pair(s, name)
                for name in (
                    "writer_cpu_us_per_pkt",
                    "writer_ipc_us_per_pkt",
                    "writer_ipc_us_per_pkt_per_reader",
                    "reader_cpu_us_per_pkt",
                    "hop_us_per_pkt_per_reader",
                    "pkts_per_wake",
                    "latency_p50_us",
                    "latency_p99_us",
                )
            ),
            f"{s['lost']} ({s['drops']})" if variant != "null" else "–",
            _pair(s, "host_busy"),
        ]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def _host() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": importlib.metadata.version("uvloop"),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "loadavg": list(os.getloadavg()),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.shm_hop", description=__doc__)
    parser.add_argument("--readers", default="1,3", help="reader counts, comma-separated")
    parser.add_argument("--rate", type=float, default=3000.0, help="packets per second")
    parser.add_argument("--seconds", type=float, default=1.5, help="window per variant")
    parser.add_argument("--runs", type=int, default=3, help="rotated repetitions")
    parser.add_argument("--size", type=int, default=1200, help="packet bytes")
    parser.add_argument("--seed", type=int, default=1, help="burst sizes' seed")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated subset of " + ", ".join(VARIANTS) + " (null is always run)",
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    args = parser.parse_args(argv)
    args.reader_counts = [int(v) for v in args.readers.split(",") if v.strip()]
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants: {', '.join(unknown)}")
    args.variant_list = ["null"] + [v for v in VARIANTS if v in chosen and v != "null"]
    if not args.reader_counts or min(args.reader_counts) < 1:
        parser.error("--readers: one or more counts >= 1")
    if args.runs < 1 or args.seconds <= 0 or args.rate <= 0:
        parser.error("--runs, --seconds and --rate must be positive")
    if not _STAMP.size <= args.size <= 1504:
        parser.error(f"--size must be {_STAMP.size}..1504 (a ring slot's payload)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if any(v in SHM_VARIANTS for v in args.variant_list) and not supported():
        print("the shared-memory ring needs x86-64", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    host = _host()
    out: dict[str, Any] = {
        "benchmark": "shm_hop",
        "started": started.isoformat(timespec="seconds"),
        "host": host,
        "settings": {
            "readers": args.reader_counts,
            "rate": args.rate,
            "seconds": args.seconds,
            "runs": args.runs,
            "size": args.size,
            "seed": args.seed,
            "burst": [BURST_MIN, BURST_MAX],
            "variants": args.variant_list,
            "grace_s": GRACE_S,
        },
        "results": {},
    }
    tables: list[str] = []
    for readers in args.reader_counts:
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in args.variant_list}
        for run in range(args.runs):
            shift = run % len(args.variant_list)
            order = args.variant_list[shift:] + args.variant_list[:shift]
            cells: dict[str, dict[str, Any]] = {}
            for variant in order:
                cell = run_cell(variant, readers, args.rate, args.seconds, args.size, args.seed)
                cell["run"] = run
                cells[variant] = cell
                print(
                    f"R={readers} run {run + 1}/{args.runs} {variant}: sent {cell['sent']}, "
                    f"lost {cell['lost']}, host busy {cell['host_busy']:.2f}",
                    file=sys.stderr,
                )
            _derive(cells, readers)
            for variant, cell in cells.items():
                runs[variant].append(cell)
        results = {v: {"summary": _summarise(runs[v]), "runs": runs[v]} for v in runs}
        out["results"][str(readers)] = results
        tables.append(table(readers, results, args))
    host["loadavg_after"] = list(os.getloadavg())
    out["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    print("\n\n".join(tables))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nJSON: {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
