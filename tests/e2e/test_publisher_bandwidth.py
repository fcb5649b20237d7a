"""A browser publisher ramps its bitrate up thanks to the SFU's transport-cc feedback.

With only aiortc's REMB, Chromium's estimate grows ~8 % a second from 300 kbit/s (about
450 kbit/s after 10 s); with transport-cc feedback (sfu.media.transport_cc) it probes and reaches
its cap for the camera's resolution within seconds. The stats read are Chromium's own:
its bandwidth estimate (candidate pair availableOutgoingBitrate) and its encoder's target.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from playwright.sync_api import BrowserContext

from testkit.processes import GatewayProcess

pytestmark = pytest.mark.browser

RAMP_SECONDS = 10.0
REASONABLE_BPS = 1_000_000  # 640x480 from the fake camera: Chromium's cap is 1.7 Mbit/s

ESTIMATE_JS = """
async () => {
  const pc = window.sfuPc;
  if (!pc) return null;
  const out = { available: 0, target: 0 };
  (await pc.getStats()).forEach((s) => {
    if (s.type === "candidate-pair" && s.nominated && s.availableOutgoingBitrate)
      out.available = s.availableOutgoingBitrate;
    if (s.type === "outbound-rtp" && s.kind === "video") out.target = s.targetBitrate || 0;
  });
  return out;
}
"""


def test_chromium_publisher_ramps_up_its_bitrate(
    gateway_factory: Callable[..., GatewayProcess],
    browser_context: BrowserContext,
) -> None:
    gateway = gateway_factory(workers=1)
    page = browser_context.new_page()
    page.goto(f"{gateway.url}/web/publish.html?room=ramp-{uuid.uuid4().hex[:8]}")
    page.click("#start")
    deadline = time.monotonic() + 20
    while page.evaluate("window.sfuState.connectionState") != "connected":
        state = page.evaluate("window.sfuState")
        assert not state.get("error"), state
        assert time.monotonic() < deadline, f"publisher never connected: {state}"
        time.sleep(0.2)
    answer = page.evaluate("window.sfuPc.remoteDescription.sdp")
    assert "transport-cc" in answer
    time.sleep(RAMP_SECONDS)
    estimate = page.evaluate(ESTIMATE_JS)
    assert estimate["available"] >= REASONABLE_BPS, estimate
    assert estimate["target"] >= REASONABLE_BPS, estimate
