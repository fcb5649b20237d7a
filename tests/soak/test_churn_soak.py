"""Churn soak: sessions come and go for a long time; no process may keep what they left.

A real gateway with 2 workers serves, round after round, two aiortc publishers that connect
and send media (testkit/client.py), a viewer per room that connects and decodes, a WHEP
offer per room that never connects, and pairs of WHIP offers that never connect; every
session is DELETEd. Between rounds, once the gateway reports no session left, the test
samples the gateway and each worker: RSS, open fds, threads, UDP sockets and (from /metrics,
where the gateway exports them) asyncio tasks. Sampling at these quiescent points compares
like with like: a live session legitimately holds sockets and memory.

After SOAK_WARMUP_SECONDS (allocator pools, lazy imports and thread pools fill up there),
the median of the first 3 samples is the baseline and the median of the last 3 the end
value. The test fails if any figure of any process grew by more than 5 % (at least +2 for
the small counts) or if a worker restarted. Every sample goes to
bench/results/soak-<timestamp>.json.

    SOAK_SECONDS=180 SOAK_WARMUP_SECONDS=40 .venv/bin/python -m pytest -m slow -s \
        tests/soak/test_churn_soak.py
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from testkit.processes import REPO, GatewayProcess
from tests.interop.sdp_offers import CHROME_AUDIO, CHROME_VIDEO, Section, browser_offer, only
from tests.support.clients import PeerProcess, spawn_peer

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "1800"))
WARMUP_SECONDS = float(os.environ.get("SOAK_WARMUP_SECONDS", "120"))
SAMPLE_INTERVAL = 10.0
WORKERS = 2
ADMIN_TOKEN = "soak-admin-token"
RESULTS_DIR = REPO / "bench" / "results"

PUBLISH_SECONDS = 7.0  # each publisher's life; viewers join ~2 s in
VIEW_SECONDS = 4.0
BARE_PAIRS = 10  # WHIP offers that never connect, per round, two open at once
PEER_TIMEOUT = 60.0
QUIET_TIMEOUT = 10.0  # wait at most this long for the gateway to report no session
HTTP_TIMEOUT = 10.0
MAX_ERRORS_KEPT = 20
READY_WORKERS_TIMEOUT = 30.0

GROWTH_RATIO = 0.05
COUNT_FLOOR = 2  # threads, fds, sockets, tasks: +2 is always allowed
METRICS = ("rss_bytes", "fds", "threads", "udp_sockets", "asyncio_tasks")
BASELINE_SAMPLES = 3
MIN_MEASURED_SAMPLES = 2 * BASELINE_SAMPLES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(int(SOAK_SECONDS + 300)),
]


# --- /proc ------------------------------------------------------------------------------


def _child_pids(parent: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            children.append(int(entry))
    return sorted(children)


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
    except OSError:
        return False
    return b"-m" in argv and b"sfu" in argv


def _udp_inodes() -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table, encoding="ascii") as rows:
                next(rows, None)
                inodes.update(row.split()[9] for row in rows if row.strip())
        except OSError:
            continue
    return inodes


def _process_figures(pid: int, udp_inodes: set[str]) -> dict[str, int] | None:
    """RSS, fds, threads and UDP sockets of `pid`; None when it is gone."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        threads = 0
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    sockets = 0
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in udp_inodes:
            sockets += 1
    return {"rss_bytes": rss, "fds": len(fds), "threads": threads, "udp_sockets": sockets}


# --- the gateway's HTTP API ----------------------------------------------------------------


