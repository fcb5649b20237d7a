"""Real Chromium publishes and plays through the real gateway, using the pages in gateway/web/.

What this covers that the aiortc clients cannot: libwebrtc's offers (many codecs, header
extensions, transport-cc, its own msid/ssrc layout), the shipped HTML/JS, and CORS as enforced
by a browser.
"""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page

from testkit.processes import GatewayProcess
from tests.browser.pages import connected, open_page, poll, wait_decoding

pytestmark = pytest.mark.browser

# Reads the player's RTCPeerConnection stats: decoded video frames, received audio packets.
PLAYER_STATS_JS = """
async () => {
  const pc = window.sfuPc;
  if (!pc) return null;
  const out = { framesDecoded: 0, audioPackets: 0, videoPackets: 0 };
  (await pc.getStats()).forEach((s) => {
    if (s.type !== "inbound-rtp") return;
    if (s.kind === "video") {
      out.framesDecoded += s.framesDecoded || 0;
      out.videoPackets += s.packetsReceived || 0;
    } else if (s.kind === "audio") {
      out.audioPackets += s.packetsReceived || 0;
    }
  });
  return out;
}
"""


def _room() -> str:
    return "b-" + uuid.uuid4().hex[:10]


def test_chromium_publishes_to_two_chromium_players(
    gateway: str, browser_context: BrowserContext
) -> None:
    room = _room()
    console: list[str] = []
    publisher = open_page(browser_context, f"{gateway}/web/publish.html?room={room}", console)
    poll("publisher connected", publisher, lambda: connected(publisher))

    players = [
        open_page(browser_context, f"{gateway}/web/play.html?room={room}", console)
        for _ in range(2)
    ]
    for player in players:
        _assert_playing(player)
    assert not [line for line in console if ": error: " in line], console


def test_chromium_players_on_two_workers_play(
    gateway_factory: Callable[..., GatewayProcess], browser_context: BrowserContext
) -> None:
    """One room over two workers (issue 12): the publisher on its home, players placed on
    both (SPREAD_THRESHOLD=1); the edge's players get the media through shared memory."""
    gateway = gateway_factory(workers=2, env={"SPREAD_THRESHOLD": "1"})
    room = _room()
    console: list[str] = []
    publisher = open_page(browser_context, f"{gateway.url}/web/publish.html?room={room}", console)
    poll("publisher connected", publisher, lambda: connected(publisher))
    players = []
    for _ in range(3):
        players.append(
            open_page(browser_context, f"{gateway.url}/web/play.html?room={room}", console)
        )
        _assert_playing(players[-1])
    with urllib.request.urlopen(f"{gateway.url}/api/rooms", timeout=5) as response:
        info = next(r for r in json.load(response) if r["name"] == room)
    assert len(info["viewersPerWorker"]) == 2, info
    assert sum(info["viewersPerWorker"].values()) == 3, info
    for player in players:  # still decoding after all joined
        _assert_decoding_more(player, 10)
    assert not [line for line in console if ": error: " in line], console


def _assert_decoding_more(player: Page, frames: int) -> None:
    target = _stats(player)["framesDecoded"] + frames
    poll("frames keep coming", player, lambda: _stats(player)["framesDecoded"] >= target)


def _assert_playing(player: Page) -> None:
    """The player shows video with a size, keeps decoding frames, and receives audio."""
    wait_decoding(player)
    video_width = "document.getElementById('video').videoWidth > 0"
    poll("video has a size", player, lambda: player.evaluate(video_width))
    poll("audio packets", player, lambda: _stats(player)["audioPackets"] > 0)


def _stats(page: Page) -> dict[str, int]:
    return page.evaluate(PLAYER_STATS_JS) or {"framesDecoded": 0, "audioPackets": 0}


