"""A recording process killed with SIGKILL, and one whose disk fills up.

Each test runs the production recorder in its own process (tests/recording/harness.py),
because SIGKILL and a file-size limit have to hit a real process: RLIMIT_FSIZE makes the
kernel fail writes with EFBIG exactly as a full disk fails them with ENOSPC (Python ignores
SIGXFSZ, so the process lives on and sees the error).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from common.sidecar import COMPLETE, RECORDING
from sfu.recording.store import repair_unfinished
from tests.recording.harness import inspect, recordings

HARNESS = Path(__file__).resolve().parent / "harness.py"


def _start(
    directory: Path,
    codec: str,
    seconds: float,
    then: str,
    preexec_fn: Callable[[], object] | None = None,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HARNESS), str(directory), codec, str(seconds), then],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def _wait_line(process: subprocess.Popen[str], expected: str, within: float = 30.0) -> float:
    deadline = time.monotonic() + within
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.strip() == expected:
            return time.monotonic()
    process.kill()
    raise AssertionError(f"no {expected!r} from the harness: {process.communicate()[1][-3000:]}")


@pytest.mark.parametrize("codec", ["opus", "vp8", "h264"])  # one per container: ogg, ivf, mkv
def test_sigkill_leaves_a_file_that_the_next_start_repairs(tmp_path: Path, codec: str) -> None:
    process = _start(tmp_path, codec, 20, "wait")
    try:
        started = _wait_line(process, "started")
        _wait_line(process, "flushed")
        time.sleep(1.5)
        # While its writer lives, a recording is locked: another process leaves it alone.
        assert repair_unfinished(str(tmp_path)) == []
        [live] = recordings(tmp_path)
        assert live.state == RECORDING
        process.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        process.wait(10)
    finally:
        process.kill()
        process.communicate()
    fed = killed - started

    [left] = recordings(tmp_path)
    assert left.state == RECORDING and left.durable_bytes > 0
    repaired = repair_unfinished(str(tmp_path))
    assert [info.name for info in repaired] == [left.name]
    [info] = recordings(tmp_path)
    assert info.state == COMPLETE and info.repaired
    report = inspect(tmp_path / info.name)
    assert report.decoded >= report.frames - 1 > 0
    # Valid up to the last flushed second: the checkpoint is at most 1 s old and the
    # muxer emits at least every 0.5 s, so ~2 s before the kill are lost at most (3 s:
    # room for a loaded machine delaying the writer thread).
    assert fed - 3.0 <= report.duration <= fed + 0.2, (fed, report.duration)
    assert info.duration == pytest.approx(report.duration, abs=0.05)
    assert info.bytes == (tmp_path / info.name).stat().st_size
    assert repair_unfinished(str(tmp_path)) == []  # done once


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))


def test_a_full_disk_fails_the_recording_but_not_forwarding(tmp_path: Path) -> None:
    process = _start(tmp_path, "vp8", 4, "finish", preexec_fn=_limit_file_size)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-3000:]
    counters = json.loads(stdout.strip().splitlines()[-1])
    assert counters["write_errors"] == 1
    assert counters["packets_in"] == counters["packets"]  # forwarding never stopped
    assert "recording room1_track-1_" in stderr and "File too large" in stderr  # the log line

    [info] = recordings(tmp_path)
    assert "File too large" in info.error
    # What was written before the error was kept: salvaged like a crashed recording.
    assert info.state == COMPLETE and info.repaired
    report = inspect(tmp_path / info.name)
    assert 0 < report.frames and report.decoded >= report.frames - 1
    assert report.duration < 4.0
    assert os.path.getsize(tmp_path / info.name) <= 16_000


def test_an_unwritable_record_dir_fails_the_recording_but_not_forwarding(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "records"
    blocker.write_text("a file where the directory should be")
    process = _start(blocker, "opus", 1.5, "finish")
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-3000:]
    counters = json.loads(stdout.strip().splitlines()[-1])
    assert counters["write_errors"] == 1
    assert counters["packets_in"] == counters["packets"]
    assert "cannot create a file in" in stderr
