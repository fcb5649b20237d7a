"""Real media through sfu-gateway: per codec and DTLS variant, a publisher that sends it and
a viewer that decodes it, each an aiortc process talking over loopback UDP.

aiortc decodes H264 (every profile, through FFmpeg), VP8 and Opus; VP9 and AV1 are decoded
by Chromium in tests/browser. The publisher reports the profile_idc of the SPS it put on the
wire, so a test cannot pass with a stream of another profile than the one negotiated.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.processes import GatewayProcess, start_gateway
from tests.support.clients import spawn_interop_peer

MIN_VIDEO_FRAMES = 60  # two seconds of the 30 fps publisher
SPS_PROFILE_IDC = {"constrained-baseline": 66, "baseline": 66, "main": 77, "high": 100}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    log_dir: Path = tmp_path_factory.mktemp("media-codecs")
    started = start_gateway(log_dir, workers=1)
    yield started
    started.stop()


def publish_and_view(
    gateway: GatewayProcess, publisher_args: list[str], viewer_args: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    room = "media-" + secrets.token_hex(4)
    publisher = spawn_interop_peer("publish", gateway.url, room, "--seconds", "5", *publisher_args)
    try:
        # The viewer re-POSTs while the room does not exist yet (404), then decodes.
        viewer = spawn_interop_peer(
            "view",
            gateway.url,
            room,
            "--seconds",
            "10",
            "--min-video-frames",
            str(MIN_VIDEO_FRAMES),
            "--min-audio-frames",
            "25",
            *viewer_args,
        ).result(timeout=60)
        published = publisher.result(timeout=60)
    finally:
        publisher.kill()
    assert published["ok"], (published, gateway.log())
    assert viewer["ok"], (viewer, gateway.log())
    assert viewer["size"] == [640, 360]
    return published, viewer


@pytest.mark.parametrize(
    ("profile", "mode"),
    [
        # The default run keeps one profile per packetization mode and the OBS one (high);
        # the other profiles run with -m slow (the negotiation of each is tested without
        # media in tests/interop/test_negotiation.py).
        pytest.param("constrained-baseline", 1, marks=pytest.mark.slow),
        ("constrained-baseline", 0),
        pytest.param("baseline", 1, marks=pytest.mark.slow),
        pytest.param("main", 1, marks=pytest.mark.slow),
        ("high", 1),
        ("high", 0),
    ],
)
def test_h264_profile_is_forwarded_and_decoded(
    gateway: GatewayProcess, profile: str, mode: int
) -> None:
    publisher_args = ["--video", "h264", "--h264-profile", profile]
    published, viewer = publish_and_view(
        gateway, [*publisher_args, "--packetization-mode", str(mode)], []
    )
    assert published["sps_profile_idc"] == SPS_PROFILE_IDC[profile]
    for side in (published, viewer):
        fmtp = side["answer_video"]["fmtp"].split(";")
        assert side["answer_video"]["rtpmap"] == "H264/90000"
        assert f"packetization-mode={mode}" in fmtp
    # The viewer offered every profile and was answered with exactly the publisher's.
    assert published["answer_video"]["fmtp"] == viewer["answer_video"]["fmtp"]
    assert viewer["rtp"]["video"]["packetsLost"] == 0


@pytest.mark.parametrize(
    ("publisher", "viewer", "setups"),
    [
        # GStreamer-style: RSA certificate, actpass (the worker becomes the DTLS client).
        (["--certificate", "rsa"], ["--certificate", "rsa"], ("active", "active")),
        # ffmpeg-style setup:passive publisher; a viewer that insists on being DTLS client.
        (
            ["--setup", "passive"],
            ["--setup", "active", "--certificate", "rsa"],
            ("active", "passive"),
        ),
        # A publisher that insists on being DTLS client with an RSA certificate.
        (
            ["--setup", "active", "--certificate", "rsa"],
            ["--setup", "passive"],
            ("passive", "active"),
        ),
    ],
    ids=["rsa-actpass", "passive-publisher-rsa-active-viewer", "rsa-active-publisher"],
)
def test_dtls_roles_and_certificates(
    gateway: GatewayProcess, publisher: list[str], viewer: list[str], setups: tuple[str, str]
) -> None:
    published, watched = publish_and_view(gateway, ["--video", "vp8", *publisher], viewer)
    assert (published["answer_setup"], watched["answer_setup"]) == setups
    assert watched["answer_video"]["rtpmap"] == "VP8/90000"
    assert watched["audio_frames"] >= 25


def test_packets_larger_than_aiortcs_own_reach_the_viewer(gateway: GatewayProcess) -> None:
    """1400-byte payloads (GStreamer's default) exceed what pylibsrtp protects by default."""
    publisher_args = ["--video", "h264", "--h264-profile", "main", "--payload-bytes", "1400"]
    published, viewer = publish_and_view(gateway, publisher_args, [])
    assert published["sps_profile_idc"] == SPS_PROFILE_IDC["main"]
    assert viewer["rtp"]["video"]["packetsLost"] == 0
