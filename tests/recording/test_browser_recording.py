"""Recording what only a browser sends: Chromium publishes AV1 (and VP9) through
gateway/web/publish.html?codec=..., the worker records it, PyAV reads the file back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser

from testkit.processes import GatewayProcess, wait_sync
from tests.browser.pages import connected, open_page, poll, video_stats
from tests.recording.conftest import admin_get, list_records, record_env
from tests.recording.harness import inspect

pytestmark = pytest.mark.browser

SECONDS = 4.0


@pytest.mark.parametrize(
    ("spec", "mime_type", "decoder", "fourcc"),
    [("AV1", "video/av1", "libdav1d", b"AV01"), ("VP9;profile-id=0", "video/vp9", "vp9", b"VP90")],
    ids=["av1", "vp9"],
)
def test_a_browser_track_is_recorded_in_its_codec(
    chromium: Browser,
    gateway_factory: Callable[..., GatewayProcess],
    tmp_path: Path,
    spec: str,
    mime_type: str,
    decoder: str,
    fourcc: bytes,
) -> None:
    gateway = gateway_factory(workers=1, env=record_env(tmp_path / "records"))
    console: list[str] = []
    context = chromium.new_context()
    try:
        page = open_page(
            context,
            f"{gateway.url}/web/publish.html?{urlencode({'room': 'b', 'codec': spec})}",
            console,
        )
        poll("publisher connected", page, lambda: connected(page))
        started = time.monotonic()
        sending = poll(
            "publisher sends video",
            page,
            lambda: (s := video_stats(page, "outbound-rtp")) and s["frames"] > 0 and s,
        )
        assert sending["mimeType"].lower() == mime_type, sending
        time.sleep(SECONDS)
        page.click("#stop")
        published = time.monotonic() - started
    finally:
        context.close()

    def finished() -> list[dict[str, Any]] | None:
        items = [i for i in list_records(gateway) if i["kind"] == "video"]
        return items if items and items[0]["state"] != "recording" else None

    [item] = wait_sync(finished, 30, "the video recording", gateway.log, interval=0.2)
    assert item["state"] == "complete" and item["codec"] == mime_type, item
    status, body = admin_get(gateway.url + item["url"])
    assert status == 200 and body[8:12] == fourcc
    path = tmp_path / item["name"]
    path.write_bytes(body)
    report = inspect(path)
    assert report.codec == decoder
    assert (report.width, report.height) == (item["width"], item["height"]) != (0, 0)
    assert report.decoded >= report.frames - 1 > 0
    assert report.duration == pytest.approx(published, rel=0.10)
