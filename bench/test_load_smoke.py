"""The load generator end to end, small: P1 with two viewers for two seconds.

Starts a real sfu-gateway with one worker, a paced WHIP publisher and two WHEP viewers in a
viewer process, then the bare fan-out baseline, exactly as `bench/run.sh p1` does; checks
that the JSON carries every figure and that the PNG was drawn. No figure is compared with a
target: performance is reported by bench runs, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testkit.processes import REPO


def test_p1_with_two_viewers_reports_every_figure(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.load", "p1", "--viewers", "2", "--seconds", "2"]
    command += ["--settle", "1", "--baseline-seconds", "0.5", "--no-relay"]
    command += ["--viewer-processes", "1", "--out", str(tmp_path)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "efficiency" in run.stdout

    result = json.loads((tmp_path / "p1-latest.json").read_text())
    assert (tmp_path / "p1-latest.png").stat().st_size > 10_000
    assert result["host"]["nproc"] >= 1
    (step,) = result["steps"]
    assert step["viewers"] == 2
    assert step["viewers_connected"] == 2
    # Video (~310 packets/s) and audio (50/s) reach both viewers.
    assert step["forwarded_pps"] > 2 * 200
    assert step["publisher_pps"] > 200
    assert 0 <= step["loss"] < 0.5
    assert step["worker_cpu_cores"] > 0
    assert step["forwarded_pps_per_worker_cpu_s"] > 0
    assert step["efficiency"] > 0
    assert step["latency"]["samples"] > 100
    assert 0 < step["latency"]["p50_ms"] <= step["latency"]["p99_ms"] <= step["latency"]["p999_ms"]
    setup = step["setup"]
    assert setup["failed"] == 0
    for figure in ("post", "first_packet", "first_keyframe"):
        assert setup[figure]["count"] == 2
        assert setup[figure]["p50_ms"] > 0
    assert setup["post"]["p50_ms"] <= setup["first_packet"]["p50_ms"]
    (bare,) = result["bare_baseline"]
    assert bare["viewers"] == 2
    assert bare["pps_per_cpu_s"] > 0
    assert bare["srtp_profile"] == step["srtp_profile"]
