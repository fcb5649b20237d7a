"""The spread scenario end to end, small: two viewers for one second, on one worker and then
spread over two.

Runs `python -m bench.load spread` as `bench/run.sh spread` would, and checks that the JSON
carries every figure: both runs, the ratio, CPU per worker, where the viewers were (one on
the home, one on the edge, as the gateway and the UDP sockets both say), edge against home
latency, and the ring memory; and that the PNG was drawn. No figure is compared with a
target: performance is reported by bench runs, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ipc.shm.ring import DEFAULT_SLOTS, DEFAULT_STRIDE, ring_size
from testkit.processes import REPO


@pytest.mark.slow  # the spread path itself is tested in tests/plane; this is the report's
def test_spread_with_two_viewers_reports_every_figure(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.load", "spread", "--viewers", "2", "--seconds", "1"]
    command += ["--settle", "1", "--viewer-processes", "1", "--out", str(tmp_path)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "ratio (b)/(a)" in run.stdout
    assert "edge vs home" in run.stdout

    result = json.loads((tmp_path / "spread-latest.json").read_text())
    assert (tmp_path / "spread-latest.png").stat().st_size > 10_000
    memory = result["ring_memory"]
    video = ring_size(DEFAULT_SLOTS["video"], DEFAULT_STRIDE)
    audio = ring_size(DEFAULT_SLOTS["audio"], DEFAULT_STRIDE)
    assert memory["bytes_per_track"] == {"audio": audio, "video": video}
    assert memory["bytes_per_room"] == audio + video

    (pair,) = result["steps"]
    assert pair["viewers"] == 2
    assert pair["efficiency_ratio"] > 0
    for mode, workers in (("single", 1), ("spread", 2)):
        step = pair[mode]
        assert step["viewers"] == step["viewers_connected"] == 2
        assert step["setup"]["failed"] == 0
        assert step["forwarded_pps"] > 2 * 200
        assert 0 <= step["loss"] < 0.5
        assert step["forwarded_pps_per_worker_cpu_s"] > 0
        assert len(step["worker_cpu"]) == workers
        assert sum(step["worker_cpu"].values()) == pytest.approx(step["worker_cpu_cores"], abs=0.01)
        for key in ("viewer_agents_cpu_cores", "publisher_cpu_cores", "host_cpu_busy"):
            assert step[key] > 0
        assert step["latency"]["samples"] > 50
        placement = step["placement"]
        assert placement["home"] in ("local-0", "local-1")
        assert placement["viewers_per_worker"] == placement["viewers_per_worker_seen"]
        expected = {"local-0": 2} if workers == 1 else {"local-0": 1, "local-1": 1}
        assert placement["viewers_per_worker"] == expected
        assert {w: f["viewers"] for w, f in step["by_worker"].items()} == expected

    spread = pair["spread"]
    versus = spread["edge_vs_home"]
    edge = ({"local-0", "local-1"} - {versus["home"]}).pop()
    for side in ("home_latency", "edge_latency"):
        assert 0 < versus[side]["p50_ms"] <= versus[side]["p99_ms"]
        assert versus[side]["samples"] > 20
    assert versus["added_p50_ms"] is not None and versus["added_p99_ms"] is not None
    # The edge got its packets through the rings: about as many as the home viewer.
    by_worker = spread["by_worker"]
    assert by_worker[edge]["forwarded_pps"] > 200
    assert by_worker[edge]["loss"] < 0.5