def _http(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return int(response.status), dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _admin_workers(base: str) -> list[dict[str, Any]] | None:
    try:
        status, _, body = _http(
            "GET", base + "/api/admin/workers", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
    except OSError:
        return None
    if status != 200:
        return None
    workers: list[dict[str, Any]] = json.loads(body)
    return workers


_GATEWAY_TASKS = re.compile(r"^live_gateway_asyncio_tasks (\S+)$", re.MULTILINE)
_WORKER_TASKS = re.compile(r'^live_worker_asyncio_tasks\{worker="([^"]+)"\} (\S+)$', re.MULTILINE)


def _task_gauges(base: str) -> tuple[int | None, dict[str, int]]:
    """(gateway tasks, worker id -> tasks) from /metrics; None/{} where not exported."""
    try:
        status, _, body = _http("GET", base + "/metrics")
    except OSError:
        return None, {}
    if status != 200:
        return None, {}
    text = body.decode(errors="replace")
    found = _GATEWAY_TASKS.search(text)
    gateway = int(float(found.group(1))) if found else None
    workers = {m.group(1): int(float(m.group(2))) for m in _WORKER_TASKS.finditer(text)}
    return gateway, workers


# --- sessions that never connect ------------------------------------------------------------

WHIP_OFFER_SECTIONS = [
    Section("audio", formats=only(CHROME_AUDIO, "opus")),
    Section("video", formats=only(CHROME_VIDEO, "VP8")),
]
WHEP_OFFER_SECTIONS = [
    Section("audio", direction="recvonly", formats=only(CHROME_AUDIO, "opus")),
    Section("video", direction="recvonly", formats=only(CHROME_VIDEO, "VP8")),
]
SDP = {"Content-Type": "application/sdp"}


@dataclass
class Tally:
    bare_ok: int = 0
    bare_failures: int = 0
    bare_errors: list[str] = field(default_factory=list)  # the first few
    whep_bare_ok: int = 0
    whep_bare_skipped: int = 0  # the room had no publisher (yet, or any more)
    publishers_ok: int = 0
    publishers: int = 0
    viewers_ok: int = 0
    viewers: int = 0
    peer_errors: list[str] = field(default_factory=list)
    rounds: int = 0

    def bare_error(self, message: str) -> None:
        self.bare_failures += 1
        if len(self.bare_errors) < MAX_ERRORS_KEPT:
            self.bare_errors.append(message)

    def peer_error(self, message: str) -> None:
        if len(self.peer_errors) < MAX_ERRORS_KEPT:
            self.peer_errors.append(message)


def _post(url: str, offer: str) -> tuple[int, str | None, str]:
    status, headers, body = _http("POST", url, offer.encode(), SDP)
    location = headers.get("Location")
    if location is not None:
        location = urllib.parse.urljoin(url, location)
    return status, location, body.decode(errors="replace")[:300]


def _delete(location: str, tally: Tally) -> None:
    status, _, body = _http("DELETE", location)
    if status not in (200, 204):
        tally.bare_error(f"DELETE {location}: {status} {body[:200]!r}")


def _bare_pairs(base: str, tag: str, pairs: int, tally: Tally) -> None:
    """WHIP offers that never connect, two open at once so that both workers get some."""
    for index in range(pairs):
        locations = []
        for side in "ab":
            url = f"{base}/api/whip/publish/bare-{tag}-{index}{side}"
            status, location, body = _post(url, browser_offer(WHIP_OFFER_SECTIONS))
            if status == 201 and location is not None:
                locations.append(location)
                tally.bare_ok += 1
            else:
                tally.bare_error(f"POST {url}: {status} {body!r}")
        for location in locations:
            _delete(location, tally)


def _bare_viewer(base: str, room: str, tally: Tally) -> None:
    """A WHEP offer to a live room that never connects, then its DELETE."""
    status, location, body = _post(
        f"{base}/api/whep/play/{room}", browser_offer(WHEP_OFFER_SECTIONS)
    )
    if status == 201 and location is not None:
        tally.whep_bare_ok += 1
        _delete(location, tally)
    elif status in (404, 409):
        tally.whep_bare_skipped += 1
    else:
        tally.bare_error(f"POST whep {room}: {status} {body!r}")


# --- one round -------------------------------------------------------------------------------


def _churn_round(base: str, number: int, tally: Tally) -> None:
    """Two rooms with a connected publisher and viewer each, plus never-connected sessions.

    Bounded: every peer process has PEER_TIMEOUT, every HTTP call HTTP_TIMEOUT.
    """
    rooms = [f"soak-{number}-a", f"soak-{number}-b"]
    started = time.monotonic()
    peers: list[tuple[str, PeerProcess]] = []
    try:
        for room in rooms:
            publisher = spawn_peer(
                "publish", base, room, "--seconds", f"{PUBLISH_SECONDS:g}",
                "--width", "320", "--height", "180", "--fps", "15",
            )  # fmt: skip
            peers.append(("publisher", publisher))
        _bare_pairs(base, str(number), BARE_PAIRS, tally)
        time.sleep(max(0.0, started + 2.0 - time.monotonic()))
        for room in rooms:
            viewer = spawn_peer(
                "view", base, room, "--seconds", f"{VIEW_SECONDS:g}",
                "--retry-404-for", "5",
            )  # fmt: skip
            peers.append(("viewer", viewer))
        time.sleep(1.0)
        for room in rooms:
            _bare_viewer(base, room, tally)
        for kind, peer in peers:
            try:
                result = peer.result(timeout=PEER_TIMEOUT)
            except AssertionError as exc:
                tally.peer_error(f"{kind}: {str(exc)[:300]}")
                result = {"ok": False}
            ok = bool(result.get("ok"))
            if kind == "publisher":
                tally.publishers += 1
                tally.publishers_ok += ok
            else:
                tally.viewers += 1
                tally.viewers_ok += ok
            if not ok:
                tally.peer_error(f"{kind}: {json.dumps(result)[:300]}")
    finally:
        for _, peer in peers:
            peer.kill()
    tally.rounds += 1


# --- samples ---------------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the soak started
    quiet: bool  # the gateway reported no session when it was taken
    processes: dict[str, dict[str, Any]]  # name -> pid and figures


def _wait_quiet(base: str) -> bool:
    deadline = time.monotonic() + QUIET_TIMEOUT
    while True:
        workers = _admin_workers(base)
        if workers is not None and all(w.get("sessions", 0) == 0 for w in workers):
            time.sleep(0.5)  # let the workers finish closing what they were told to close
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)


def _take_sample(gateway: GatewayProcess, t: float, quiet: bool) -> Sample:
    base = gateway.url
    worker_ids = {int(w["pid"]): str(w["id"]) for w in _admin_workers(base) or [] if w.get("pid")}
    gateway_tasks, worker_tasks = _task_gauges(base)
    inodes = _udp_inodes()
    processes: dict[str, dict[str, Any]] = {}
    figures = _process_figures(gateway.process.pid, inodes)
    processes["gateway"] = {"pid": gateway.process.pid, **(figures or {})}
    processes["gateway"]["asyncio_tasks"] = gateway_tasks
    for pid in _child_pids(gateway.process.pid):
        if not _is_worker(pid):
            continue
        name = worker_ids.get(pid, f"worker-pid-{pid}")
        figures = _process_figures(pid, inodes)
        if figures is None:
            continue
        processes[name] = {"pid": pid, **figures, "asyncio_tasks": worker_tasks.get(name)}
    return Sample(t=round(t, 2), quiet=quiet, processes=processes)


def _median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    if len(present) < len(values) or not present:
        return None
    return float(statistics.median(present))


def _allowed_growth(metric: str, baseline: float) -> float:
    growth = baseline * GROWTH_RATIO
    return growth if metric == "rss_bytes" else max(growth, COUNT_FLOOR)


def _restarts(samples: list[Sample], workers: int) -> list[str]:
    """Every process must keep its pid from the first sample to the last, warm-up included."""
    failures = []
    names = sorted({name for sample in samples for name in sample.processes})
    for name in names:
        pids = sorted({s.processes[name]["pid"] for s in samples if name in s.processes})
        present = sum(1 for s in samples if name in s.processes)
        if len(pids) > 1 or present < len(samples):
            failures.append(
                f"{name} restarted: pids {pids}, present in {present} of {len(samples)} samples"
            )
    for sample in samples:
        found = len(sample.processes) - 1
        if found != workers:
            failures.append(f"{found} workers instead of {workers} at {sample.t:g} s")
            break
    return failures


def _verdicts(measured: list[Sample]) -> tuple[list[dict[str, Any]], list[str]]:
    """Per process and metric: baseline, end, growth, allowed; and the failures."""
    first, last = measured[:BASELINE_SAMPLES], measured[-BASELINE_SAMPLES:]
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    names = sorted({name for sample in measured for name in sample.processes})
    for name in names:
        if any(name not in s.processes for s in measured):
            continue  # reported by _restarts
        for metric in METRICS:
            start = _median([s.processes[name].get(metric) for s in first])
            end = _median([s.processes[name].get(metric) for s in last])
            row: dict[str, Any] = {"process": name, "metric": metric, "start": start, "end": end}
            if start is not None and end is not None:
                allowed = _allowed_growth(metric, start)
                row.update(growth=end - start, allowed=allowed, ok=end - start <= allowed)
                if end - start > allowed:
                    failures.append(
                        f"{name} {metric}: {start:g} -> {end:g} (+{end - start:g}, "
                        f"allowed +{allowed:g})"
                    )
            rows.append(row)
    return rows, failures


def _table(rows: list[dict[str, Any]]) -> str:
    def show(metric: str, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value / 1e6:.2f} MB" if metric == "rss_bytes" else f"{value:g}"

    lines = [f"{'process':<14}{'metric':<15}{'start':>12}{'end':>12}{'growth':>12}  verdict"]
    for row in rows:
        metric = row["metric"]
        growth = row.get("growth")
        verdict = "-" if "ok" not in row else ("ok" if row["ok"] else "GREW")
        lines.append(
            f"{row['process']:<14}{metric:<15}{show(metric, row['start']):>12}"
            f"{show(metric, row['end']):>12}{show(metric, growth):>12}  {verdict}"
        )
    return "\n".join(lines)


# --- the test --------------------------------------------------------------------------------


def test_churn_leaves_no_growth(gateway_factory: Callable[..., GatewayProcess]) -> None:
    assert 0 <= WARMUP_SECONDS < SOAK_SECONDS, "SOAK_WARMUP_SECONDS must be below SOAK_SECONDS"
    interval = min(SAMPLE_INTERVAL, (SOAK_SECONDS - WARMUP_SECONDS) / (MIN_MEASURED_SAMPLES + 2))
    gateway = gateway_factory(
        workers=WORKERS,
        args=[
            "--rate-limit-rps", "0",
            "--max-pending-sessions-per-ip", "0",
            "--admin-token", ADMIN_TOKEN,
            "--bind-addresses", "127.0.0.1",
            "--session-connect-timeout", "10",
        ],
    )  # fmt: skip
    deadline = time.monotonic() + READY_WORKERS_TIMEOUT
    while len(_admin_workers(gateway.url) or []) < WORKERS:
        assert time.monotonic() < deadline, f"the workers did not register:\n{gateway.log()}"
        time.sleep(0.2)

    tally = Tally()
    samples: list[Sample] = []
    started = time.monotonic()
    last_sample = -interval
    number = 0
    while time.monotonic() - started < SOAK_SECONDS:
        number += 1
        _churn_round(gateway.url, number, tally)
        now = time.monotonic() - started
        # Rounds last several seconds: sample after the round that ends nearest the interval.
        if now - last_sample >= 0.75 * interval or now >= SOAK_SECONDS:
            quiet = _wait_quiet(gateway.url)
            samples.append(_take_sample(gateway, time.monotonic() - started, quiet))
            last_sample = now

    after_warmup = [s for s in samples if s.t >= WARMUP_SECONDS]
    # A sample taken while sessions were still open does not compare with the others.
    measured = [s for s in after_warmup if s.quiet]
    rows, failures = _verdicts(measured) if len(measured) >= MIN_MEASURED_SAMPLES else ([], [])
    failures = _restarts(samples, WORKERS) + failures
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report_path = RESULTS_DIR / f"soak-{stamp}.json"
    report = {
        "soak_seconds": SOAK_SECONDS,
        "warmup_seconds": WARMUP_SECONDS,
        "sample_interval": interval,
        "tally": tally.__dict__,
        "verdicts": rows,
        "failures": failures,
        "samples": [s.__dict__ for s in samples],
    }
    report_path.write_text(json.dumps(report, indent=1))
    print(f"\nchurn soak: {tally.rounds} rounds, {len(samples)} samples -> {report_path}")
    print(
        f"publishers ok {tally.publishers_ok}/{tally.publishers}, "
        f"viewers ok {tally.viewers_ok}/{tally.viewers}, "
        f"bare WHIP {tally.bare_ok} ({tally.bare_failures} errors), "
        f"bare WHEP {tally.whep_bare_ok} ({tally.whep_bare_skipped} skipped)"
    )
    print(_table(rows))

    assert len(measured) >= MIN_MEASURED_SAMPLES, (
        f"only {len(measured)} quiet samples after the warm-up ({len(after_warmup)} in all); "
        "run longer (SOAK_SECONDS)"
    )
    assert len(measured) * 2 >= len(after_warmup), (
        f"sessions did not drain between rounds in {len(after_warmup) - len(measured)} of "
        f"{len(after_warmup)} samples"
    )
    assert tally.publishers_ok * 2 >= tally.publishers, (
        f"most publishers failed, the soak did not exercise media: {tally.peer_errors[:5]}"
    )
    assert tally.bare_failures * 20 <= tally.bare_ok, tally.bare_errors
    assert not failures, "\n".join(failures) + "\n" + _table(rows)
