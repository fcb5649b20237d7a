"""ICE restart from Chromium (RFC 9725 §4.3): the pages' `sfu.restartIce` calls
`pc.restartIce()`, PATCHes the new credentials with `If-Match: *`, and applies the server's
sdpfrag as the new answer. The ICE session must be new (new ufrags on both sides) while the
media keeps flowing through the same DTLS session (no renegotiation of keys)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page

from tests.browser.pages import connected, open_page, poll, video_stats, wait_decoding

pytestmark = pytest.mark.browser

# The selected ICE pair's ufrags and the DTLS transport's certificate fingerprint.
TRANSPORT_JS = """
async () => {
  const report = await window.sfuPc.getStats();
  let out = null;
  report.forEach((s) => {
    if (s.type !== "transport") return;
    out = {
      localUfrag: s.iceLocalUsernameFragment || null,
      dtlsState: s.dtlsState,
      cert: s.localCertificateId || null,
      pair: s.selectedCandidatePairId || null,
      pairChanges: s.selectedCandidatePairChanges || 0,
    };
  });
  return out;
}
"""


def _transport(page: Page) -> dict[str, Any]:
    transport: dict[str, Any] = page.evaluate(TRANSPORT_JS)
    assert transport is not None
    return transport


def _restart(page: Page) -> int | None:
    status: int | None = page.evaluate("window.sfuRestartIce()")
    return status


def test_chromium_player_and_publisher_restart_ice_and_keep_playing(
    gateway: str, browser_context: BrowserContext
) -> None:
    room = "ice-" + uuid.uuid4().hex[:8]
    console: list[str] = []
    publisher = open_page(browser_context, f"{gateway}/web/publish.html?room={room}", console)
    poll("publisher connected", publisher, lambda: connected(publisher))
    player = open_page(browser_context, f"{gateway}/web/play.html?room={room}", console)
    wait_decoding(player)

    before = _transport(player)
    assert _restart(player) == 200, console
    poll(
        "player's new ICE session selected",
        player,
        lambda: (
            (t := _transport(player))["localUfrag"] != before["localUfrag"]
            and t["dtlsState"] == "connected"
        ),
    )
    after = _transport(player)
    assert after["cert"] == before["cert"]  # the same DTLS session
    stats = wait_decoding(player, more_frames=30)  # frames keep coming after the restart
    assert stats["frames"] > 30

    sent_before = video_stats(publisher, "outbound-rtp")
    assert sent_before is not None
    publisher_before = _transport(publisher)
    assert _restart(publisher) == 200, console
    poll(
        "publisher's new ICE session selected",
        publisher,
        lambda: _transport(publisher)["localUfrag"] != publisher_before["localUfrag"],
    )
    frames_then = video_stats(player, "inbound-rtp")
    assert frames_then is not None
    poll(
        "the player keeps decoding after the publisher's restart",
        player,
        lambda: (
            (s := video_stats(player, "inbound-rtp")) is not None
            and s["frames"] >= frames_then["frames"] + 30
        ),
    )
    assert connected(player) and connected(publisher)
    assert not [line for line in console if ": error: " in line], console
