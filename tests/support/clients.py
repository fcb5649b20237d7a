"""Media clients as separate processes, and what they printed.

* `spawn_peer()` / `run_peer()`: the aiortc client (`python -m testkit.client`);
* `spawn_interop_peer()`: the same client negotiating like a browser (`--all-codecs`): it
  offers every codec live-sfu forwards (all H264 profiles included), so it can publish any
  H264 profile or watch an OBS-style High-profile room. aiortc decodes VP8 and H264 only:
  VP9 and AV1 rooms need a browser viewer;
* `spawn_gst_publisher()`: the GStreamer webrtcbin publisher (tests/clients/gst_whip.py), run
  by Debian's /usr/bin/python3, which has PyGObject and the GStreamer typelibs (the venv has
  neither);
* `run_ffmpeg_whip()`: ffmpeg's WHIP muxer.

The GStreamer and ffmpeg checks skip a test where the tool is missing, except under CI=true,
where a skipped interop suite would hide that the setup lost a package: there they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from testkit import client
from testkit.processes import REPO

SYSTEM_PYTHON = Path("/usr/bin/python3")
GST_WHIP = REPO / "tests" / "clients" / "gst_whip.py"


@dataclass
class PeerProcess:
    """A running client process; result() waits for it and parses its last JSON line."""

    argv: list[str]
    process: subprocess.Popen[str]
    output: dict[str, str] = field(default_factory=dict)

    def result(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            stdout, stderr = self.process.communicate()
            raise AssertionError(f"peer timed out: {self.argv}\n{stderr[-3000:]}") from None
        self.output = {"stdout": stdout, "stderr": stderr}
        lines = [line for line in stdout.splitlines() if line.strip()]
        if not lines:
            raise AssertionError(
                f"peer printed nothing (exit {self.process.returncode}): {self.argv}\n"
                f"{stderr[-3000:]}"
            )
        data: dict[str, Any] = json.loads(lines[-1])
        data["exit_code"] = self.process.returncode
        return data

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def _spawn(argv: list[str]) -> PeerProcess:
    process = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return PeerProcess(argv=argv, process=process)


def spawn_peer(mode: str, url: str, room: str, *args: str) -> PeerProcess:
    """Start `python -m testkit.client publish|view --url URL --room ROOM ARGS...`."""
    return _spawn(client.command(mode, url, room, *args))


def run_peer(mode: str, url: str, room: str, *args: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run the client to completion and return its JSON result (plus "exit_code")."""
    return spawn_peer(mode, url, room, *args).result(timeout)


def spawn_interop_peer(mode: str, url: str, room: str, *args: str) -> PeerProcess:
    """The client offering every codec live-sfu forwards; a viewer stops once it has its
    minimum frames and re-POSTs for up to 15 s while the room does not exist yet."""
    extra = ["--all-codecs"]
    if mode == "view":
        extra += ["--stop-when-satisfied", "--retry-404-for", "15"]
    return spawn_peer(mode, url, room, *extra, *args)


def skip_or_fail(reason: str, remedy: str) -> NoReturn:
    """Skip a test that lacks a tool, but fail it under CI=true (the setup must provide it)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} under CI=true; {remedy}")
    pytest.skip(f"{reason} ({remedy})")


# --- GStreamer ------------------------------------------------------------------------------

# Everything gst_whip.py's pipelines use; scripts/test.sh installs the Debian packages.
GST_ELEMENTS = (
    "webrtcbin",  # gstreamer1.0-plugins-bad
    "nicesrc",  # gstreamer1.0-nice
    "dtlssrtpenc",  # gstreamer1.0-plugins-bad
    "rtpbin",  # gstreamer1.0-plugins-good
    "vp8enc",  # gstreamer1.0-plugins-good
    "vp9enc",  # gstreamer1.0-plugins-good
    "x264enc",  # gstreamer1.0-plugins-ugly
    "opusenc",  # gstreamer1.0-plugins-base
    "videotestsrc",  # gstreamer1.0-plugins-base
)
_PROBE = f"""
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import Gst, GstSdp, GstWebRTC
Gst.init(None)
missing = [e for e in {GST_ELEMENTS!r} if Gst.ElementFactory.find(e) is None]
print(" ".join(missing))
"""


def gstreamer_missing() -> str | None:
    """Why the GStreamer client cannot run here, or None when it can."""
    if not SYSTEM_PYTHON.exists():
        return f"{SYSTEM_PYTHON} is missing"
    try:
        probe = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", _PROBE], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "the GStreamer probe hung"
    if probe.returncode != 0:
        return "PyGObject or the GStreamer typelibs are missing: " + probe.stderr.strip()[-300:]
    if probe.stdout.strip():
        return f"GStreamer elements missing: {probe.stdout.strip()}"
    return None


def require_gstreamer() -> None:
    reason = gstreamer_missing()
    if reason is not None:
        skip_or_fail(reason, "scripts/test.sh apt-get installs GStreamer")


def spawn_gst_publisher(url: str, room: str, *args: str) -> PeerProcess:
    """gst_whip.py --url URL --room ROOM ARGS... (see its --help)."""
    return _spawn([str(SYSTEM_PYTHON), str(GST_WHIP), "--url", url, "--room", room, *args])


# --- ffmpeg ---------------------------------------------------------------------------------


def ffmpeg_with_whip() -> str:
    """An ffmpeg binary that has the WHIP muxer (imageio-ffmpeg's, pinned in the test extra)."""
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
    skip_or_fail(
        f"no ffmpeg with the whip muxer (looked at {candidates or 'nothing'})",
        "the test extra pins imageio-ffmpeg",
    )


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
