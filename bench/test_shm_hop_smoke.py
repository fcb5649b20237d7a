"""The cross-process hop benchmark end to end, tiny: one reader, 0.3 s, one run.

Runs `python -m bench.shm_hop` with the ring (eventfd per burst) and AF_UNIX datagrams (the
`null` baseline runs with them), then checks that the JSON carries every figure for every
variant and that nothing was lost at this low rate. No figure is compared with a target:
performance is reported by bench runs, never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.shm_hop import COUNTS, FIGURES
from testkit.processes import REPO

VARIANTS = ("null", "shm-eventfd-burst", "unix-dgram")
# Figures that need readers: the null variant has none (and no IPC to subtract from).
READER_FIGURES = {
    "writer_ipc_us_per_pkt",
    "writer_ipc_us_per_pkt_per_reader",
    "reader_cpu_us_per_pkt",
    "hop_us_per_pkt_per_reader",
    "pkts_per_wake",
    "latency_p50_us",
    "latency_p99_us",
}


def test_shm_hop_reports_every_figure_without_loss(tmp_path: Path) -> None:
    out = tmp_path / "shm_hop.json"
    command = [sys.executable, "-m", "bench.shm_hop", "--readers", "1", "--seconds", "0.3"]
    command += ["--runs", "1", "--rate", "500", "--variants", "shm-eventfd-burst,unix-dgram"]
    command += ["--json", str(out)]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "| shm-eventfd-burst |" in run.stdout

    result = json.loads(out.read_text())
    assert result["host"]["nproc"] >= 1
    cells = result["results"]["1"]
    assert sorted(cells) == sorted(VARIANTS)
    for variant in VARIANTS:
        summary = cells[variant]["summary"]
        (cell,) = cells[variant]["runs"]
        for name in FIGURES:
            assert name in summary, (variant, name)
            assert name in cell, (variant, name)
            if variant == "null" and name in READER_FIGURES:
                assert summary[name] is None
            else:
                assert set(summary[name]) == {"min", "median"}, (variant, name)
        for name in COUNTS:
            assert name in summary, (variant, name)
        assert cell["sent"] > 0
        if variant != "null":
            assert cell["readers"] == 1
            assert cell["received"] == cell["sent"], variant
            assert summary["lost"] == 0, variant
            assert summary["drops"] == 0, variant
            assert cell["latency_samples"] == cell["received"]
