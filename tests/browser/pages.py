"""Driving gateway/web/publish.html and play.html from tests: open, wait, read RTC stats."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page

MEDIA_TIMEOUT = 20.0

# The page's video stream: frames and packets, and the codec it uses (from the codec stats the
# inbound-rtp/outbound-rtp entry points at), so a test sees what was negotiated and decoded.
VIDEO_STATS_JS = """
async (direction) => {
  const pc = window.sfuPc;
  if (!pc) return null;
  const report = await pc.getStats();
  let out = null;
  report.forEach((s) => {
    if (s.type !== direction || s.kind !== "video") return;
    const codec = s.codecId ? report.get(s.codecId) : undefined;
    out = {
      frames: (direction === "inbound-rtp" ? s.framesDecoded : s.framesEncoded) || 0,
      packets: (direction === "inbound-rtp" ? s.packetsReceived : s.packetsSent) || 0,
      mimeType: codec ? codec.mimeType : null,
      fmtp: (codec && codec.sdpFmtpLine) || "",
      // Chromium hides these from pages without camera access (fingerprinting): may be null.
      implementation: s.decoderImplementation || s.encoderImplementation || null,
    };
  });
  return out;
}
"""


def poll(what: str, page: Page, check: Callable[[], Any], timeout: float = MEDIA_TIMEOUT) -> Any:
    """Poll check() until truthy; on timeout report the page's sfuState for diagnosis."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        state = page.evaluate("window.sfuState")
        if state and state.get("error"):
            pytest.fail(f"{what}: page reported error {state!r}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached in {timeout:.0f} s; sfuState={state!r}")
        time.sleep(0.25)


def open_page(context: BrowserContext, url: str, console: list[str]) -> Page:
    """Open publish.html or play.html and press its start button."""
    page = context.new_page()
    page.on("console", lambda msg: console.append(f"{page.url}: {msg.type}: {msg.text}"))
    page.goto(url)
    page.click("#start")
    return page


def connected(page: Page) -> bool:
    return bool(page.evaluate("window.sfuState.connectionState === 'connected'"))


def video_stats(page: Page, direction: str) -> dict[str, Any] | None:
    """direction: "inbound-rtp" (a player) or "outbound-rtp" (a publisher)."""
    stats: dict[str, Any] | None = page.evaluate(VIDEO_STATS_JS, direction)
    return stats


def wait_decoding(player: Page, more_frames: int = 10) -> dict[str, Any]:
    """Wait until the player has decoded a first frame and then `more_frames` more.

    Decoding must keep going, not stop after the first keyframe. Returns the last stats.
    """
    poll("player connected", player, lambda: connected(player))

    def decoded(minimum: int) -> dict[str, Any] | None:
        stats = video_stats(player, "inbound-rtp")
        return stats if stats and stats["frames"] >= minimum else None

    first = poll("first frame decoded", player, lambda: decoded(1))
    target = first["frames"] + more_frames
    stats: dict[str, Any] = poll("framesDecoded increasing", player, lambda: decoded(target))
    return stats
