"""End to end through the real gateway + worker, with aiortc clients in separate processes.

Each test starts `python -m gateway --workers 1`, one publisher and one or more viewers
(testkit/client.py), and checks what the viewers actually decoded.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from tests.support.clients import PeerProcess

Spawn = Callable[..., PeerProcess]


def _room() -> str:
    return "t-" + uuid.uuid4().hex[:10]


def _assert_viewer(result: dict[str, Any], codec: str, width: int, height: int) -> None:
    assert result["ok"], result
    assert result["exit_code"] == 0, result
    # The SFU forwards RTP: the viewer must get the publisher's codec and resolution, not a
    # transcoded stream.
    assert result["codecs"]["video"].upper() == codec.upper(), result
    assert (result["width"], result["height"]) == (width, height), result
    assert result["first_frame_ms"] is not None and result["first_frame_ms"] < 5000, result
    video_rtp = result["rtp"]["video"]
    assert video_rtp["packetsReceived"] > 0, result
    # On loopback nothing should be lost; allow a little for start-up races.
    assert video_rtp["packetsLost"] <= max(5, video_rtp["packetsReceived"] // 50), result
    assert result["delete_status"] == 200, result


def test_h264_video_only_keeps_codec_and_size(gateway: str, peers: Spawn) -> None:
    room = _room()
    publish_args = "--seconds 8 --video h264 --audio none --width 320 --height 180 --fps 15"
    publisher = peers("publish", gateway, room, *publish_args.split())
    view_args = "--seconds 6 --min-video-frames 30 --min-audio-frames 0"
    viewer = peers("view", gateway, room, *view_args.split())
    result = viewer.result(timeout=40)
    published = publisher.result(timeout=40)

    assert published["ok"] and published["codecs"]["video"] == "H264", published
    assert "audio" not in published["packets_sent"], published
    _assert_viewer(result, "H264", 320, 180)
    assert result["audio_frames"] == 0, result


def test_view_of_unknown_room_fails_with_404(
    gateway: str, run_peer: Callable[..., dict[str, Any]]
) -> None:
    result = run_peer("view", gateway, _room(), "--seconds", "2", "--retry-404-for", "0")
    assert result["exit_code"] == 2, result
    assert result["ok"] is False and result["status"] == 404, result
