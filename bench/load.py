"""Load generator and benchmark runner: real WHIP publishers and WHEP viewers against a real
sfu-gateway, with the baselines measured in the same run.

    .venv/bin/python -m bench.load p1 --viewers 10,50,100,200
    .venv/bin/python -m bench.load p2 --rooms 10 --viewers 2,5,10
    .venv/bin/python -m bench.load setup --burst 50 --bursts 3
    .venv/bin/python -m bench.load spread --viewers 50,100,200

Each run writes bench/results/<scenario>-<time>.json and .png (and <scenario>-latest.*),
and prints the efficiency ratio, latency percentiles and setup times. bench/README.md says
what every figure means.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.agents import (
    BUCKET_NS,
    cpu_seconds,
    publisher_agent_main,
    rss_bytes,
    viewer_agent_main,
)
from bench.baselines import DEFAULT_SRTP_PROFILE, bare_fanout_main, sink_main
from ipc.shm.ring import DEFAULT_SLOTS, DEFAULT_STRIDE, ring_size
from testkit import client
from testkit.processes import (
    REPO,
    GatewayProcess,
    pick_free_port,
    start_gateway,
    udp_port_owners,
    worker_id_of,
    worker_pids,
)

RESULTS = REPO / "bench" / "results"
CONTEXT = multiprocessing.get_context("spawn")
COMMAND_TIMEOUT = 120.0
LOSS_FREE = 0.001  # a step with at most this viewer-side loss counts as below capacity


class BenchError(RuntimeError):
    """A step of the run failed; the message says which and why."""


# --------------------------------------------------------------------------------------------
# Agents: processes driven over a pipe (bench/agents.py)


class Agent:
    def __init__(self, name: str, target: Any, *args: Any) -> None:
        self.name = name
        self.conn, child = CONTEXT.Pipe()
        self.process = CONTEXT.Process(target=target, args=(child, *args), name=name, daemon=True)
        self.process.start()
        child.close()
        self.viewers = 0

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def send(self, *command: Any) -> None:
        self.conn.send(command)

    def result(self, timeout: float = COMMAND_TIMEOUT) -> Any:
        if not self.conn.poll(timeout):
            raise BenchError(f"{self.name} did not answer within {timeout:g} s")
        status, value = self.conn.recv()
        if status != "ok":
            raise BenchError(f"{self.name}: {value}")
        return value

    def request(self, *command: Any, timeout: float = COMMAND_TIMEOUT) -> Any:
        self.send(*command)
        return self.result(timeout)

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(("exit",))
            except OSError:
                pass
            self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def broadcast(
    agents: Sequence[Agent], *command: Any, timeout: float = COMMAND_TIMEOUT
) -> list[Any]:
    """Send one command to every agent at once, then collect every reply."""
    for agent in agents:
        agent.send(*command)
    return [agent.result(timeout) for agent in agents]


# --------------------------------------------------------------------------------------------
# The server under test and /proc


def host_cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def worker_id_or_pid(pid: int) -> str:
    """The worker's --worker-id (local-N), or "pid-N" when its command line says none."""
    try:
        return worker_id_of(pid)
    except (OSError, ValueError, IndexError):
        return f"pid-{pid}"


@dataclass
class Server:
    url: str
    worker_pids: list[int]
    gateway: GatewayProcess | None = None
    worker_ids: dict[int, str] = field(default_factory=dict)  # pid -> worker id

    def cpu_each(self) -> dict[int, float]:
        """CPU seconds so far of each worker process."""
        try:
            return {pid: cpu_seconds(pid) for pid in self.worker_pids}
        except FileNotFoundError:
            raise self.worker_lost() from None

    def worker_id(self, pid: int) -> str:
        return self.worker_ids.get(pid) or f"pid-{pid}"

    def worker_lost(self) -> BenchError:
        log = self.gateway.log(1500) if self.gateway is not None else ""
        return BenchError(f"a worker process exited during the run; gateway log:\n{log}")

    def rss(self) -> int:
        return sum(self.rss_each().values())

    def rss_each(self) -> dict[int, int]:
        try:
            return {pid: rss_bytes(pid) for pid in self.worker_pids}
        except FileNotFoundError:
            raise self.worker_lost() from None

    def stop(self) -> None:
        if self.gateway is not None:
            self.gateway.stop()


def start_server(
    options: argparse.Namespace,
    log_dir: Path,
    workers: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Server:
    """The server under test: --url's, or a gateway started here with `workers` local workers
    (--workers by default) and `env` settings, once every worker has registered."""
    if options.url:
        pids = list(options.worker_pid)
        return Server(options.url.rstrip("/"), pids, None, {p: worker_id_or_pid(p) for p in pids})
    workers = workers or options.workers
    admin_token = secrets.token_hex(16)  # to see the workers register (the admin API)
    args = ["--bind-addresses", "127.0.0.1", "--log-level", "warning"]
    args += ["--worker-timeout", f"{options.worker_timeout:g}", *options.gateway_arg]
    gateway = start_gateway(
        log_dir, workers=workers, args=args, env={**(env or {}), "ADMIN_TOKEN": admin_token}
    )
    try:
        deadline = time.monotonic() + 30
        while len(worker_pids(gateway)) < workers or (
            len(http_json(f"{gateway.url}/api/admin/workers", admin_token) or []) < workers
        ):
            if time.monotonic() > deadline or gateway.process.poll() is not None:
                raise BenchError(
                    f"the gateway's {workers} workers did not start and register:\n"
                    f"{gateway.log(1500)}"
                )
            time.sleep(0.1)
        pids = sorted(worker_pids(gateway))
        return Server(gateway.url, pids, gateway, {p: worker_id_or_pid(p) for p in pids})
    except BaseException:
        gateway.stop()
        raise


def http_json(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# Figures


def percentile(values: Sequence[float], q: float) -> float | None:
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))
    return round(ordered[index], 3)


