"""Uploads to a real S3-compatible server (moto in server mode, its own process).

The outage is real too: the S3 server is not running, then it is started at the same
address; the gateway restart is a real SIGTERM and a new gateway process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.sidecar import COMPLETE, RecordingInfo, read_sidecar, write_sidecar
from gateway.config import load_config
from gateway.uploader import Uploader, make_client, object_key, retry_delay
from testkit.processes import REPO, GatewayProcess, wait_sync
from tests.recording.conftest import BUCKET, MotoServer, admin_get, list_records
from tests.recording.harness import inspect
from tests.support.clients import run_peer


def _publish(gateway: GatewayProcess, room: str) -> None:
    result = run_peer("publish", gateway.url, room, "--seconds", "2")
    assert result["ok"], result


def _metrics(gateway: GatewayProcess) -> dict[str, float]:
    status, body = admin_get(gateway.url + "/metrics")
    assert status == 200
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _all(state: str, count: int = 2) -> Callable[[GatewayProcess], list[dict[str, Any]] | None]:
    def check(gateway: GatewayProcess) -> list[dict[str, Any]] | None:
        items = list_records(gateway)
        if len(items) == count and all(i["upload"]["state"] == state for i in items):
            return items
        return None

    return check


def test_finished_recordings_are_uploaded_then_deleted_locally(
    gateway_factory: Callable[..., GatewayProcess], moto: MotoServer, tmp_path: Path
) -> None:
    moto.start()
    records = tmp_path / "records"
    env = moto.gateway_env(records, DELETE_RECORDING_AFTER_UPLOAD="1")
    gateway = gateway_factory(workers=1, env=env)
    _publish(gateway, "up-room")

    items = wait_sync(
        lambda: _all("uploaded")(gateway), 30, "both uploaded", gateway.log, interval=0.2
    )
    client = moto.client()
    for item in items:
        key = item["upload"]["key"]
        assert key == "live/" + item["name"]  # S3_PREFIX "/live/" trimmed, as live-webrtc-go
        stored = client.stat_object(BUCKET, key)
        assert stored.size == item["size"] > 0
        assert not (records / item["name"]).exists()  # deleted after the size matched
        assert item["local"] is False and item["url"] is None
        assert item["upload"]["local_deleted"] is True
        copy = tmp_path / item["name"]
        client.fget_object(BUCKET, key, str(copy))
        report = inspect(copy)
        assert report.decoded >= report.frames - 1 > 0
    metrics = _metrics(gateway)
    assert metrics["live_uploads_total"] == 2
    assert metrics["live_uploads_pending"] == 0
    assert metrics["live_upload_failures_total"] == 0


def test_an_upload_during_an_s3_outage_is_retried_until_it_succeeds(
    gateway_factory: Callable[..., GatewayProcess], moto: MotoServer, tmp_path: Path
) -> None:
    records = tmp_path / "records"
    gateway = gateway_factory(workers=1, env=moto.gateway_env(records))  # S3 is down
    _publish(gateway, "outage-room")

    failed = wait_sync(
        lambda: _all("failed")(gateway), 30, "failed attempts", gateway.log, interval=0.2
    )
    for item in failed:
        assert "unreachable" in item["upload"]["reason"] and item["upload"]["attempts"] >= 1
        assert item["local"] is True
    metrics = _metrics(gateway)
    assert metrics["live_uploads_pending"] == 2 and metrics["live_upload_failures_total"] >= 2
    moto.start()

    items = wait_sync(
        lambda: _all("uploaded")(gateway), 60, "uploads after the outage", gateway.log, interval=0.2
    )
    client = moto.client()
    for item in items:
        assert client.stat_object(BUCKET, item["upload"]["key"]).size == item["size"]
        assert (records / item["name"]).stat().st_size == item["size"]  # kept: no delete


def test_a_pending_upload_survives_a_gateway_restart(
    gateway_factory: Callable[..., GatewayProcess], moto: MotoServer, tmp_path: Path
) -> None:
    records = tmp_path / "records"
    env = moto.gateway_env(records)
    first = gateway_factory(workers=1, env=env)  # S3 is down
    _publish(first, "restart-room")
    wait_sync(lambda: _all("failed")(first), 30, "failed attempts", first.log, interval=0.2)
    assert first.stop() == 0

    moto.start()
    second = gateway_factory(workers=1, env=env)
    items = wait_sync(
        lambda: _all("uploaded")(second), 60, "uploads after restart", second.log, interval=0.2
    )
    client = moto.client()
    for item in items:
        assert client.stat_object(BUCKET, item["upload"]["key"]).size == item["size"]


def test_a_large_recording_goes_up_in_parts(moto: MotoServer, tmp_path: Path) -> None:
    moto.start()
    records = tmp_path / "records"
    records.mkdir()
    name = "big-room_track1_1700000000.ivf"
    size = 11 * 1024 * 1024  # over minio's 5 MiB part size: a multipart upload
    (records / name).write_bytes(os.urandom(size))
    info = RecordingInfo(
        name=name, room="big-room", track_id="track1", kind="video", codec="video/vp8"
    )
    info.state, info.bytes = COMPLETE, size
    write_sidecar(str(records), info)
    config = load_config(
        ["--record-dir", str(records)],
        environ=moto.gateway_env(records, S3_PREFIX=""),
    )
    uploader = Uploader(config, make_client(config))

    assert uploader.scan() == [name] and uploader.pending == 1
    assert uploader.upload(name) is True
    stored = moto.client().stat_object(BUCKET, name)
    assert stored.size == size
    # An S3 multipart ETag: md5 of the parts, "-" count.
    assert stored.etag is not None and stored.etag.endswith("-3")
    after = read_sidecar(str(records), name)
    assert after is not None and after.upload.state == "uploaded" and after.upload.key == name
    assert uploader.scan() == [] and uploader.pending == 0
    assert (records / name).exists()  # DELETE_RECORDING_AFTER_UPLOAD is off


def test_object_keys_and_backoff() -> None:
    assert object_key("", "a.ogg") == "a.ogg"
    assert object_key("/rec/", "a.ogg") == "rec/a.ogg"
    assert object_key("a/b", "x.ivf") == "a/b/x.ivf"
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert retry_delay(40) == 300


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"S3_ENDPOINT": "127.0.0.1:9000"}, "needs S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY"),
        (
            {"S3_BUCKET": "b", "S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "s"},
            "needs S3_ENDPOINT",
        ),
        (
            {"S3_ENDPOINT": "http://127.0.0.1:9000"},
            "for S3_ENDPOINT: give HOST[:PORT] without a scheme",
        ),
    ],
)
def test_upload_with_incomplete_s3_settings_stops_start_up(
    env: dict[str, str], message: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "UPLOAD_"))}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--workers", "0"],
        cwd=REPO,
        env={**clean, "UPLOAD_RECORDINGS": "1", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
