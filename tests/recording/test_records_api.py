"""GET /api/records and the download route: admin only, and nothing outside RECORD_DIR.

A gateway without workers serves these (recordings are files, not sessions). Requests that
try to escape are sent raw (http.client), so no client library normalises them first.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from common.sidecar import COMPLETE, FAILED, RecordingInfo, UploadState, write_sidecar
from testkit.processes import GatewayProcess
from tests.recording.conftest import ADMIN_TOKEN, admin_get, record_env

SECRET = b"outside-secret-0123456789"
ApiGateway = tuple[GatewayProcess, Path]  # the gateway and its RECORD_DIR


@pytest.fixture
def api_gateway(gateway_factory: Callable[..., GatewayProcess], tmp_path: Path) -> ApiGateway:
    records = tmp_path / "records"
    gateway = gateway_factory(workers=0, env=record_env(records), wait=None)
    deadline = time.monotonic() + 20
    while admin_get(gateway.url + "/healthz", None)[0] != 200:
        assert time.monotonic() < deadline, gateway.log()
        assert gateway.process.poll() is None, gateway.log()
        time.sleep(0.1)
    return gateway, records


def _raw_get(
    gateway: GatewayProcess, path: str, token: str | None = ADMIN_TOKEN
) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, response.getheader("Content-Type") or "", body


def test_an_empty_or_missing_directory_lists_nothing(api_gateway: ApiGateway) -> None:
    gateway, records = api_gateway
    assert not records.exists()
    assert admin_get(gateway.url + "/api/records") == (200, b"[]")
    records.mkdir()
    assert admin_get(gateway.url + "/api/records") == (200, b"[]")


def test_the_listing_and_downloads_need_an_admin_credential(api_gateway: ApiGateway) -> None:
    gateway, records = api_gateway
    records.mkdir()
    name = "r1_t1_1700000000.ogg"
    (records / name).write_bytes(b"OggS-not-really")
    for path in ("/api/records", f"/api/records/{name}"):
        status, content_type, body = _raw_get(gateway, path, token=None)
        assert status == 401 and content_type.startswith("application/json"), body
        status, _, body = _raw_get(gateway, path, token="not-the-admin-token")
        assert status in (401, 403) and SECRET not in body
    status, content_type, body = _raw_get(gateway, f"/api/records/{name}")
    assert (status, content_type, body) == (200, "audio/ogg", b"OggS-not-really")


def test_the_listing_describes_each_recording(api_gateway: ApiGateway) -> None:
    gateway, records = api_gateway
    records.mkdir()
    done = RecordingInfo(
        name="room-a_cam_1700000000.ivf",
        room="room-a",
        track_id="cam",
        kind="video",
        codec="video/vp8",
        state=COMPLETE,
        started_at=1700000000.0,
        first_frame_at=1700000000.25,
        duration=12.5,
        frames=375,
        width=1280,
        height=720,
        upload=UploadState(state="uploaded", key="live/room-a_cam_1700000000.ivf"),
    )
    broken = RecordingInfo(
        name="room-b_mic_1700000100.ogg",
        room="room-b",
        track_id="mic",
        kind="audio",
        codec="audio/opus",
        state=FAILED,
        started_at=1700000100.0,
        error="write failed: [Errno 28] No space left on device",
        upload=UploadState(
            state="failed", reason="S3 error AccessDenied: denied", attempts=3, next_attempt=1.0
        ),
    )
    for info, size in ((done, 1234), (broken, 0)):
        write_sidecar(str(records), info)
        (records / info.name).write_bytes(b"x" * size)
    (records / "legacy.ivf").write_bytes(b"DKIF")  # a live-webrtc-go file, no sidecar
    (records / "notes.txt").write_text("not a recording")
    (records / "sub.ivf").mkdir()  # a directory is not a recording

    status, body = admin_get(gateway.url + "/api/records")
    assert status == 200
    items = {item["name"]: item for item in json.loads(body)}
    assert sorted(items) == sorted([done.name, broken.name, "legacy.ivf"])
    video = items[done.name]
    assert video["room"] == "room-a" and video["kind"] == "video"
    assert video["codec"] == "video/vp8" and video["state"] == "complete"
    assert video["size"] == 1234 and video["duration"] == 12.5
    assert video["start_time"] == "2023-11-14T22:13:20.250+00:00"
    assert video["upload"]["state"] == "uploaded"
    assert video["upload"]["key"] == "live/room-a_cam_1700000000.ivf"
    assert video["url"] == f"/api/records/{done.name}"
    audio = items[broken.name]
    assert audio["state"] == "failed" and "No space left" in audio["error"]
    assert audio["upload"]["state"] == "failed"
    assert audio["upload"]["reason"] == "S3 error AccessDenied: denied"
    assert items["legacy.ivf"]["upload"] == {"state": "local"}
    assert list(items)[0] == "legacy.ivf"  # newest first (its mtime is now)


@pytest.mark.parametrize(
    "path",
    [
        "/api/records/..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/records/%2e%2e%2Foutside.ivf",
        "/api/records/..%2Foutside.ivf",
        "/api/records/%2Fetc%2Fpasswd",
        "/api/records/../outside.ivf",
        "/api/records/..",
        "/api/records/.hidden.ivf",
        "/api/records/r1_t1_1700000000.ogg.json",
        "/api/records/r1_t1_1700000000.ogg%00.ivf",
        "/api/records/..%5C..%5Coutside.ivf",
    ],
)
def test_path_traversal_is_refused(api_gateway: ApiGateway, path: str) -> None:
    gateway, records = api_gateway
    records.mkdir()
    (records.parent / "outside.ivf").write_bytes(SECRET)
    (records / "r1_t1_1700000000.ogg").write_bytes(b"OggS")
    write_sidecar(
        str(records),
        RecordingInfo(
            name="r1_t1_1700000000.ogg", room="r1", track_id="t1", kind="audio", codec="x"
        ),
    )
    status, content_type, body = _raw_get(gateway, path)
    assert status in (400, 404), (status, body)
    assert SECRET not in body and b"root:" not in body


def test_symlinks_in_the_record_dir_are_not_followed(api_gateway: ApiGateway) -> None:
    gateway, records = api_gateway
    records.mkdir()
    outside = records.parent / "secret.ivf"
    outside.write_bytes(SECRET)
    (records / "r1_t1_1700000000.ivf").symlink_to(outside)
    (records / "r1_t2_1700000000.ivf").symlink_to("/etc/passwd")
    (records / "r1_t3_1700000000.ivf.json").symlink_to(outside)  # a planted sidecar

    for name in ("r1_t1_1700000000.ivf", "r1_t2_1700000000.ivf"):
        status, content_type, body = _raw_get(gateway, f"/api/records/{name}")
        assert status == 404 and content_type.startswith("application/json"), body
        assert SECRET not in body and b"root:" not in body
    status, body = admin_get(gateway.url + "/api/records")
    assert status == 200 and json.loads(body) == []  # links are not listed either
