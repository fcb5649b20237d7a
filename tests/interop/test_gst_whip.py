"""GStreamer's webrtcbin publishes over WHIP (tests/clients/gst_whip.py) and viewers decode it.

webrtcbin is an independent WebRTC stack: libnice for ICE, GStreamer's OpenSSL DTLS elements
with their own self-signed RSA-2048 certificate (aiortc's is ECDSA, so the worker, as DTLS
client of an actpass offer, must accept an RSA server certificate and offer ECDHE-RSA
suites), and its own RTP payloaders (rtpvp8pay, rtpvp9pay, rtph264pay) and SDP.

Viewers: aiortc for VP8 and H264 (it has those decoders), Chromium for VP9.
Under CI=true a machine without GStreamer fails these tests instead of skipping them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser

from testkit.processes import start_gateway
from tests.browser.pages import open_page, wait_decoding
from tests.support.clients import (
    PeerProcess,
    require_gstreamer,
    spawn_gst_publisher,
    spawn_interop_peer,
)

PUBLISH_SECONDS = "10"
VIEW_ARGS = ("--seconds", "15", "--min-video-frames", "30", "--min-audio-frames", "10")


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_gstreamer()
    gateway = start_gateway(tmp_path_factory.mktemp("gst-gateway"), workers=1)
    try:
        yield gateway.url
    finally:
        gateway.stop()


@pytest.fixture
def clients() -> Iterator[list[PeerProcess]]:
    """Client processes a test started; any still running at teardown are killed."""
    started: list[PeerProcess] = []
    yield started
    for client in started:
        client.kill()


def _room() -> str:
    return "g-" + uuid.uuid4().hex[:10]


def _sdp_lines(sdp: str, prefix: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith(prefix)]


def _assert_published(result: dict[str, Any]) -> None:
    assert result["ok"] and result["exit_code"] == 0, _without_sdp(result)
    assert result["packets_sent"].get("video", 0) > 0, _without_sdp(result)
    assert result["packets_sent"].get("audio", 0) > 0, _without_sdp(result)
    assert result["delete_status"] == 200, _without_sdp(result)


def _without_sdp(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("offer", "answer")}


def _assert_aiortc_decoded(result: dict[str, Any], rtpmap: str, fmtp: tuple[str, ...]) -> None:
    assert result["ok"] and result["exit_code"] == 0, result
    assert result["answer_video"]["rtpmap"].upper() == rtpmap.upper(), result
    assert all(p in result["answer_video"]["fmtp"].split(";") for p in fmtp), result
    assert result["size"] == [320, 240], result  # gst_whip.py's videotestsrc size
    assert result["audio_frames"] >= 10, result
    # Loopback loses nothing: a gap means the SFU failed to forward some packets (GStreamer's
    # payloaders fill packets to 1400 bytes, larger than browsers' ~1200).
    video = result["rtp"]["video"]
    assert video["packetsLost"] <= max(2, video["packetsReceived"] // 100), result


@pytest.mark.parametrize(
    ("codec", "rtpmap", "fmtp"),
    [
        # VP8 from webrtcbin: with -m slow (GStreamer's own packetizer runs in the default
        # suite with H264 and VP9, VP8 with every aiortc and Chromium client).
        pytest.param("vp8", "VP8/90000", (), id="vp8", marks=pytest.mark.slow),
        # x264enc's constrained baseline is profile-level-id 42c01f (constraint flags differ
        # from the browsers' 42e01f, same profile): the viewer must get it as it was offered.
        pytest.param("h264", "H264/90000", ("packetization-mode=1",), id="h264"),
    ],
)
def test_gstreamer_publishes_and_aiortc_decodes(
    codec: str, rtpmap: str, fmtp: tuple[str, ...], module_gateway: str, clients: list[PeerProcess]
) -> None:
    room = _room()
    publisher = spawn_gst_publisher(
        module_gateway, room, "--codec", codec, "--seconds", PUBLISH_SECONDS
    )
    clients.append(publisher)
    viewer = spawn_interop_peer("view", module_gateway, room, *VIEW_ARGS)
    clients.append(viewer)

    viewed = viewer.result(timeout=60)
    published = publisher.result(timeout=60)
    _assert_published(published)
    # The worker answered as DTLS client: the handshake ran against GStreamer's RSA certificate.
    assert _sdp_lines(published["answer"], "a=setup:") == ["a=setup:active"] * 2, published
    _assert_aiortc_decoded(viewed, rtpmap, fmtp)


@pytest.mark.browser
def test_gstreamer_publishes_vp9_and_chromium_decodes(
    module_gateway: str,
    chromium: Browser,
    clients: list[PeerProcess],
) -> None:
    room = _room()
    publisher = spawn_gst_publisher(
        module_gateway, room, "--codec", "vp9", "--seconds", PUBLISH_SECONDS
    )
    clients.append(publisher)
    console: list[str] = []
    context = chromium.new_context()
    try:
        # play.html's WHEP POST gets 404 until the publisher is in: retry by reloading.
        player = None
        for _attempt in range(20):
            player = open_page(
                context, f"{module_gateway}/web/play.html?{urlencode({'room': room})}", console
            )
            if _wait_started(player):
                break
            player.close()
        assert player is not None
        decoded = wait_decoding(player)
        assert decoded["mimeType"] == "video/VP9", decoded
    finally:
        context.close()
    published = publisher.result(timeout=60)
    _assert_published(published)
    assert "VP9/90000" in " ".join(_sdp_lines(published["offer"], "a=rtpmap:")), published


def _wait_started(player: Any) -> bool:
    """True once play.html got past its WHEP POST; False if the POST failed (no publisher)."""
    player.wait_for_function(
        "window.sfuState.error !== null || window.sfuState.connectionState !== 'starting'"
        " && window.sfuState.connectionState !== 'new'",
        timeout=15_000,
    )
    return not player.evaluate("window.sfuState.error")


def test_obs_shaped_offer_h264_high_without_candidates(
    module_gateway: str, clients: list[PeerProcess]
) -> None:
    """Emulates OBS's WHIP offer shape with GStreamer: OBS itself cannot run here.

    OBS 30+ (libdatachannel) is the most common WHIP publisher: H264 High profile (64001f)
    plus Opus, one BUNDLE group, and no candidates at all in its offer (it gathers only after
    the 201 and never trickles), so the server must find it through peer-reflexive candidates
    from its incoming STUN checks. OBS is a GUI program and Debian 12 ships version 29,
    before WHIP, so CI cannot drive it; gst_whip.py --no-candidates --h264-profile high
    sends that offer shape from another real WebRTC stack.
    """
    room = _room()
    publisher = spawn_gst_publisher(
        module_gateway,
        room,
        *("--codec", "h264", "--h264-profile", "high", "--no-candidates"),
        *("--seconds", PUBLISH_SECONDS),
    )
    clients.append(publisher)
    viewer = spawn_interop_peer("view", module_gateway, room, *VIEW_ARGS)
    clients.append(viewer)

    viewed = viewer.result(timeout=60)
    published = publisher.result(timeout=60)
    offer = published.get("offer", "")
    assert not _sdp_lines(offer, "a=candidate:"), offer
    assert len(_sdp_lines(offer, "a=group:BUNDLE ")) == 1, offer
    assert any("profile-level-id=64001f" in line for line in _sdp_lines(offer, "a=fmtp:")), offer
    assert "OPUS/48000/2" in " ".join(_sdp_lines(offer, "a=rtpmap:")), offer
    _assert_published(published)
    # The viewer gets the publisher's exact profile: High, not a baseline substitute.
    _assert_aiortc_decoded(
        viewed, "H264/90000", ("profile-level-id=64001f", "packetization-mode=1")
    )
