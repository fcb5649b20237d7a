"""ffmpeg's WHIP muxer as a publisher: H264 High profile + Opus, offered with setup:passive,
watched through a real sfu-gateway by an aiortc viewer that decodes both tracks."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path

from testkit.processes import GatewayProcess
from tests.support.clients import ffmpeg_with_whip, run_ffmpeg_whip, spawn_interop_peer


def test_ffmpeg_publishes_h264_high_and_opus_to_a_decoding_viewer(
    gateway_factory: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    binary = ffmpeg_with_whip()
    gateway = gateway_factory(workers=1)
    room = "ffmpeg-" + secrets.token_hex(4)
    log = tmp_path / "ffmpeg.log"
    ffmpeg = run_ffmpeg_whip(binary, f"{gateway.url}/api/whip/publish/{room}", 14, log)
    try:
        viewer = spawn_interop_peer(
            "view",
            gateway.url,
            room,
            "--seconds",
            "12",
            "--min-video-frames",
            "90",
            "--min-audio-frames",
            "100",
        ).result(timeout=60)
        exit_code = ffmpeg.wait(timeout=60)
    except subprocess.TimeoutExpired:
        ffmpeg.kill()
        raise
    finally:
        if ffmpeg.poll() is None:
            ffmpeg.kill()
            ffmpeg.wait()
    ffmpeg_log = log.read_text(errors="replace")
    assert viewer["ok"], (viewer, ffmpeg_log[-3000:], gateway.log())
    assert viewer["size"] == [640, 360]
    assert exit_code == 0, ffmpeg_log[-3000:]
    # What ffmpeg offered and what it got: setup:passive answered active, High profile.
    assert "a=setup:passive" in ffmpeg_log and "DTLS handshake is done" in ffmpeg_log
    assert "profile-level-id=64" in ffmpeg_log
    fmtp = viewer["answer_video"]["fmtp"].split(";")
    assert viewer["answer_video"]["rtpmap"] == "H264/90000"
    assert "packetization-mode=1" in fmtp
    assert any(p.startswith("profile-level-id=64") for p in fmtp), fmtp
    assert viewer["rtp"]["video"]["packetsLost"] == 0
