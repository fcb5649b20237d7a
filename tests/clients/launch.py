"""Start the interop client scripts as processes, the way tests/conftest.py starts peer.py.

* the GStreamer webrtcbin publisher (tests/clients/gst_whip.py), run by Debian's
  /usr/bin/python3, which has PyGObject and the GStreamer typelibs (the venv has neither);
* the aiortc viewer of tests/interop/aiortc_peer.py, which offers every codec live-sfu
  forwards (all H264 profiles included), so it can watch an OBS-style High-profile room.
  aiortc decodes VP8 and H264 only: VP9 and AV1 rooms need a browser viewer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, PeerProcess

SYSTEM_PYTHON = Path("/usr/bin/python3")
GST_WHIP = REPO / "tests" / "clients" / "gst_whip.py"
INTEROP_PEER = REPO / "tests" / "interop" / "aiortc_peer.py"

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
    """Skip without GStreamer, except under CI=true, where a skipped interop suite would hide
    that the setup lost a package: there it fails."""
    reason = gstreamer_missing()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} under CI=true; scripts/test.sh installs GStreamer")
    pytest.skip(f"{reason} (apt-get install the packages in scripts/test.sh)")


def _spawn(argv: list[str]) -> PeerProcess:
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return PeerProcess(argv=argv, proc=proc)


def spawn_gst_publisher(url: str, room: str, *args: str) -> PeerProcess:
    """gst_whip.py --url URL --room ROOM ARGS... (see its --help)."""
    return _spawn([str(SYSTEM_PYTHON), str(GST_WHIP), "--url", url, "--room", room, *args])


def spawn_aiortc_viewer(url: str, room: str, *args: str) -> PeerProcess:
    """tests/interop/aiortc_peer.py view --url URL --room ROOM ARGS..."""
    argv = [sys.executable, str(INTEROP_PEER), "view", "--url", url, "--room", room, *args]
    return _spawn(argv)
