"""The whole path: sfu-gateway with its own workers, aiortc clients in separate processes.

A publisher pushes over WHIP, viewers pull over WHEP and decode what the worker forwarded
(the worker itself never decodes: see tests/sfu/test_worker_media.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from testkit.processes import GatewayProcess
from tests.support.clients import spawn_peer


# H264 end to end runs in tests/interop (every profile); here with -m slow.
@pytest.mark.parametrize("video", ["vp8", pytest.param("h264", marks=pytest.mark.slow)])
def test_one_publisher_three_viewers_decode_video_and_audio(
    gateway_factory: Callable[..., GatewayProcess], video: str
) -> None:
    gateway = gateway_factory(workers=1)
    publisher = spawn_peer("publish", gateway.url, "show", "--seconds", "11", "--video", video)
    time.sleep(1.5)  # viewers join a live room (the room exists once the publisher posted)
    viewers = [
        spawn_peer(
            "view",
            gateway.url,
            "show",
            "--seconds",
            "8",
            "--min-video-frames",
            "90",
            "--min-audio-frames",
            "150",
        )
        for _ in range(3)
    ]
    results: list[dict[str, Any]] = [viewer.result(timeout=60) for viewer in viewers]
    published = publisher.result(timeout=60)
    assert published["ok"], published
    for result in results:
        assert result["ok"], result
        assert (result["width"], result["height"]) == (640, 360)
        assert result["video_frames"] >= 90 and result["audio_frames"] >= 150


def test_viewer_waiting_before_the_publisher_gets_media(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(workers=1)
    # The viewer retries its POST while the room does not exist yet (404), as players do.
    viewer = spawn_peer("view", gateway.url, "late", "--seconds", "8", "--min-video-frames", "60")
    time.sleep(2)
    publisher = spawn_peer("publish", gateway.url, "late", "--seconds", "8")
    result = viewer.result(timeout=60)
    assert result["ok"], result
    assert publisher.result(timeout=60)["ok"]
