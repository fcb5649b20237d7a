"""Every video codec Debian's Chromium can send, published by Chromium and watched by Chromium
(and by aiortc where aiortc decodes it), through the real gateway and worker.

publish.html?codec=NAME[;fmtp] moves that codec to the front of the offer (gateway/web/sfu.js
preferVideoCodec). Each case checks what was really negotiated on both legs, from the browsers'
own getStats codec entries, so a server that silently fell back to another codec fails.

Chromium 156 on Debian 12 encodes (RTCRtpSender.getCapabilities) VP8 and VP9 profiles 0 and 2
with libvpx, H264 42001f/42e01f/4d001f in packetization modes 1 and 0 with OpenH264 (no High
profile) and AV1 with libaom. One browser and one gateway serve the whole module; each case
uses its own room and pages.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, Page

from testkit.processes import start_gateway
from tests.browser.pages import connected, open_page, poll, video_stats, wait_decoding
from tests.support.clients import PeerProcess, spawn_interop_peer

pytestmark = pytest.mark.browser


@dataclass(frozen=True)
class Case:
    """One codec as the publisher page is asked for it, and what both legs must show."""

    spec: str  # the ?codec= value
    mime_type: str
    fmtp: tuple[str, ...] = ()  # parameters the negotiated a=fmtp must contain, on both legs
    aiortc_decodes: bool = False  # aiortc has VP8 and H264 decoders only


CASES = [
    pytest.param(Case("VP8", "video/VP8", aiortc_decodes=True), id="vp8"),
    pytest.param(Case("VP9;profile-id=0", "video/VP9", ("profile-id=0",)), id="vp9-profile0"),
    pytest.param(Case("VP9;profile-id=2", "video/VP9", ("profile-id=2",)), id="vp9-profile2"),
    pytest.param(
        Case(
            "H264;profile-level-id=42e01f;packetization-mode=1",
            "video/H264",
            ("profile-level-id=42e01f", "packetization-mode=1"),
            aiortc_decodes=True,
        ),
        id="h264-42e01f",
    ),
    pytest.param(
        Case(
            "H264;profile-level-id=4d001f;packetization-mode=1",
            "video/H264",
            ("profile-level-id=4d001f", "packetization-mode=1"),
            aiortc_decodes=True,
        ),
        id="h264-4d001f",
    ),
    pytest.param(
        Case(
            "H264;profile-level-id=42e01f;packetization-mode=0",
            "video/H264",
            ("profile-level-id=42e01f", "packetization-mode=0"),
            aiortc_decodes=True,
        ),
        id="h264-42e01f-mode0",
    ),
    pytest.param(Case("AV1", "video/AV1"), id="av1"),
]


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    gateway = start_gateway(tmp_path_factory.mktemp("codec-gateway"), workers=1)
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


@pytest.fixture
def new_page(chromium: Browser) -> Iterator[Callable[[str, list[str]], Page]]:
    """open_page() in a fresh context of the module's browser; contexts close at teardown."""
    contexts = []

    def open_in_new_context(url: str, console: list[str]) -> Page:
        context = chromium.new_context()
        contexts.append(context)
        return open_page(context, url, console)

    yield open_in_new_context
    for context in contexts:
        context.close()


def _assert_codec(stats: dict[str, Any] | None, case: Case, leg: str) -> None:
    assert stats is not None, f"{leg}: no video RTP stats"
    assert stats["mimeType"] == case.mime_type, (leg, stats)
    fmtp = stats["fmtp"].split(";")
    assert all(param in fmtp for param in case.fmtp), (leg, stats)


@pytest.mark.parametrize("case", CASES)
def test_chromium_publishes_codec_and_chromium_decodes_it(
    case: Case,
    module_gateway: str,
    new_page: Callable[[str, list[str]], Page],
    clients: list[PeerProcess],
) -> None:
    room = "c-" + uuid.uuid4().hex[:10]
    console: list[str] = []
    query = urlencode({"room": room, "codec": case.spec})
    publisher = new_page(f"{module_gateway}/web/publish.html?{query}", console)
    poll("publisher connected", publisher, lambda: connected(publisher))
    sending = poll(
        "publisher sends video",
        publisher,
        lambda: (s := video_stats(publisher, "outbound-rtp")) and s["mimeType"] and s,
    )
    _assert_codec(sending, case, "publisher")

    aiortc_viewer = None
    if case.aiortc_decodes:
        view_args = ("--seconds", "15", "--min-video-frames", "30", "--min-audio-frames", "1")
        aiortc_viewer = spawn_interop_peer("view", module_gateway, room, *view_args)
        clients.append(aiortc_viewer)

    player = new_page(f"{module_gateway}/web/play.html?room={room}", console)
    decoded = wait_decoding(player)
    _assert_codec(decoded, case, "player")

    if aiortc_viewer is not None:
        result = aiortc_viewer.result(timeout=40)
        assert result["ok"], result
        answered = result["answer_video"]
        assert f"video/{answered['rtpmap']}".lower().startswith(case.mime_type.lower()), result
        assert all(param in answered["fmtp"].split(";") for param in case.fmtp), result
    assert not [line for line in console if ": error: " in line], console
