"""Offer/answer through a real sfu-gateway and worker, with offers as real clients write them.

Every codec a publisher may send is answered with exactly that codec (its own payload type
and level), every viewer gets the room's codec under the viewer's payload type, and a viewer
that cannot take it is refused with a message naming both sides. Sections we do not forward
are rejected one by one; the offer is never refused whole for them. Media flow over these
negotiations is covered by test_media_codecs.py (and the browser tests for VP9/AV1).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from testkit.processes import GatewayProcess, start_gateway
from tests.interop.sdp_offers import (
    CHROME_AUDIO,
    CHROME_VIDEO,
    Section,
    answer_sections,
    browser_offer,
    h264_formats,
    only,
)
from tests.support.sdp import post_offer_sync

OPUS = only(CHROME_AUDIO, "opus")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    log_dir: Path = tmp_path_factory.mktemp("negotiation")
    started = start_gateway(log_dir, workers=1)
    yield started
    started.stop()


def new_room() -> str:
    return "neg-" + secrets.token_hex(4)


def publish(
    gateway: GatewayProcess, video: tuple[tuple[int, str, str], ...], room: str | None = None
) -> tuple[str, str]:
    room = room or new_room()
    offer = browser_offer([Section("audio", formats=OPUS), Section("video", formats=video)])
    status, body = post_offer_sync(gateway, "publish", room, offer)
    assert status == 201, (status, body, gateway.log())
    return room, body


def media_format(sdp: str, kind: str) -> tuple[int, str, str]:
    """(payload type, rtpmap, fmtp) of the one media format answered for `kind`."""
    _, sections = answer_sections(sdp)
    section = next(s for s in sections if s.kind == kind and s.direction != "inactive")
    media = [pt for pt in section.formats if not section.rtpmap[pt].startswith("rtx/")]
    assert len(media) == 1, section.lines
    pt = media[0]
    return pt, section.rtpmap[pt], section.fmtp.get(pt, "")


def rtx_formats(sdp: str, kind: str) -> dict[int, str]:
    _, sections = answer_sections(sdp)
    section = next(s for s in sections if s.kind == kind and s.direction != "inactive")
    return {pt: section.fmtp[pt] for pt in section.formats if section.rtpmap[pt].startswith("rtx/")}


def shifted(
    formats: tuple[tuple[int, str, str], ...], base: int
) -> tuple[tuple[int, str, str], ...]:
    """The same formats under other payload types (from `base` up), RTX apt remapped."""
    mapping = {f[0]: base + i for i, f in enumerate(formats)}
    out = []
    for pt, rtpmap, fmtp in formats:
        if rtpmap.startswith("rtx/"):
            fmtp = f"apt={mapping[int(fmtp[4:])]}"
        out.append((mapping[pt], rtpmap, fmtp))
    return tuple(out)


# (test id, publisher's video formats, the format the answer must name, its fmtp or "")
PUBLISHED = [
    ("vp8", only(CHROME_VIDEO, "VP8"), 96, "VP8/90000", ""),
    (
        "vp9-profile-0",
        (*only(CHROME_VIDEO, "VP9"), *only(CHROME_VIDEO, "VP8")),
        98,
        "VP9/90000",
        "profile-id=0",
    ),
    (
        "vp9-profile-2",
        ((100, "VP9/90000", "profile-id=2"), (101, "rtx/90000", "apt=100")),
        100,
        "VP9/90000",
        "profile-id=2",
    ),
    ("av1", (*only(CHROME_VIDEO, "AV1"), *only(CHROME_VIDEO, "VP8")), 45, "AV1/90000", ""),
    *(
        (
            f"h264-{plid}-mode{mode}",
            h264_formats((pt, plid, mode)),
            pt,
            "H264/90000",
            f"packetization-mode={mode};profile-level-id={plid}",
        )
        for pt, plid, mode in (
            (102, "42001f", 1),
            (104, "42001f", 0),
            (106, "42e01f", 1),
            (108, "42e01f", 0),
            (110, "4d001f", 1),
            (112, "4d001f", 0),
            (114, "640c1f", 1),
            (116, "64001f", 1),
            (118, "64001f", 0),
            (120, "640028", 1),  # High at level 4.0: the level must be answered as offered
            (122, "640034", 1),  # and level 5.2
            (50, "f4001f", 1),
            (52, "6e001f", 1),
        )
    ),
]


@pytest.mark.parametrize(
    ("formats", "pt", "rtpmap", "fmtp"),
    [p[1:] for p in PUBLISHED],
    ids=[p[0] for p in PUBLISHED],
)
def test_publisher_and_viewer_get_the_offered_codec(
    gateway: GatewayProcess,
    formats: tuple[tuple[int, str, str], ...],
    pt: int,
    rtpmap: str,
    fmtp: str,
) -> None:
    room, answer = publish(gateway, formats)
    answered_pt, answered_rtpmap, answered_fmtp = media_format(answer, "video")
    assert (answered_pt, answered_rtpmap) == (pt, rtpmap)
    for parameter in filter(None, fmtp.split(";")):
        assert parameter in answered_fmtp.split(";"), answer
    # RTX for the answered format, and no other format a publisher could switch to.
    assert list(rtx_formats(answer, "video").values()) == [f"apt={pt}"]
    assert media_format(answer, "audio")[:2] == (111, "opus/48000/2")

    # A viewer offering the same formats under other payload types gets them under its own.
    viewer_formats = shifted(formats, 35)
    viewer_pt = viewer_formats[[f[0] for f in formats].index(pt)][0]
    offer = browser_offer(
        [
            Section("video", "recvonly", viewer_formats),
            Section("audio", "recvonly", shifted(OPUS, 60)),
        ]
    )
    status, body = post_offer_sync(gateway, "play", room, offer)
    assert status == 201, body
    got_pt, got_rtpmap, got_fmtp = media_format(body, "video")
    assert (got_pt, got_rtpmap) == (viewer_pt, rtpmap)
    for parameter in filter(None, fmtp.split(";")):
        if not parameter.startswith("profile-level-id"):
            assert parameter in got_fmtp.split(";"), body
    assert list(rtx_formats(body, "video").values()) == [f"apt={viewer_pt}"]
    assert media_format(body, "audio")[0] == 60


def test_h264_viewer_without_the_publishers_profile_is_refused_naming_both(
    gateway: GatewayProcess,
) -> None:
    room, _ = publish(gateway, h264_formats((112, "64001f", 1)))
    # What Firefox offers: VP8, VP9 and constrained baseline/baseline H264 only.
    firefox_video = (
        *only(CHROME_VIDEO, "VP8", "VP9"),
        *h264_formats((126, "42e01f", 1), (97, "42e01f", 0)),
    )
    offer = browser_offer(
        [Section("audio", "recvonly", OPUS), Section("video", "recvonly", firefox_video)]
    )
    status, body = post_offer_sync(gateway, "play", room, offer)
    assert status == 400, body
    error = json.loads(body)
    assert error["code"] == "bad_offer"
    message = error["error"]
    assert "the room sends H264 (high, 64001f, packetization-mode=1)" in message
    assert "VP8" in message and "VP9 (profile-id=0)" in message
    assert "H264 (constrained-baseline, 42e01f, packetization-mode=1)" in message
    assert "audio" not in message  # audio matched; only the failing kind is named


def test_h264_viewer_with_another_packetization_mode_is_refused(gateway: GatewayProcess) -> None:
    room, _ = publish(gateway, h264_formats((104, "42e01f", 0)))
    offer = browser_offer([Section("video", "recvonly", h264_formats((102, "42e01f", 1)))])
    status, body = post_offer_sync(gateway, "play", room, offer)
    assert status == 400, body
    message = json.loads(body)["error"]
    assert "packetization-mode=0" in message and "packetization-mode=1" in message


def test_vp9_profile_2_room_refuses_a_profile_0_viewer(gateway: GatewayProcess) -> None:
    room, _ = publish(gateway, ((100, "VP9/90000", "profile-id=2"), (101, "rtx/90000", "apt=100")))
    offer = browser_offer([Section("video", "recvonly", ((98, "VP9/90000", "profile-id=0"),))])
    status, body = post_offer_sync(gateway, "play", room, offer)
    assert status == 400, body
    message = json.loads(body)["error"]
    assert "VP9 (profile-id=2)" in message and "VP9 (profile-id=0)" in message


def test_publisher_with_no_forwardable_video_codec_is_refused_naming_it(
    gateway: GatewayProcess,
) -> None:
    # H266 (VVC): a codec no SFU forwards yet.
    h266 = ((49, "H266/90000", "level-id=51;profile-id=1;sub-profile-id=0;tier-flag=0"),)
    offer = browser_offer([Section("audio", formats=OPUS), Section("video", formats=h266)])
    status, body = post_offer_sync(gateway, "publish", new_room(), offer)
    assert status == 400, body
    message = json.loads(body)["error"]
    assert "video: the offer sends H266" in message
    assert "VP9" in message and "AV1" in message and "H264" in message


def test_extra_sections_are_rejected_one_by_one(gateway: GatewayProcess) -> None:
    offer = browser_offer(
        [
            Section("video", formats=((49, "H266/90000", "profile-id=1"),)),
            Section("audio", formats=OPUS),
            Section("video", formats=only(CHROME_VIDEO, "VP8")),
            Section("video", formats=only(CHROME_VIDEO, "VP9")),
            Section("audio", formats=OPUS),
            Section("application"),
        ]
    )
    status, body = post_offer_sync(gateway, "publish", new_room(), offer)
    assert status == 201, body
    session, sections = answer_sections(body)
    assert [s.mid for s in sections] == ["0", "1", "2", "3", "4", "5"]
    kinds = [s.kind for s in sections]
    assert kinds == ["video", "audio", "video", "video", "audio", "application"]
    # The first audio, and the first video we can forward, are taken.
    assert [s.direction for s in sections[:5]] == [
        "inactive",
        "recvonly",
        "recvonly",
        "inactive",
        "inactive",
    ]
    # Declined audio/video sections stay bundled, naming one offered format; the data
    # channel is rejected outright (port 0) and leaves the BUNDLE group.
    assert "a=group:BUNDLE 0 1 2 3 4" in session
    assert sections[0].formats == [49] and sections[0].rtpmap[49] == "H266/90000"
    assert all(s.port == sections[1].port != 0 for s in sections[:5])
    assert sections[5].port == 0
    assert media_format(body, "video")[1] == "VP8/90000"


def test_simulcast_offer_is_answered_without_simulcast(gateway: GatewayProcess) -> None:
    offer = browser_offer(
        [
            Section("audio", formats=OPUS),
            Section("video", formats=only(CHROME_VIDEO, "VP8"), simulcast_rids=("h", "m", "l")),
        ]
    )
    status, body = post_offer_sync(gateway, "publish", new_room(), offer)
    assert status == 201, body
    assert "a=simulcast" not in body and "a=rid:" not in body
    assert media_format(body, "video")[1] == "VP8/90000"


def test_viewer_with_two_video_sections_gets_the_first(gateway: GatewayProcess) -> None:
    room, _ = publish(gateway, only(CHROME_VIDEO, "VP8"))
    offer = browser_offer(
        [
            Section("video", "recvonly", only(CHROME_VIDEO, "VP8")),
            Section("video", "recvonly", only(CHROME_VIDEO, "VP8")),
            Section("audio", "recvonly", OPUS),
        ]
    )
    status, body = post_offer_sync(gateway, "play", room, offer)
    assert status == 201, body
    _, sections = answer_sections(body)
    assert [s.direction for s in sections] == ["sendonly", "inactive", "sendonly"]


@pytest.mark.parametrize(
    ("offered", "answered"),
    [("actpass", "active"), ("passive", "active"), ("active", "passive")],
)
def test_both_dtls_roles_are_accepted(gateway: GatewayProcess, offered: str, answered: str) -> None:
    offer = browser_offer(
        [Section("audio", formats=OPUS), Section("video", formats=only(CHROME_VIDEO, "VP8"))],
        setup=offered,
    )
    status, body = post_offer_sync(gateway, "publish", new_room(), offer)
    assert status == 201, body
    setups = {line for line in body.splitlines() if line.startswith("a=setup:")}
    assert setups == {f"a=setup:{answered}"}


@pytest.mark.parametrize(
    "mline",
    [
        "m=video 9 UDP/TLS/RTP/SAVPF 300",  # payload type out of range
        "m=video 9 UDP/TLS/RTP/SAVPF 73",  # reserved for RTCP
        "m=video nine UDP/TLS/RTP/SAVPF 96",
    ],
)
def test_malformed_media_line_is_a_400(gateway: GatewayProcess, mline: str) -> None:
    offer = browser_offer(
        [Section("audio", formats=OPUS), Section("video", formats=only(CHROME_VIDEO, "VP8"))]
    )
    lines = offer.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("m=video"))
    lines[index] = mline
    status, body = post_offer_sync(gateway, "publish", new_room(), "\r\n".join(lines) + "\r\n")
    assert status == 400, body
    assert json.loads(body)["code"] == "bad_offer"