def histogram_percentiles(histogram: dict[int, int]) -> dict[str, float | None]:
    """p50/p99/p99.9 in ms from merged 10 µs latency buckets (bucket centre)."""
    total = sum(histogram.values())
    result: dict[str, float | None] = {"p50_ms": None, "p99_ms": None, "p999_ms": None}
    if not total:
        return result
    keys = (("p50_ms", 0.50), ("p99_ms", 0.99), ("p999_ms", 0.999))
    seen = 0
    pending = list(keys)
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        while pending and seen >= pending[0][1] * total:
            result[pending.pop(0)[0]] = round((bucket + 0.5) * BUCKET_NS / 1e6, 3)
    result["samples"] = total
    return result


def summarize_setup(records: list[dict[str, Any]]) -> dict[str, Any]:
    def pick(key: str) -> list[float]:
        return [r[key] for r in records if r.get(key) is not None]

    summary: dict[str, Any] = {"sessions": len(records)}
    for key in ("post_ms", "first_packet_ms", "first_keyframe_ms"):
        values = pick(key)
        summary[key.replace("_ms", "")] = {
            "p50_ms": percentile(values, 50),
            "p99_ms": percentile(values, 99),
            "count": len(values),
        }
    summary["errors"] = [r["error"] for r in records if r.get("error")][:5]
    summary["failed"] = sum(1 for r in records if r.get("error"))
    return summary