def test_publisher_stop_sends_delete(gateway: str, browser_context: BrowserContext) -> None:
    """Stop must end the WHIP session on the server: the room then has no publisher."""
    room = _room()
    publisher = open_page(browser_context, f"{gateway}/web/publish.html?room={room}", [])
    poll("publisher connected", publisher, lambda: connected(publisher))
    publisher.click("#stop")
    poll(
        "closed",
        publisher,
        lambda: publisher.evaluate("window.sfuState.connectionState === 'closed'"),
    )
    player = open_page(browser_context, f"{gateway}/web/play.html?room={room}", [])
    state = poll(
        "player error",
        player,
        lambda: player.evaluate("window.sfuState.error"),
        timeout=10,
    )
    assert "404" in state, state


# --------------------------------------------------------------------------------------------
# CORS: a page served from another origin talks to the API with fetch.

CROSS_ORIGIN_PAGE = """<!doctype html>
<html><body><script>
// Runs a full WHIP publish + WHEP play against `api` from this (different) origin.
// A CORS failure shows up as a TypeError from fetch, recorded in `error`.
async function runCors(api, room) {
  const result = { steps: [] };
  const step = (name, resp) => result.steps.push({
    name, status: resp.status,
    location: resp.headers.get("Location"), etag: resp.headers.get("ETag"),
    contentType: resp.headers.get("Content-Type"),
  });
  try {
    const media = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    const pub = new RTCPeerConnection();
    media.getTracks().forEach((t) => pub.addTransceiver(t, { direction: "sendonly" }));
    await pub.setLocalDescription(await pub.createOffer());
    let resp = await fetch(`${api}/api/whip/publish/${room}`, {
      method: "POST", headers: { "Content-Type": "application/sdp" },
      body: pub.localDescription.sdp,
    });
    step("whip", resp);
    await pub.setRemoteDescription({ type: "answer", sdp: await resp.text() });
    const whip = new URL(resp.headers.get("Location"), resp.url).href;

    const play = new RTCPeerConnection();
    play.addTransceiver("video", { direction: "recvonly" });
    play.addTransceiver("audio", { direction: "recvonly" });
    await play.setLocalDescription(await play.createOffer());
    // Authorization forces a preflight that must list it in Allow-Headers.
    resp = await fetch(`${api}/api/whep/play/${room}`, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", "Authorization": "Bearer cors-test" },
      body: play.localDescription.sdp,
    });
    step("whep", resp);
    await play.setRemoteDescription({ type: "answer", sdp: await resp.text() });
    const whep = new URL(resp.headers.get("Location"), resp.url).href;

    step("whep-delete", await fetch(whep, { method: "DELETE" }));
    step("whip-delete", await fetch(whip, { method: "DELETE" }));
    pub.close();
    play.close();
  } catch (err) {
    result.error = `${err.name}: ${err.message}`;
  }
  return result;
}
</script></body></html>
"""


@pytest.fixture
def other_origin(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[str]:
    """A static server on another port of 127.0.0.1: a different origin, same host."""
    (tmp_path / "cors.html").write_text(CROSS_ORIGIN_PAGE)
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_whip_and_whep_from_another_origin(
    gateway: str, other_origin: str, browser_context: BrowserContext
) -> None:
    assert other_origin != gateway
    page = browser_context.new_page()
    page.goto(f"{other_origin}/cors.html")
    result = page.evaluate("([api, room]) => runCors(api, room)", [gateway, _room()])

    assert "error" not in result, result
    steps = {s["name"]: s for s in result["steps"]}
    for name in ("whip", "whep"):
        assert steps[name]["status"] == 201, result
        # Without Access-Control-Expose-Headers the browser hides these from JS, and a
        # browser client could neither DELETE (Location) nor PATCH (ETag) its session.
        assert steps[name]["location"], result
        assert steps[name]["etag"], result
        assert steps[name]["contentType"].startswith("application/sdp"), result
    assert steps["whep-delete"]["status"] == 200, result
    assert steps["whip-delete"]["status"] == 200, result
