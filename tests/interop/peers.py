"""Running tests/interop/aiortc_peer.py and ffmpeg as separate client processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, PeerProcess

AIORTC_PEER = REPO / "tests" / "interop" / "aiortc_peer.py"


def spawn_aiortc_peer(mode: str, url: str, room: str, *args: str) -> PeerProcess:
    argv = [sys.executable, str(AIORTC_PEER), mode, "--url", url, "--room", room, *args]
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return PeerProcess(argv=argv, proc=proc)


def ffmpeg_with_whip() -> str:
    """An ffmpeg binary that has the WHIP muxer (imageio-ffmpeg's, pinned in the test extra).

    Skips when none is installed, except under CI where a missing tool is a failure.
    """
    candidates: list[str] = []
    try:
        import imageio_ffmpeg

        candidates.append(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        pass
    system = shutil.which("ffmpeg")
    if system:
        candidates.append(system)
    for binary in candidates:
        muxers = subprocess.run(
            [binary, "-hide_banner", "-muxers"], capture_output=True, text=True, timeout=30
        ).stdout
        if any(line.split()[1:2] == ["whip"] for line in muxers.splitlines() if line.strip()):
            return binary
    message = f"no ffmpeg with the whip muxer (looked at {candidates or 'nothing'})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run_ffmpeg_whip(binary: str, url: str, seconds: float, log: Path) -> subprocess.Popen[bytes]:
    """Publish a 640x360 H264 High-profile test pattern (no B-frames) + Opus over WHIP.

    The command line is the one README.md documents for publishers.
    """
    argv = [
        binary,
        "-hide_banner",
        "-loglevel", "verbose",
        "-re",
        "-f", "lavfi", "-i", "testsrc=size=640x360:rate=30",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-c:v", "libx264", "-profile:v", "high", "-bf", "0", "-g", "30",
        "-tune", "zerolatency", "-pix_fmt", "yuv420p",
        "-c:a", "libopus", "-ar", "48000", "-ac", "2",
        "-t", str(seconds),
        "-f", "whip", url,
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
