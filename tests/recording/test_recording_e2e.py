"""Recording through the whole server: sfu-gateway, a real worker, a real publisher process.

The publisher is testkit/client.py (aiortc: VP8 or H264 video with Opus audio). The
files are fetched through the admin download route and read back with PyAV.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.processes import GatewayProcess, wait_sync, worker_pids
from tests.recording.conftest import admin_get, list_records, record_env
from tests.recording.harness import inspect
from tests.support.clients import PeerProcess, run_peer

SECONDS = 4.0


def _finished(gateway: GatewayProcess, count: int) -> list[dict[str, Any]] | None:
    items = list_records(gateway)
    done = [i for i in items if i["state"] != "recording"]
    return items if len(items) == count and len(done) == count else None


def _download(gateway: GatewayProcess, item: dict[str, Any], into: Path) -> Path:
    status, body = admin_get(gateway.url + item["url"])
    assert status == 200, body[:300]
    path = into / str(item["name"])
    path.write_bytes(body)
    assert len(body) == item["size"]
    return path


@pytest.mark.parametrize(
    ("video", "decoder", "extension"), [("vp8", "vp8", "ivf"), ("h264", "h264", "mkv")]
)
def test_each_track_of_a_session_becomes_a_file_that_plays(
    gateway_factory: Callable[..., GatewayProcess],
    tmp_path: Path,
    video: str,
    decoder: str,
    extension: str,
) -> None:
    gateway = gateway_factory(workers=1, env=record_env(tmp_path / "records"))
    result = run_peer(
        "publish", gateway.url, "rec-room", "--seconds", str(SECONDS), "--video", video
    )
    assert result["ok"], result
    published = SECONDS - result["connect_ms"] / 1000

    items = wait_sync(
        lambda: _finished(gateway, 2), 20, "two finished recordings", gateway.log, interval=0.2
    )
    by_kind = {item["kind"]: item for item in items}
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    video_item, audio_item = by_kind["video"], by_kind["audio"]
    for item in (video_item, audio_item):
        assert item["state"] == "complete" and item["room"] == "rec-room"
        assert item["name"].startswith(f"rec-room_{item['track_id']}_")
        assert item["upload"] == {"state": "local"}  # uploads are off
    assert video_item["name"].endswith("." + extension)
    assert audio_item["name"].endswith(".ogg") and audio_item["codec"] == "audio/opus"

    video_report = inspect(_download(gateway, video_item, downloads))
    assert video_report.codec == decoder
    assert (video_report.width, video_report.height) == (640, 360)
    assert video_report.decoded >= video_report.frames - 1 > 0
    assert video_report.duration == pytest.approx(published, rel=0.10)

    audio_report = inspect(_download(gateway, audio_item, downloads))
    assert audio_report.codec == "opus"
    assert (audio_report.channels, audio_report.sample_rate) == (2, 48000)
    assert audio_report.decoded == audio_report.frames > 0
    assert audio_report.duration == pytest.approx(published, rel=0.10)

    # One clock for both files: their first timestamps are where the tracks started.
    assert abs(video_report.first_pts - audio_report.first_pts) < 0.25

    total = video_item["size"] + audio_item["size"]
    written = 'live_recording_bytes_written_total{worker="local-0"}'

    def reported() -> str | None:  # the next heartbeat carries the final counters
        metrics = admin_get(gateway.url + "/metrics")[1].decode()
        return metrics if _sample(metrics, written) == total else None

    metrics = wait_sync(reported, 5, f"{written} == {total}", gateway.log, interval=0.2)
    assert 'live_recordings_active{worker="local-0"} 0.0' in metrics
    assert 'live_recording_write_errors_total{worker="local-0"} 0.0' in metrics


def test_a_worker_killed_while_recording_leaves_files_repaired_on_restart(
    gateway_factory: Callable[..., GatewayProcess],
    peers: Callable[..., PeerProcess],
    tmp_path: Path,
) -> None:
    records = tmp_path / "records"
    gateway = gateway_factory(workers=1, env=record_env(records))
    [worker] = worker_pids(gateway)
    publisher = peers("publish", gateway.url, "crash-room", "--seconds", "60")

    def flushed() -> list[dict[str, Any]] | None:
        items = list_records(gateway) if records.is_dir() else []
        ready = [i for i in items if i["state"] == "recording" and i["duration"] >= 1.5]
        return items if len(ready) == 2 else None

    wait_sync(flushed, 30, "two recordings with 1.5 s checkpointed", gateway.log, interval=0.2)
    time.sleep(1.0)
    os.kill(worker, signal.SIGKILL)
    killed_at = time.time()
    publisher.kill()

    # The supervisor starts a new worker, which repairs what the dead one left.
    items = wait_sync(
        lambda: _finished(gateway, 2), 30, "repaired recordings", gateway.log, interval=0.2
    )
    assert worker not in worker_pids(gateway)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    for item in items:
        assert item["state"] == "complete" and item["repaired"], item
        report = inspect(_download(gateway, item, downloads))
        assert report.decoded >= report.frames - 1 > 0
        recorded_until = killed_at - _unix(item["start_time"])
        # Valid up to the last flushed second before the kill (see test_crash_and_disk).
        assert recorded_until - 3.0 <= report.duration <= recorded_until + 0.2, item
        assert item["duration"] == pytest.approx(report.duration, abs=0.05)


def _sample(metrics: str, series: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics")


def _unix(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_vp9_from_gstreamer_is_recorded_as_vp9_ivf(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    """aiortc cannot send VP9; GStreamer's webrtcbin (tests/clients/gst_whip.py) can."""
    from tests.support.clients import require_gstreamer, spawn_gst_publisher

    require_gstreamer()
    gateway = gateway_factory(workers=1, env=record_env(tmp_path / "records"))
    publisher = spawn_gst_publisher(
        gateway.url, "vp9-room", "--codec", "vp9", "--seconds", str(SECONDS)
    )
    result = publisher.result(timeout=60)
    assert result["ok"], result

    items = wait_sync(
        lambda: _finished(gateway, 2), 20, "two finished recordings", gateway.log, interval=0.2
    )
    [video_item] = [item for item in items if item["kind"] == "video"]
    assert video_item["codec"] == "video/vp9" and video_item["name"].endswith(".ivf")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    path = _download(gateway, video_item, downloads)
    assert path.read_bytes()[8:12] == b"VP90"  # the IVF fourcc
    report = inspect(path)
    assert report.codec == "vp9" and (report.width, report.height) == (320, 240)
    assert report.decoded >= report.frames - 1 > 0
    assert report.duration == pytest.approx(result["elapsed_s"], rel=0.10)