def merge_histograms(histograms: Sequence[Mapping[int, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for histogram in histograms:
        for bucket, count in histogram.items():
            merged[bucket] = merged.get(bucket, 0) + count
    return merged


def added_ms(base: float | None, other: float | None) -> float | None:
    return round(other - base, 3) if base is not None and other is not None else None


def edge_vs_home(by_label: Mapping[str, Mapping[int, int]], home: str) -> dict[str, Any]:
    """Latency of the viewers on the room's home against those on its edges (every other
    worker, merged), and what the edge adds at p50 and p99."""
    home_latency = histogram_percentiles(dict(by_label.get(home, {})))
    edges = [h for label, h in by_label.items() if label not in (home, "", "unknown")]
    edge_latency = histogram_percentiles(merge_histograms(edges))
    return {
        "home": home,
        "home_latency": home_latency,
        "edge_latency": edge_latency,
        "added_p50_ms": added_ms(home_latency["p50_ms"], edge_latency["p50_ms"]),
        "added_p99_ms": added_ms(home_latency["p99_ms"], edge_latency["p99_ms"]),
    }


# --------------------------------------------------------------------------------------------
# Steps shared by the scenarios


@dataclass
class Fleet:
    """The viewer agents, the publisher agent and the server they load."""

    options: argparse.Namespace
    server: Server
    viewers: list[Agent]
    publisher: Agent
    profile: dict[str, Any] = field(default_factory=dict)

    def agent_pids(self) -> list[int]:
        return [a.pid for a in self.viewers]

    def add_viewers(self, rooms: list[str], url: str | None = None) -> list[dict[str, Any]]:
        """Open one viewer per entry of `rooms`, at most setup_concurrency POSTs at a time;
        returns one setup record per viewer."""
        records: list[dict[str, Any]] = []
        batch_size = self.options.setup_concurrency
        for start in range(0, len(rooms), batch_size):
            batch = rooms[start : start + batch_size]
            plan: dict[int, dict[str, int]] = {}
            for room in batch:
                agent = min(self.viewers, key=lambda a: a.viewers)
                agent.viewers += 1
                per_room = plan.setdefault(id(agent), {})
                per_room[room] = per_room.get(room, 0) + 1
            busy = [a for a in self.viewers if id(a) in plan]
            for agent in busy:
                for room, count in plan[id(agent)].items():
                    agent.request("prepare", room, count)
            for agent in busy:
                agent.send("open", url or self.server.url, self.options.settle)
            for agent in busy:
                records.extend(agent.result())
        return records

    def close_viewers(self) -> None:
        broadcast(self.viewers, "close")
        for agent in self.viewers:
            agent.viewers = 0

    def label_viewers_by_worker(self, room: str) -> dict[str, Any]:
        """Label every viewer with the worker its session is on, so that measure() splits
        latency and loss by worker; returns the room's home and its viewers per worker.

        The worker of a session is the worker process that holds the UDP port of the WHEP
        answer's ICE candidates (/proc: the server must run on this host); the gateway's
        /api/rooms gives the room's home and its own count of viewers per worker."""
        owners = udp_port_owners(self.server.worker_pids)
        seen: Counter[str] = Counter()
        for agent, sessions in zip(self.viewers, broadcast(self.viewers, "sessions"), strict=True):
            labels: dict[str, str] = {}
            for session in sessions:
                pids = {owners[p] for p in session["ports"] if p in owners}
                worker = self.server.worker_id(pids.pop()) if len(pids) == 1 else "unknown"
                labels[session["location"]] = worker
                seen[worker] += 1
            agent.request("label", labels)
        rooms = http_json(f"{self.server.url}/api/rooms") or []
        entry: dict[str, Any] = next((r for r in rooms if r.get("name") == room), {})
        return {
            "home": entry.get("home"),
            "viewers_per_worker": entry.get("viewersPerWorker"),
            "viewers_per_worker_seen": dict(sorted(seen.items())),
        }

    def measure(
        self, seconds: float, cpu_pids: list[int] | None = None, home: str | None = None
    ) -> dict[str, Any]:
        """One measurement window: viewer-side packets, loss and latency, and CPU (per
        worker too). With labelled viewers (label_viewers_by_worker), loss and latency per
        worker; with the room's `home` too, edge against home latency."""

        def cpu_of(pids: list[int]) -> dict[int, float]:
            if cpu_pids is None:
                return self.server.cpu_each()
            return {p: cpu_seconds(p) for p in pids}

        pids = cpu_pids if cpu_pids is not None else self.server.worker_pids
        agents = self.agent_pids() + [self.publisher.pid]
        cpu0 = cpu_of(pids)
        agents0 = [cpu_seconds(p) for p in agents]
        host0 = host_cpu_ticks()
        sent0 = self.publisher.request("counters")
        start = time.monotonic()
        broadcast(self.viewers, "start")
        time.sleep(seconds)
        reports = broadcast(self.viewers, "stop")
        wall = time.monotonic() - start
        sent1 = self.publisher.request("counters")
        cpu1 = cpu_of(pids)
        cpu_each = {pid: cpu1[pid] - cpu0[pid] for pid in pids}
        cpu = sum(cpu_each.values())
        agents_cpu = [cpu_seconds(p) - c for p, c in zip(agents, agents0, strict=True)]
        host1 = host_cpu_ticks()
        histogram: dict[int, int] = {}
        received = expected = 0
        viewer_loss: list[float] = []
        by_label: dict[str, dict[int, int]] = {}
        per_label: dict[str, list[int]] = {}  # label -> [viewers, received, expected]
        for report in reports:
            for bucket, count in report["histogram"].items():
                histogram[bucket] = histogram.get(bucket, 0) + count
            for label, sparse in report["histograms"].items():
                by_label[label] = merge_histograms([by_label.get(label, {}), sparse])
            for label, tracks in zip(report["labels"], report["viewers"], strict=True):
                got = sum(t["received"] for t in tracks.values())
                want = sum(t["expected"] for t in tracks.values())
                received += got
                expected += want
                viewer_loss.append(1 - got / want if want else 1.0)
                counts = per_label.setdefault(label, [0, 0, 0])
                counts[0] += 1
                counts[1] += got
                counts[2] += want
        inbound = sum(s["video_sent"] + s["audio_sent"] for s in sent1) - sum(
            s["video_sent"] + s["audio_sent"] for s in sent0
        )
        worker_cpu = cpu / wall
        forwarded_pps = received / wall
        step: dict[str, Any] = {}
        if cpu_pids is None:
            step["worker_cpu"] = {
                self.server.worker_id(pid): round(c / wall, 3) for pid, c in cpu_each.items()
            }
        if any(per_label):
            step["by_worker"] = {
                label or "unlabelled": {
                    "viewers": viewers,
                    "forwarded_pps": round(got / wall),
                    "loss": round(1 - got / want, 6) if want else None,
                    "latency": histogram_percentiles(by_label.get(label, {})),
                }
                for label, (viewers, got, want) in sorted(per_label.items())
            }
            if home:
                step["edge_vs_home"] = edge_vs_home(by_label, home)
        return {
            "window_s": round(wall, 2),
            "viewers_connected": sum(r["connected"] for r in reports),
            "publisher_pps": round(inbound / wall),
            "forwarded_pps": round(forwarded_pps),
            "worker_cpu_cores": round(worker_cpu, 3),
            "forwarded_pps_per_worker_cpu_s": round(forwarded_pps / worker_cpu)
            if worker_cpu > 0
            else None,
            "loss": round(1 - received / expected, 6) if expected else None,
            "viewers_with_loss": sum(1 for loss in viewer_loss if loss > 0),
            "max_viewer_loss": round(max(viewer_loss), 6) if viewer_loss else None,
            "latency": histogram_percentiles(histogram),
            "viewer_agents_cpu_cores": round(sum(agents_cpu[:-1]) / wall, 3),
            "publisher_cpu_cores": round(agents_cpu[-1] / wall, 3),
            "host_cpu_busy": round((host1[0] - host0[0]) / max(1, host1[1] - host0[1]), 3),
            "srtp_profile": next((r["srtp_profile"] for r in reports if r["srtp_profile"]), ""),
            "unprotect_errors": sum(r["unprotect_errors"] for r in reports),
            "publisher": sent1,
        } | step


def start_fleet(options: argparse.Namespace, server: Server) -> Fleet:
    viewers = [
        Agent(f"viewers-{i}", viewer_agent_main, options.decrypt_every)
        for i in range(options.viewer_processes)
    ]
    publisher = Agent("publisher", publisher_agent_main)
    profile = {
        "bitrate": options.bitrate,
        "fps": options.fps,
        "keyframe_interval": options.keyframe_interval,
    }
    return Fleet(options, server, viewers, publisher, profile)


def stop_agents(agents: Sequence[Agent]) -> None:
    for agent in agents:
        agent.stop()


def sweep(
    fleet: Fleet,
    rooms: list[str],
    per_room_counts: list[int],
    deadline: float,
    by_worker: bool = False,
) -> list[dict[str, Any]]:
    """Grow the audience step by step (the same viewers stay) and measure each step.

    `by_worker` (one room, a server on this host): each step also says where the viewers
    are and splits loss and latency by worker, home against edges (label_viewers_by_worker).
    """
    options = fleet.options
    fleet.publisher.request("publish", fleet.server.url, rooms, fleet.profile, True)
    time.sleep(2)
    rss_before = fleet.server.rss()
    steps: list[dict[str, Any]] = []
    current = 0
    for per_room in per_room_counts:
        if time.monotonic() > deadline:
            print(f"time limit reached: skipping {per_room} viewers per room and beyond")
            break
        new = [room for room in rooms for _ in range(per_room - current)]
        setup = fleet.add_viewers(new)
        current = per_room
        total = per_room * len(rooms)
        placement = fleet.label_viewers_by_worker(rooms[0]) if by_worker else None
        time.sleep(options.settle)
        home = placement["home"] if placement is not None and len(rooms) == 1 else None
        step = fleet.measure(options.seconds, home=home)
        rss_each = fleet.server.rss_each()
        rss = sum(rss_each.values())
        step.update(
            {
                "viewers": total,
                "viewers_per_room": per_room,
                "setup": summarize_setup(setup),
                "worker_rss_mb": round(rss / 2**20, 1),
                "worker_rss_mb_each": {
                    fleet.server.worker_id(pid): round(b / 2**20, 1) for pid, b in rss_each.items()
                },
                "worker_rss_per_viewer_kb": round((rss - rss_before) / total / 1024, 1),
            }
        )
        if placement is not None:
            step["placement"] = placement
        steps.append(step)
        latency = step["latency"]
        print(
            f"  {total:4d} viewers: {step['forwarded_pps']:7d} pps, worker CPU "
            f"{step['worker_cpu_cores']:.2f}, {step['forwarded_pps_per_worker_cpu_s']} pps/CPU-s, "
            f"loss {step['loss']}, latency p50/p99/p99.9 {latency['p50_ms']}/"
            f"{latency['p99_ms']}/{latency['p999_ms']} ms, host busy {step['host_cpu_busy']}",
            flush=True,
        )
        for worker, figures in step.get("by_worker", {}).items():
            lat = figures["latency"]
            role = " (home)" if worker == home else ""
            print(
                f"      {worker}{role}: {figures['viewers']} viewers, CPU "
                f"{step['worker_cpu'].get(worker)} cores, loss {figures['loss']}, latency "
                f"p50/p99 {lat['p50_ms']}/{lat['p99_ms']} ms",
                flush=True,
            )
    return steps


# --------------------------------------------------------------------------------------------
# Baselines


def bare_baseline(
    loads: list[tuple[int, float]],
    seconds: float,
    profile: str,
    sink_processes: int,
    rooms: int = 1,
) -> list[dict[str, Any]]:
    """The bare loop for each (viewers, inbound packets/s) of the live run, to as many
    sinks in as many processes as the live run had viewers and viewer processes."""
    results = []
    for count, inbound_pps in loads:
        sinks = []
        addresses: list[tuple[str, int]] = []
        try:
            for index in range(min(sink_processes, count)):
                share = count // sink_processes + (index < count % sink_processes)
                conn, child = CONTEXT.Pipe()
                sink = CONTEXT.Process(target=sink_main, args=(child, share), daemon=True)
                sink.start()
                sinks.append((conn, sink))
                if not conn.poll(30):
                    raise BenchError("the baseline's UDP sinks did not start")
                addresses.extend(conn.recv())
            loop_conn, loop_child = CONTEXT.Pipe()
            loop = CONTEXT.Process(
                target=bare_fanout_main,
                args=(loop_child, addresses, seconds, profile, inbound_pps, rooms),
                daemon=True,
            )
            loop.start()
            if not loop_conn.poll(seconds + 60):
                loop.kill()
                raise BenchError("the bare fan-out loop did not finish")
            result = loop_conn.recv()
            loop.join(10)
            received = 0
            for conn, _ in sinks:
                conn.send("stop")
                received += conn.recv() if conn.poll(10) else 0
            result["sink_received"] = received
        finally:
            for _, sink in sinks:
                sink.join(5)
                if sink.is_alive():
                    sink.kill()
        results.append(result)
        print(
            f"  bare loop to {count:4d} sinks: {result['pps_per_cpu_s']} pps/CPU-s "
            f"({result['srtp_profile']})",
            flush=True,
        )
    return results


def relay_baseline(fleet: Fleet, viewer_counts: list[int], log_dir: Path) -> dict[str, Any]:
    """aiortc's MediaRelay (bench/relay_server.py) fed by a real VP8 encoder (testkit.client)."""
    options = fleet.options
    port = pick_free_port()
    url = f"http://127.0.0.1:{port}"
    width, height = options.relay_size
    with (log_dir / "relay.log").open("wb") as log:
        relay = subprocess.Popen(
            [sys.executable, "-m", "bench.relay_server", "--port", str(port)],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while http_json(f"{url}/rooms/relay") is None:
            if time.monotonic() > deadline or relay.poll() is not None:
                relay.kill()
                raise BenchError(f"the MediaRelay server did not start (see {log_dir})")
            time.sleep(0.2)
        publisher = subprocess.Popen(
            client.command("publish", url, "relay", "--seconds", "3600")
            + ["--width", str(width), "--height", str(height)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    steps = []
    try:
        deadline = time.monotonic() + 30
        while http_json(f"{url}/rooms/relay") != ["audio", "video"]:
            if time.monotonic() > deadline or relay.poll() is not None:
                raise BenchError(f"the MediaRelay baseline did not start (see {log_dir})")
            time.sleep(0.2)
        time.sleep(2)
        cpu_idle = cpu_seconds(relay.pid)
        time.sleep(2)
        decode_only = (cpu_seconds(relay.pid) - cpu_idle) / 2
        current = 0
        for count in viewer_counts:
            fleet.add_viewers(["relay"] * (count - current), url)
            current = count
            time.sleep(options.settle)
            step = fleet.measure(options.seconds, cpu_pids=[relay.pid])
            step["viewers"] = count
            step["relay_cpu_cores"] = step.pop("worker_cpu_cores")
            step["viewers_per_core"] = round(count / step["relay_cpu_cores"], 2)
            for key in ("latency", "publisher", "srtp_profile", "unprotect_errors"):
                step.pop(key, None)
            steps.append(step)
            print(
                f"  MediaRelay, {count} viewers: relay CPU {step['relay_cpu_cores']:.2f} cores, "
                f"{step['viewers_per_core']} viewers/core",
                flush=True,
            )
        fleet.close_viewers()
    finally:
        publisher.kill()
        publisher.wait(10)
        relay.terminate()
        try:
            relay.wait(15)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait(5)
    return {
        "source": f"{width}x{height} VP8 from aiortc's encoder (testkit/client.py)",
        "decode_only_cpu_cores": round(decode_only, 3),
        "steps": steps,
    }


# --------------------------------------------------------------------------------------------
# Scenarios


def host_description() -> dict[str, Any]:
    model = ""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            "",
        )
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def run_fanout(options: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """P1 (one room) or P2 (several rooms), then the baselines."""
    deadline = time.monotonic() + options.max_minutes * 60
    if options.scenario == "p1":
        rooms = ["p1"]
    else:
        rooms = [f"p2-{i}" for i in range(options.rooms)]
    server = start_server(options, log_dir)
    fleet = start_fleet(options, server)
    result: dict[str, Any] = {}
    try:
        print(
            f"{options.scenario}: {len(rooms)} room(s) on {server.url}, worker pids "
            f"{server.worker_pids}",
            flush=True,
        )
        result["steps"] = sweep(fleet, rooms, options.viewers, deadline)
        fleet.close_viewers()
        fleet.publisher.request("close")
        server.stop()
        profile = next((s["srtp_profile"] for s in result["steps"] if s["srtp_profile"]), "")
        loads = [(s["viewers"], s["publisher_pps"]) for s in result["steps"]]
        print("baseline: bare fan-out loop", flush=True)
        result["bare_baseline"] = bare_baseline(
            loads,
            options.baseline_seconds,
            profile or DEFAULT_SRTP_PROFILE,
            options.viewer_processes,
            len(rooms),
        )
        if options.relay_viewers:
            print("baseline: aiortc MediaRelay", flush=True)
            result["relay_baseline"] = relay_baseline(fleet, options.relay_viewers, log_dir)
    finally:
        stop_agents([*fleet.viewers, fleet.publisher])
        server.stop()
    for step, bare in zip(result["steps"], result["bare_baseline"], strict=False):
        live = step["forwarded_pps_per_worker_cpu_s"]
        step["bare_pps_per_cpu_s"] = bare["pps_per_cpu_s"]
        step["efficiency"] = round(live / bare["pps_per_cpu_s"], 3) if live and bare else None
        cores = step["worker_cpu_cores"]
        step["viewers_per_worker_core"] = round(step["viewers"] / cores, 1) if cores else None
    result["viewers_per_core"] = compare_viewers_per_core(result)
    return result


SPREAD_ROOM = "spread"
SPREAD_MODES = ("single", "spread")


def ring_memory() -> dict[str, Any]:
    """Shared memory of the plane (ipc/shm/ring.py): one ring per track of a room with an
    edge, made by the room's home; every edge maps the same memfd, so a room costs this once
    however many edges read it."""
    per_track = {
        kind: ring_size(slots, DEFAULT_STRIDE) for kind, slots in sorted(DEFAULT_SLOTS.items())
    }
    return {
        "stride_bytes": DEFAULT_STRIDE,
        "slots": dict(sorted(DEFAULT_SLOTS.items())),
        "bytes_per_track": per_track,
        "bytes_per_room": sum(per_track.values()),  # one audio and one video track
    }


def spread_pair(pair: dict[str, Any]) -> None:
    """The ratios of one N: spread (b) against single (a)."""
    single, spread = pair.get("single"), pair.get("spread")
    if single is None or spread is None:
        return
    a = single["forwarded_pps_per_worker_cpu_s"]
    b = spread["forwarded_pps_per_worker_cpu_s"]
    pair["efficiency_ratio"] = round(b / a, 3) if a and b else None


def run_spread(options: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """One room, one publisher, N viewers: (a) a gateway with one worker, (b) a gateway
    with --spread-workers workers and SPREAD_THRESHOLD=--spread-threshold, so that the
    viewers are spread over all of them (the edges read the home's rings). For each N, (a)
    and (b) run back to back (their order alternates from one N to the next), each with a
    fresh gateway and fresh viewers, sharing the agents."""
    deadline = time.monotonic() + options.max_minutes * 60
    modes: dict[str, tuple[int, dict[str, str]]] = {
        "single": (1, {}),
        "spread": (
            options.spread_workers,
            {"SPREAD_ROOMS": "true", "SPREAD_THRESHOLD": str(options.spread_threshold)},
        ),
    }
    fleet: Fleet | None = None
    steps: list[dict[str, Any]] = []
    try:
        for index, count in enumerate(options.viewers):
            order = SPREAD_MODES if index % 2 == 0 else SPREAD_MODES[::-1]
            pair: dict[str, Any] = {"viewers": count, "order": list(order)}
            for mode in order:
                if time.monotonic() > deadline:
                    break
                workers, env = modes[mode]
                server = start_server(options, log_dir, workers, env)
                try:
                    if fleet is None:
                        fleet = start_fleet(options, server)
                    fleet.server = server
                    print(
                        f"spread: N={count}, {mode}: {workers} worker(s) "
                        f"{sorted(server.worker_ids.values())} on {server.url}",
                        flush=True,
                    )
                    measured = sweep(fleet, [SPREAD_ROOM], [count], deadline, by_worker=True)
                    fleet.close_viewers()
                    fleet.publisher.request("close")
                finally:
                    server.stop()
                if measured:
                    pair[mode] = measured[0]
            spread_pair(pair)
            if any(mode in pair for mode in SPREAD_MODES):
                steps.append(pair)
            if time.monotonic() > deadline:
                print(f"time limit reached: skipping N={count} and beyond", flush=True)
                break
    finally:
        if fleet is not None:
            stop_agents([*fleet.viewers, fleet.publisher])
    return {"ring_memory": ring_memory(), "steps": steps}


def run_setup(options: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """Bursts of concurrent WHIP POSTs (new rooms) and WHEP POSTs (one live room)."""
    server = start_server(options, log_dir)
    fleet = start_fleet(options, server)
    whip: list[dict[str, Any]] = []
    whep: list[dict[str, Any]] = []
    try:
        print(f"setup: {options.bursts} bursts of {options.burst} on {server.url}", flush=True)
        for burst in range(options.bursts):
            rooms = [f"setup-{burst}-{i}" for i in range(options.burst)]
            records = fleet.publisher.request("publish", server.url, rooms, fleet.profile, False)
            whip.extend({"post_ms": r["post_ms"], "error": ""} for r in records)
            fleet.publisher.request("close")
        fleet.publisher.request("publish", server.url, ["setup-live"], fleet.profile, True)
        time.sleep(2)
        for _ in range(options.bursts):
            whep.extend(fleet.add_viewers(["setup-live"] * options.burst))
            fleet.close_viewers()
        fleet.publisher.request("close")
    finally:
        stop_agents([*fleet.viewers, fleet.publisher])
        server.stop()
    result: dict[str, Any] = {"whip": summarize_setup(whip), "whep": summarize_setup(whep)}
    result["whip_post_ms"] = [r["post_ms"] for r in whip]
    result["whep_records"] = whep
    return result


# --------------------------------------------------------------------------------------------
# Output


def _ms(latency: Mapping[str, Any] | None) -> str:
    if not latency:
        return "-/-"
    return f"{latency.get('p50_ms')}/{latency.get('p99_ms')}"


def spread_summary_lines(result: dict[str, Any]) -> list[str]:
    memory = result["ring_memory"]
    per_track = ", ".join(
        f"{kind} {size:,} B ({memory['slots'][kind]} x {memory['stride_bytes']} B)"
        for kind, size in memory["bytes_per_track"].items()
    )
    lines = [
        f"ring memory per track: {per_track}; per room (audio + video, once per room "
        f"whatever its edges): {memory['bytes_per_room']:,} B "
        f"({memory['bytes_per_room'] / 2**20:.2f} MiB)"
    ]
    for pair in result["steps"]:
        single, spread = pair.get("single"), pair.get("spread")
        line = f"N={pair['viewers']}:"
        if single is not None:
            line += (
                f" (a) 1 worker {single['forwarded_pps_per_worker_cpu_s']} pps/CPU-s "
                f"({single['worker_cpu_cores']} cores, loss {single['loss']}, p50/p99 "
                f"{_ms(single['latency'])} ms, agents/publisher CPU "
                f"{single['viewer_agents_cpu_cores']}/{single['publisher_cpu_cores']}, "
                f"host busy {single['host_cpu_busy']});"
            )
        if spread is not None:
            workers = ", ".join(
                f"{worker} {cores} cores/"
                f"{spread.get('by_worker', {}).get(worker, {}).get('viewers', 0)} viewers"
                for worker, cores in spread["worker_cpu"].items()
            )
            line += (
                f" (b) {spread['forwarded_pps_per_worker_cpu_s']} pps/CPU-s ({workers}; "
                f"loss {spread['loss']}, p50/p99 {_ms(spread['latency'])} ms, agents/publisher "
                f"CPU {spread['viewer_agents_cpu_cores']}/{spread['publisher_cpu_cores']}, "
                f"host busy {spread['host_cpu_busy']});"
            )
        line += f" ratio (b)/(a) {pair.get('efficiency_ratio')} (target >= 0.85)"
        lines.append(line)
        versus = spread.get("edge_vs_home") if spread is not None else None
        if versus:
            lines.append(
                f"  edge vs home ({versus['home']}) latency p50/p99: home "
                f"{_ms(versus['home_latency'])} ms, edge {_ms(versus['edge_latency'])} ms, "
                f"added {versus['added_p50_ms']}/{versus['added_p99_ms']} ms "
                f"(target < 0.2/1)"
            )
    return lines


def summary_lines(scenario: str, result: dict[str, Any]) -> list[str]:
    lines = []
    if scenario == "spread":
        return spread_summary_lines(result)
    if scenario == "setup":
        for kind in ("whip", "whep"):
            s = result[kind]
            lines.append(
                f"{kind.upper()} POST->201 p50/p99: {s['post']['p50_ms']}/{s['post']['p99_ms']} ms"
                f" ({s['sessions']} sessions, {s['failed']} failed)"
            )
        s = result["whep"]
        lines.append(
            f"WHEP first packet p50/p99: {s['first_packet']['p50_ms']}/"
            f"{s['first_packet']['p99_ms']} ms; first keyframe p50/p99: "
            f"{s['first_keyframe']['p50_ms']}/{s['first_keyframe']['p99_ms']} ms"
        )
        return lines
    for step in result["steps"]:
        latency = step["latency"]
        setup = step["setup"]
        lines.append(
            f"N={step['viewers']}: efficiency {step.get('efficiency')} "
            f"({step['forwarded_pps_per_worker_cpu_s']} vs bare {step.get('bare_pps_per_cpu_s')} "
            f"pps/CPU-s), loss {step['loss']}, latency p50/p99/p99.9 "
            f"{latency['p50_ms']}/{latency['p99_ms']}/{latency['p999_ms']} ms, "
            f"WHEP POST->201 p50/p99 {setup['post']['p50_ms']}/{setup['post']['p99_ms']} ms, "
            f"first packet/keyframe p50 {setup['first_packet']['p50_ms']}/"
            f"{setup['first_keyframe']['p50_ms']} ms, {step['worker_rss_per_viewer_kb']} KiB/viewer"
        )
    comparison = result.get("viewers_per_core")
    if comparison:
        lines.append(
            f"viewers per core at {comparison['at_viewers']} viewers (the largest step with "
            f"loss <= {LOSS_FREE:.1%}): live-sfu {comparison['live_sfu']} vs MediaRelay "
            f"{comparison['media_relay']} -> x{comparison['ratio']}"
        )
    return lines


def compare_viewers_per_core(result: dict[str, Any]) -> dict[str, Any] | None:
    """live-sfu's viewers per worker core at its largest loss-free step, against the
    MediaRelay baseline's viewers per relay core at its largest audience."""
    relay = result.get("relay_baseline")
    clean = [s for s in result["steps"] if s["loss"] is not None and s["loss"] <= LOSS_FREE]
    if not relay or not relay["steps"] or not clean:
        return None
    step = clean[-1]
    live = step["viewers_per_worker_core"]
    stock = relay["steps"][-1]["viewers_per_core"]
    if not live or not stock:
        return None
    return {
        "at_viewers": step["viewers"],
        "live_sfu": live,
        "media_relay": stock,
        "ratio": round(live / stock, 1),
    }


def plot_spread(result: dict[str, Any], plt: Any) -> Any:
    steps = result["steps"]

    def series(mode: str, pick: Any) -> tuple[list[int], list[Any]]:
        chosen = [s for s in steps if mode in s]
        return [s["viewers"] for s in chosen], [pick(s[mode]) for s in chosen]

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    for mode, label in (("single", "(a) 1 worker"), ("spread", "(b) spread")):
        ax.plot(*series(mode, lambda s: s["forwarded_pps_per_worker_cpu_s"]), "o-", label=label)
    ax.set_ylabel("forwarded packets per worker CPU-second")
    ax.legend(loc="lower left")
    ax2 = ax.twinx()
    ratios = [s for s in steps if s.get("efficiency_ratio") is not None]
    ax2.plot(
        [s["viewers"] for s in ratios], [s["efficiency_ratio"] for s in ratios], "g^:", label="b/a"
    )
    ax2.axhline(0.85, color="g", alpha=0.3)
    ax2.set_ylim(0, 1.5)
    ax2.set_ylabel("ratio (b) / (a)")
    ax2.legend(loc="lower right")
    ax = axes[0][1]
    for key, label in (("home_latency", "home"), ("edge_latency", "edge")):
        for q, style in (("p50_ms", "o-"), ("p99_ms", "x:")):
            ax.plot(
                *series(
                    "spread", lambda s, k=key, p=q: s.get("edge_vs_home", {}).get(k, {}).get(p)
                ),
                style,
                label=f"(b) {label} {q[:3]}",
            )
    ax.plot(*series("single", lambda s: s["latency"]["p50_ms"]), "s--", label="(a) p50")
    ax.set_yscale("log")
    ax.set_ylabel("publisher -> viewer latency (ms)")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    ax.plot(*series("single", lambda s: s["worker_cpu_cores"]), "s--", label="(a) worker")
    workers = sorted({w for s in steps if "spread" in s for w in s["spread"]["worker_cpu"]})
    for worker in workers:
        ax.plot(
            *series("spread", lambda s, w=worker: s["worker_cpu"].get(w)),
            "o-",
            label=f"(b) {worker}",
        )
    ax.set_ylabel("worker CPU (cores)")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    for mode in SPREAD_MODES:
        ax.plot(*series(mode, lambda s: s["host_cpu_busy"]), "o-", label=f"host busy ({mode})")
        ax.plot(
            *series(mode, lambda s: s["viewer_agents_cpu_cores"]),
            "x:",
            label=f"viewers' CPU ({mode})",
        )
    ax.set_ylabel("busy fraction / cores")
    ax.legend(fontsize=8)
    for row in axes:
        for axis in row:
            axis.set_xlabel("viewers")
            axis.grid(alpha=0.3)
    return fig


def plot(scenario: str, result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if scenario == "spread":
        fig = plot_spread(result, plt)
        fig.suptitle(f"spread: {result['date']} on {result['host']['cpu_model']}")
    elif scenario == "setup":
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for kind, values in (
            ("WHIP POST->201", result["whip_post_ms"]),
            ("WHEP POST->201", [r["post_ms"] for r in result["whep_records"]]),
            ("WHEP first packet", [r["first_packet_ms"] for r in result["whep_records"]]),
            ("WHEP first keyframe", [r["first_keyframe_ms"] for r in result["whep_records"]]),
        ):
            data = sorted(v for v in values if v is not None)
            if data:
                axis = axes[0] if "POST" in kind else axes[1]
                axis.plot(data, [(i + 1) / len(data) for i in range(len(data))], label=kind)
        for axis in axes:
            axis.set_xlabel("ms after POST")
            axis.set_ylabel("fraction of sessions")
            axis.grid(alpha=0.3)
            axis.legend()
        fig.suptitle(f"setup: bursts of {result['options']['burst']} concurrent POSTs")
    else:
        steps = result["steps"]
        n = [s["viewers"] for s in steps]
        fig, axes = plt.subplots(2, 2, figsize=(12, 8))
        ax = axes[0][0]
        ax.plot(n, [s["forwarded_pps_per_worker_cpu_s"] for s in steps], "o-", label="live-sfu")
        ax.plot(n, [s.get("bare_pps_per_cpu_s") for s in steps], "s--", label="bare loop")
        ax.set_ylabel("forwarded packets per CPU-second")
        ax2 = ax.twinx()
        ax2.plot(n, [s.get("efficiency") for s in steps], "g^:", label="efficiency")
        ax2.set_ylim(0, 1.2)
        ax2.set_ylabel("efficiency (live / bare)")
        ax.legend(loc="lower left")
        ax2.legend(loc="lower right")
        ax = axes[0][1]
        for key, label in (("p50_ms", "p50"), ("p99_ms", "p99"), ("p999_ms", "p99.9")):
            ax.plot(n, [s["latency"][key] for s in steps], "o-", label=label)
        ax.set_yscale("log")
        ax.set_ylabel("publisher -> viewer latency (ms)")
        ax.legend()
        ax = axes[1][0]
        ax.plot(n, [100 * (s["loss"] or 0) for s in steps], "o-", color="red", label="loss %")
        ax.set_ylabel("viewer-side loss (%)")
        ax3 = ax.twinx()
        ax3.plot(n, [s["worker_cpu_cores"] for s in steps], "s--", label="worker CPU (cores)")
        ax3.plot(n, [s["viewer_agents_cpu_cores"] for s in steps], "x:", label="viewers' CPU")
        ax3.set_ylabel("cores")
        ax.legend(loc="upper left")
        ax3.legend(loc="lower right")
        ax = axes[1][1]
        for key, label in (
            ("post", "POST->201"),
            ("first_packet", "first packet"),
            ("first_keyframe", "first keyframe"),
        ):
            ax.plot(n, [s["setup"][key]["p50_ms"] for s in steps], "o-", label=f"{label} p50")
            ax.plot(n, [s["setup"][key]["p99_ms"] for s in steps], "x:", label=f"{label} p99")
        ax.set_ylabel("ms after WHEP POST (viewers added in that step)")
        ax.legend(fontsize=8)
        for row in axes:
            for axis in row:
                axis.set_xlabel("viewers")
                axis.grid(alpha=0.3)
        fig.suptitle(f"{scenario}: {result['date']} on {result['host']['cpu_model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(scenario: str, result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    json_path = out_dir / f"{scenario}-{stamp}.json"
    png_path = out_dir / f"{scenario}-{stamp}.png"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    plot(scenario, result, png_path)
    shutil.copyfile(json_path, out_dir / f"{scenario}-latest.json")
    shutil.copyfile(png_path, out_dir / f"{scenario}-latest.png")
    return json_path, png_path


# --------------------------------------------------------------------------------------------
# CLI


def int_list(raw: str) -> list[int]:
    try:
        values = sorted({int(v) for v in raw.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma separated integer list: {raw!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"need positive integers: {raw!r}")
    return values


def size(raw: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in raw.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not WIDTHxHEIGHT: {raw!r}") from None
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise argparse.ArgumentTypeError(f"need even sizes of at least 16: {raw!r}")
    return width, height


def positive(kind: type) -> Any:
    def parse(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {raw!r}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.load", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="scenario", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="load this running gateway instead of starting one")
    common.add_argument(
        "--worker-pid", type=int, action="append", default=[], help="with --url: worker pids"
    )
    common.add_argument("--workers", type=positive(int), default=1, help="local workers")
    common.add_argument(
        "--worker-timeout",
        type=positive(float),
        default=5.0,
        help="the gateway's WORKER_TIMEOUT for this run (with its default 1.5 s a burst of "
        "joins can stall a worker long enough to be unresponsive and refuse joins for a "
        "moment on a contended machine)",
    )
    common.add_argument(
        "--gateway-arg", action="append", default=[], help="extra sfu-gateway flag (repeat)"
    )
    common.add_argument("--viewer-processes", type=positive(int), default=4)
    common.add_argument(
        "--decrypt-every",
        type=positive(int),
        default=4,
        help="viewers decrypt every k-th packet for latency (all are counted for loss)",
    )
    common.add_argument("--bitrate", type=positive(int), default=2_500_000, help="video bit/s")
    common.add_argument("--fps", type=positive(int), default=30)
    common.add_argument("--keyframe-interval", type=positive(float), default=2.0, help="s")
    common.add_argument("--settle", type=positive(float), default=3.0, help="s before measuring")
    common.add_argument(
        "--setup-concurrency", type=positive(int), default=50, help="concurrent WHEP POSTs"
    )
    common.add_argument("--max-minutes", type=positive(float), default=30.0)
    common.add_argument("--out", type=Path, default=RESULTS, help="directory for JSON and PNG")
    for name, help_text in (
        ("p1", "one publisher -> N viewers in one room, N swept"),
        ("p2", "R rooms x M viewers, M swept"),
    ):
        scenario = sub.add_parser(name, parents=[common], help=help_text)
        default = "10,50,100,200" if name == "p1" else "2,5,10"
        scenario.add_argument(
            "--viewers", type=int_list, default=int_list(default), help=f"(default {default})"
        )
        if name == "p2":
            scenario.add_argument("--rooms", type=positive(int), default=10)
        scenario.add_argument("--seconds", type=positive(float), default=10.0, help="window")
        scenario.add_argument("--baseline-seconds", type=positive(float), default=3.0)
        scenario.add_argument(
            "--relay-viewers",
            type=int_list,
            default=int_list("1,2"),
            help="MediaRelay baseline audience sizes",
        )
        scenario.add_argument("--no-relay", dest="relay_viewers", action="store_const", const=[])
        scenario.add_argument("--relay-size", type=size, default=(640, 360))
    spread = sub.add_parser(
        "spread",
        parents=[common],
        help="one room's N viewers on 1 worker, then spread over workers (shared memory)",
    )
    spread.add_argument(
        "--viewers",
        type=int_list,
        default=int_list("50,100,200"),
        help="(default 50,100,200)",
    )
    spread.add_argument("--seconds", type=positive(float), default=10.0, help="window")
    spread.add_argument(
        "--spread-workers", type=positive(int), default=2, help="workers of run (b) (2)"
    )
    spread.add_argument(
        "--spread-threshold",
        type=int,
        default=1,
        help="SPREAD_THRESHOLD of run (b) (1: the viewers alternate over the workers)",
    )
    setup = sub.add_parser("setup", parents=[common], help="bursts of concurrent POSTs")
    setup.add_argument("--burst", type=positive(int), default=50)
    setup.add_argument("--bursts", type=positive(int), default=3)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.worker_pid and not options.url:
        parser.error("--worker-pid needs --url")
    if options.scenario == "spread" and options.url:
        parser.error("spread starts its own gateways (1 worker, then several): no --url")
    log_dir = Path(tempfile.mkdtemp(prefix="sfu-bench-"))
    started = datetime.datetime.now().astimezone()
    try:
        if options.scenario == "setup":
            result = run_setup(options, log_dir)
        elif options.scenario == "spread":
            result = run_spread(options, log_dir)
        else:
            result = run_fanout(options, log_dir)
    except BenchError as exc:
        print(f"bench failed: {exc} (logs in {log_dir})", file=sys.stderr)
        return 1
    result = {
        "scenario": options.scenario,
        "date": started.isoformat(timespec="seconds"),
        "host": host_description(),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(options).items()},
        **result,
    }
    json_path, png_path = write_outputs(options.scenario, result, options.out)
    for line in summary_lines(options.scenario, result):
        print(line)
    print(f"wrote {json_path} and {png_path}")
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
