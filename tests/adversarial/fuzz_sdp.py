"""Hypothesis strategies for hostile WHIP/WHEP offers, trickle fragments and IPC frames.

Offers are mutations of offers written the way real clients write them (Chrome through
tests/interop/sdp_offers.py, and Firefox, OBS/libdatachannel, ffmpeg's WHIP muxer,
GStreamer's webrtcbin and aiortc by hand below). Every base offer is deterministic (fixed ICE
credentials, ids and SSRCs) so that a shrunk failing example reproduces byte for byte. A
mutation is a small tuple, so hypothesis shrinks a failure to the fewest, simplest edits and
its falsifying example can be read as "take offer X, do Y".
"""

from __future__ import annotations

import difflib
import http.client
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.interop.sdp_offers import CHROME_AUDIO, CHROME_VIDEO, Section, browser_offer, only

UFRAG = "fZzU"
PWD = "fuzzpwdfuzzpwdfuzzpwd0"
FP = "sha-256 " + ":".join(["5A"] * 32)


def _fixed(sdp: str) -> str:
    """browser_offer() with its random credentials and origin replaced by fixed ones."""
    sdp = re.sub(r"a=ice-ufrag:\S+", f"a=ice-ufrag:{UFRAG}", sdp)
    sdp = re.sub(r"a=ice-pwd:\S+", f"a=ice-pwd:{PWD}", sdp)
    return re.sub(r"^o=- \d+ ", "o=- 4611686018427387903 ", sdp, flags=re.M)


def _crlf(lines: Sequence[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


CHROME_PUBLISH = _fixed(
    browser_offer([Section("audio", formats=CHROME_AUDIO), Section("video", formats=CHROME_VIDEO)])
)
CHROME_SIMULCAST = _fixed(
    browser_offer(
        [
            Section("audio", formats=only(CHROME_AUDIO, "opus")),
            Section("video", formats=only(CHROME_VIDEO, "VP8"), simulcast_rids=("h", "m", "l")),
        ]
    )
)
CHROME_VIEW = _fixed(
    browser_offer(
        [
            Section("audio", direction="recvonly", formats=CHROME_AUDIO),
            Section("video", direction="recvonly", formats=CHROME_VIDEO),
        ]
    )
)
# The offer a WHIP client that works sends: the per-example "room still works" probe.
VALID_PUBLISH = _fixed(
    browser_offer(
        [
            Section("audio", formats=only(CHROME_AUDIO, "opus")),
            Section("video", formats=only(CHROME_VIDEO, "VP8")),
        ]
    )
)
VALID_VIEW = _fixed(
    browser_offer(
        [
            Section("audio", direction="recvonly", formats=only(CHROME_AUDIO, "opus")),
            Section("video", direction="recvonly", formats=only(CHROME_VIDEO, "VP8")),
        ]
    )
)

FIREFOX_PUBLISH = _crlf(
    [
        "v=0",
        "o=mozilla...THIS_IS_SDPARTA-128.0 5420893617372540396 0 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        f"a=fingerprint:{FP}",
        "a=group:BUNDLE 0 1",
        "a=ice-options:trickle",
        "a=msid-semantic:WMS *",
        "m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101",
        "c=IN IP4 0.0.0.0",
        "a=sendonly",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2/recvonly urn:ietf:params:rtp-hdrext:csrc-audio-level",
        "a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1",
        "a=fmtp:101 0-15",
        f"a=ice-pwd:{PWD}",
        f"a=ice-ufrag:{UFRAG}",
        "a=mid:0",
        "a=msid:{a6d1f1b4-0000-4000-8000-000000000001} {a6d1f1b4-0000-4000-8000-000000000002}",
        "a=rtcp-mux",
        "a=rtpmap:109 opus/48000/2",
        "a=rtpmap:9 G722/8000/1",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=setup:actpass",
        "a=ssrc:2410473245 cname:{a6d1f1b4-0000-4000-8000-000000000003}",
        "m=video 9 UDP/TLS/RTP/SAVPF 120 124 121 125 126 127 97 98",
        "c=IN IP4 0.0.0.0",
        "a=sendonly",
        "a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:4 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:5 urn:ietf:params:rtp-hdrext:toffset",
        "a=extmap:6/recvonly http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
        "a=extmap:7 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=fmtp:126 profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1",
        "a=fmtp:97 profile-level-id=42e01f;level-asymmetry-allowed=1",
        "a=fmtp:120 max-fs=12288;max-fr=60",
        "a=fmtp:124 apt=120",
        "a=fmtp:121 max-fs=12288;max-fr=60",
        "a=fmtp:125 apt=121",
        "a=fmtp:127 apt=126",
        "a=fmtp:98 apt=97",
        f"a=ice-pwd:{PWD}",
        f"a=ice-ufrag:{UFRAG}",
        "a=mid:1",
        "a=msid:{a6d1f1b4-0000-4000-8000-000000000001} {a6d1f1b4-0000-4000-8000-000000000004}",
        "a=rtcp-fb:120 nack",
        "a=rtcp-fb:120 nack pli",
        "a=rtcp-fb:120 ccm fir",
        "a=rtcp-fb:120 goog-remb",
        "a=rtcp-fb:120 transport-cc",
        "a=rtcp-fb:126 nack",
        "a=rtcp-fb:126 nack pli",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=rtpmap:120 VP8/90000",
        "a=rtpmap:124 rtx/90000",
        "a=rtpmap:121 VP9/90000",
        "a=rtpmap:125 rtx/90000",
        "a=rtpmap:126 H264/90000",
        "a=rtpmap:127 rtx/90000",
        "a=rtpmap:97 H264/90000",
        "a=rtpmap:98 rtx/90000",
        "a=setup:actpass",
        "a=ssrc:1815207218 cname:{a6d1f1b4-0000-4000-8000-000000000003}",
        "a=ssrc:2910347153 cname:{a6d1f1b4-0000-4000-8000-000000000003}",
        "a=ssrc-group:FID 1815207218 2910347153",
    ]
)

# OBS 30+ (libdatachannel): transport attributes at session level, H264 High, no candidates.
OBS_PUBLISH = _crlf(
    [
        "v=0",
        "o=rtc 3411934045 0 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=group:LS 0 1",
        "a=msid-semantic:WMS *",
        "a=setup:actpass",
        f"a=ice-ufrag:{UFRAG}",
        f"a=ice-pwd:{PWD}",
        "a=ice-options:ice2,trickle",
        f"a=fingerprint:{FP}",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=mid:0",
        "a=sendonly",
        "a=ssrc:3154301428 cname:obs",
        "a=ssrc:3154301428 msid:obs obs-audio",
        "a=msid:obs obs-audio",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;maxaveragebitrate=96000;stereo=1;sprop-stereo=1;useinbandfec=1",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=mid:1",
        "a=sendonly",
        "a=ssrc:3154301429 cname:obs",
        "a=ssrc:3154301429 msid:obs obs-video",
        "a=msid:obs obs-video",
        "a=rtcp-mux",
        "a=rtpmap:96 H264/90000",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=rtcp-fb:96 goog-remb",
        "a=fmtp:96 profile-level-id=64001f;packetization-mode=1;level-asymmetry-allowed=1",
    ]
)

# ffmpeg's WHIP muxer (libavformat/whip.c): setup:passive, one codec per section.
FFMPEG_PUBLISH = _crlf(
    [
        "v=0",
        "o=FFmpeg 4489045141692799359 2 IN IP4 127.0.0.1",
        "s=FFmpegPublishSession",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        f"a=ice-ufrag:{UFRAG}",
        f"a=ice-pwd:{PWD}",
        f"a=fingerprint:{FP}",
        "a=setup:passive",
        "a=mid:0",
        "a=sendonly",
        "a=msid:FFmpeg audio",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=ssrc:1234567890 cname:FFmpeg",
        "a=ssrc:1234567890 msid:FFmpeg audio",
        "m=video 9 UDP/TLS/RTP/SAVPF 106",
        "c=IN IP4 0.0.0.0",
        f"a=ice-ufrag:{UFRAG}",
        f"a=ice-pwd:{PWD}",
        f"a=fingerprint:{FP}",
        "a=setup:passive",
        "a=mid:1",
        "a=sendonly",
        "a=msid:FFmpeg video",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=rtpmap:106 H264/90000",
        "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "a=ssrc:1234567891 cname:FFmpeg",
        "a=ssrc:1234567891 msid:FFmpeg video",
    ]
)

# GStreamer webrtcbin (whipsink / whipclientsink): non-numeric mids, mid after the codecs.
GSTREAMER_PUBLISH = _crlf(
    [
        "v=0",
        "o=- 7366528263853540233 0 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=ice-options:trickle",
        "a=group:BUNDLE video0 audio1",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "c=IN IP4 0.0.0.0",
        "a=setup:actpass",
        f"a=ice-ufrag:{UFRAG}",
        f"a=ice-pwd:{PWD}",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=sendonly",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=rtcp-fb:96 ccm fir",
        "a=rtcp-fb:96 transport-cc",
        "a=extmap:1 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=framerate:30",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=ssrc-group:FID 2004132428 3311925155",
        "a=ssrc:2004132428 msid:user1 webrtctransceiver0",
        "a=ssrc:2004132428 cname:user3851476049@host-1",
        "a=ssrc:3311925155 msid:user1 webrtctransceiver0",
        "a=ssrc:3311925155 cname:user3851476049@host-1",
        "a=mid:video0",
        f"a=fingerprint:{FP}",
        "m=audio 9 UDP/TLS/RTP/SAVPF 98",
        "c=IN IP4 0.0.0.0",
        "a=setup:actpass",
        f"a=ice-ufrag:{UFRAG}",
        f"a=ice-pwd:{PWD}",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=sendonly",
        "a=rtpmap:98 OPUS/48000/2",
        "a=rtcp-fb:98 transport-cc",
        "a=extmap:1 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=fmtp:98 sprop-stereo=0",
        "a=ssrc:2552296733 msid:user1 webrtctransceiver1",
        "a=ssrc:2552296733 cname:user3851476049@host-1",
        "a=mid:audio1",
        f"a=fingerprint:{FP}",
    ]
)

# aiortc (testkit/client.py): host candidates and end-of-candidates in the offer.
AIORTC_PUBLISH = _crlf(
    [
        "v=0",
        "o=- 3928417245 3928417245 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic:WMS *",
        "m=audio 51000 UDP/TLS/RTP/SAVPF 96 0 8",
        "c=IN IP4 127.0.0.1",
        "a=sendrecv",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:2 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=mid:0",
        "a=msid:4f0d 0c1c",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=rtcp-mux",
        "a=ssrc:1611187283 cname:aiortc",
        "a=rtpmap:96 opus/48000/2",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=candidate:7bd6d5c6c1ef4a5d8c1b5e4b0d0e5f1a 1 udp 2130706431 127.0.0.1 51000 typ host",
        "a=end-of-candidates",
        f"a=ice-ufrag:{UFRAG}",
        f"a=ice-pwd:{PWD}",
        f"a=fingerprint:{FP}",
        "a=fingerprint:sha-384 " + ":".join(["6B"] * 48),
        "a=setup:actpass",
        "m=video 51000 UDP/TLS/RTP/SAVPF 97 98 99 100 101 102",
        "c=IN IP4 127.0.0.1",
        "a=sendrecv",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=mid:1",
        "a=msid:4f0d 7a2e",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=rtcp-mux",
        "a=ssrc-group:FID 2447466640 3032371012",
        "a=ssrc:2447466640 cname:aiortc",
        "a=ssrc:3032371012 cname:aiortc",
        "a=rtpmap:97 VP8/90000",
        "a=rtcp-fb:97 nack",
        "a=rtcp-fb:97 nack pli",
        "a=rtcp-fb:97 goog-remb",
        "a=rtpmap:98 rtx/90000",
        "a=fmtp:98 apt=97",
        "a=rtpmap:99 H264/90000",
        "a=rtcp-fb:99 nack",
        "a=rtcp-fb:99 nack pli",
        "a=rtcp-fb:99 goog-remb",
        "a=fmtp:99 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        "a=rtpmap:100 rtx/90000",
        "a=fmtp:100 apt=99",
        "a=rtpmap:101 H264/90000",
        "a=rtcp-fb:101 nack",
        "a=rtcp-fb:101 nack pli",
        "a=rtcp-fb:101 goog-remb",
        "a=fmtp:101 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "a=rtpmap:102 rtx/90000",
        "a=fmtp:102 apt=101",
        "a=candidate:7bd6d5c6c1ef4a5d8c1b5e4b0d0e5f1a 1 udp 2130706431 127.0.0.1 51000 typ host",
        "a=end-of-candidates",
        f"a=ice-ufrag:{UFRAG}",
        f"a=ice-pwd:{PWD}",
        f"a=fingerprint:{FP}",
        "a=setup:actpass",
    ]
)

# GStreamer whepsrc: recvonly, non-numeric mids.
GSTREAMER_VIEW = (
    GSTREAMER_PUBLISH.replace("a=sendonly", "a=recvonly")
    .replace("a=ssrc-group:FID 2004132428 3311925155\r\n", "")
    .replace("a=ssrc:", "a=x-ssrc:")
)
AIORTC_VIEW = AIORTC_PUBLISH.replace("a=sendrecv", "a=recvonly")

PUBLISH_OFFERS: dict[str, str] = {
    "chrome": CHROME_PUBLISH,
    "chrome-simulcast": CHROME_SIMULCAST,
    "firefox": FIREFOX_PUBLISH,
    "obs": OBS_PUBLISH,
    "ffmpeg": FFMPEG_PUBLISH,
    "gstreamer": GSTREAMER_PUBLISH,
    "aiortc": AIORTC_PUBLISH,
}
VIEW_OFFERS: dict[str, str] = {
    "chrome": CHROME_VIEW,
    "firefox": FIREFOX_PUBLISH.replace("a=sendonly", "a=recvonly"),
    "gstreamer": GSTREAMER_VIEW,
    "aiortc": AIORTC_VIEW,
    "obs-as-viewer": OBS_PUBLISH.replace("a=sendonly", "a=recvonly"),
}

# --- building blocks --------------------------------------------------------------------------

EDGE_INTS = (
    0,
    1,
    34,
    35,
    63,
    64,
    65,
    95,
    96,
    127,
    128,
    255,
    256,
    65535,
    65536,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**63,
    10**30,
)
DIRECTIONS = ("sendonly", "recvonly", "sendrecv", "inactive")
CODEC_NAMES = (
    "VP8",
    "VP9",
    "H264",
    "AV1",
    "opus",
    "OPUS",
    "rtx",
    "red",
    "ulpfec",
    "H265",
    "PCMU",
    "G722",
    "telephone-event",
    "flexfec-03",
    "",
    "vp8 ",
    "H264/",
    "\u00e9",
)
EXT_URIS = (
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "urn:example:unknown",
    "",
)
# Text that is legal UTF-8 but hostile: controls, NUL, separators, non-ASCII, bidi.
NASTY_CHARS = "\x00\x01\t \x7f\u00a0\u00e9\u2028\u202e\ufeff\U0001f600:;,/=~*\"'\\"


def ints() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(EDGE_INTS), st.integers(-3, 300))


def tokens(max_size: int = 12) -> st.SearchStrategy[str]:
    return st.text(
        alphabet=st.sampled_from("abcxyz019-_.~+!#$%&'*^`{|}" + NASTY_CHARS), max_size=max_size
    )


def words() -> st.SearchStrategy[str]:
    """A value as a hostile client might put it: empty, huge, numeric, weird characters."""
    return st.one_of(
        tokens(),
        st.integers(-(2**70), 2**70).map(str),
        st.sampled_from(["", " ", "0", "-1", "1e400", "NaN", "null", "x" * 300, "y" * 5000]),
        st.text(max_size=20),
    )


def mid_values() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(
            [
                "0",
                "1",
                "2",
                "video0",
                "audio1",
                "",
                " ",
                "0 1",
                "x" * 17,
                "m" * 300,
                "a" * 70000,
                "\u00e9",
                "mid\x00",
                "-",
                "*",
            ]
        ),
        tokens(20),
    )


@st.composite
def candidate_values(draw: st.DrawFn) -> str:
    """The value of an a=candidate line (without "a=").

    Mostly well-formed as far as the gateway checks (so it reaches the worker's ICE agent)
    with hostile values where the gateway does not look; sometimes broken anywhere.
    """
    mode = draw(st.sampled_from(["valid-shape"] * 6 + ["broken", "text"]))
    if mode == "text":
        return "candidate:" + draw(st.text(max_size=60))
    digits = st.one_of(
        st.sampled_from(["0", "1", "2", "9", "65535", "65536", "2122260223", "4294967296"]),
        st.integers(0, 2**70).map(str),
    )
    loose = st.one_of(digits, ints().map(str), tokens(4))
    shaped = mode == "valid-shape"
    foundation = draw(
        st.one_of(
            st.sampled_from(["1", "", "x" * 300, "\x00", "a:b", "+/"]),
            tokens(8).filter(lambda t: " " not in t),
        )
    )
    component = draw(digits if shaped else loose)
    transport = draw(st.sampled_from(["udp", "UDP", "tcp", "TCP", "sctp", "udp\u00e9", "x"]))
    priority = draw(digits if shaped else loose)
    address = draw(
        st.one_of(
            st.sampled_from(
                [
                    "127.0.0.1",
                    "192.0.2.1",
                    "0.0.0.0",
                    "255.255.255.255",
                    "::1",
                    "::",
                    "fe80::1%eth0",
                    "2001:db8::1",
                    "abcd.local",
                    "x.local",
                    "1.2.3",
                    "256.1.1.1",
                    "localhost",
                    "[::1]",
                    "x" * 300,
                    "192.0.2.1\u00e9",
                ]
            ),
            st.ip_addresses().map(str),
        )
    )
    port = draw(digits if shaped else loose)
    typ = "typ" if shaped else draw(st.sampled_from(["typ", "type", ""]))
    kind = draw(st.sampled_from(["host", "srflx", "prflx", "relay", "bogus", "HOST"]))
    value = f"candidate:{foundation} {component} {transport} {priority} {address} {port}"
    value += f" {typ} {kind}"
    if draw(st.booleans()):
        value += f" raddr {draw(st.sampled_from(['0.0.0.0', '::', 'x', '192.0.2.9']))}"
        value += f" rport {draw(loose)}"
    if transport.lower() == "tcp" or draw(st.integers(0, 4)) == 0:
        value += f" tcptype {draw(st.sampled_from(['active', 'passive', 'so', 'bogus']))}"
    if draw(st.integers(0, 4)) == 0:
        value += " generation 0 ufrag " + draw(tokens(6)) + " network-id 1"
    if draw(st.integers(0, 6)) == 0:
        value += " " + draw(words())
    return value


@st.composite
def sdp_lines(draw: st.DrawFn) -> str:
    """One SDP line: a plausible attribute with hostile values, or plain junk."""
    choice = draw(st.integers(0, 16))
    pt, n = draw(ints()), draw(ints())
    if choice == 0:
        codec = draw(st.sampled_from(CODEC_NAMES))
        rate = draw(
            st.one_of(st.sampled_from(["90000", "48000/2", "8000", "0", "-1", ""]), words())
        )
        return f"a=rtpmap:{pt} {codec}/{rate}"
    if choice == 1:
        params = draw(
            st.sampled_from(
                [
                    "apt=96",
                    "apt=9999",
                    "apt=",
                    "profile-level-id=zzzzzz",
                    "profile-level-id=64001f",
                    "packetization-mode=7",
                    "profile-id=9",
                    "level-idx=99;profile=7;tier=9",
                    "minptime=10;useinbandfec=1",
                    ";;;",
                    "=",
                    "a=b=c",
                    "x" * 2000,
                ]
            )
        )
        return f"a=fmtp:{pt} {params}"
    if choice == 2:
        direction = draw(st.sampled_from(["", "/sendonly", "/recvonly", "/bogus", "/"]))
        return f"a=extmap:{n}{direction} {draw(st.sampled_from(EXT_URIS))}"
    if choice == 3:
        attr = draw(st.sampled_from(["cname", "msid", "mslabel", "label", "", "x"]))
        return f"a=ssrc:{n} {attr}:{draw(words())}"
    if choice == 4:
        ssrcs = " ".join(str(draw(ints())) for _ in range(draw(st.integers(0, 3))))
        return f"a=ssrc-group:{draw(st.sampled_from(['FID', 'SIM', 'FEC-FR', 'X']))} {ssrcs}"
    if choice == 5:
        rid = draw(st.one_of(st.sampled_from(["h", "m", "l", "q"]), words()))
        direction = draw(st.sampled_from(["send", "recv", "", "both"]))
        params = draw(
            st.sampled_from(
                ["", "pt=96", "pt=9999", "max-width=1280;max-height=720", "max-fps=-1", "=;="]
            )
        )
        return f"a=rid:{rid} {direction} {params}".rstrip()
    if choice == 6:
        spec = draw(
            st.sampled_from(
                [
                    "send h;m;l",
                    "recv h;m;l",
                    "send ~h;m",
                    "send h,m;l",
                    "send x;y;z",
                    "send",
                    "",
                    "send " + ";".join("r" * 50),
                ]
            )
        )
        return f"a=simulcast:{spec}"
    if choice == 7:
        return f"a=mid:{draw(mid_values())}"
    if choice == 8:
        mids = " ".join(draw(st.lists(mid_values(), max_size=4)))
        return f"a=group:{draw(st.sampled_from(['BUNDLE', 'LS', 'bundle', 'FID', '']))} {mids}"
    if choice == 9:
        return "a=" + draw(candidate_values())
    if choice == 10:
        kind = draw(st.sampled_from(["audio", "video", "application", "text", "message", ""]))
        port = draw(st.sampled_from(["9", "0", "65536", "-1", "9/2", "x"]))
        proto = draw(
            st.sampled_from(
                ["UDP/TLS/RTP/SAVPF", "RTP/AVP", "UDP/DTLS/SCTP", "", "TCP/TLS/RTP/SAVPF"]
            )
        )
        fmts = " ".join(str(draw(ints())) for _ in range(draw(st.integers(0, 4))))
        return f"m={kind} {port} {proto} {fmts}".rstrip()
    if choice == 11:
        return f"c=IN {draw(st.sampled_from(['IP4', 'IP6', 'XX']))} {draw(words())}"
    if choice == 12:
        return f"a={draw(st.sampled_from(DIRECTIONS + ('bogus', 'sendonly ', 'SENDONLY')))}"
    if choice == 13:
        attr = draw(
            st.sampled_from(
                [
                    "ice-ufrag",
                    "ice-pwd",
                    "fingerprint",
                    "setup",
                    "ice-options",
                    "rtcp",
                    "rtcp-fb",
                    "msid",
                    "extmap-allow-mixed",
                    "ice-lite",
                    "sctp-port",
                    "max-message-size",
                    "rtcp-mux",
                ]
            )
        )
        return f"a={attr}:{draw(words())}"
    if choice == 14:
        algo = draw(st.sampled_from(["sha-256", "sha-1", "sha-512", "md5", "SHA-256", "", "x"]))
        value = draw(st.sampled_from([":".join(["AB"] * 32), "ZZ", "", ":" * 40, "AB" * 300]))
        return f"a=fingerprint:{algo} {value}"
    if choice == 15:
        letter = draw(st.sampled_from("vostcbkazruipe"))
        return f"{letter}={draw(words())}"
    return draw(st.text(max_size=40))


# --- mutations of a base offer ------------------------------------------------------------------

Mutation = tuple[str, int, int, str]  # (name, a, b, text): what each uses is per name

LINE_PREFIXES = (
    "a=ice-ufrag:",
    "a=ice-pwd:",
    "a=fingerprint:",
    "a=setup:",
    "a=mid:",
    "a=group:BUNDLE",
    "a=rtpmap:",
    "a=fmtp:",
    "a=rtcp-fb:",
    "a=extmap:",
    "a=ssrc",
    "a=msid",
    "a=rtcp-mux",
    "c=",
    "a=sendonly",
    "a=recvonly",
    "a=sendrecv",
    "a=candidate:",
    "a=end-of-candidates",
    "o=",
    "s=",
    "t=",
    "v=",
    "m=audio",
    "m=video",
)


@st.composite
def mutations(draw: st.DrawFn) -> Mutation:
    name = draw(
        st.sampled_from(
            [
                "dup_line",
                "drop_line",
                "swap_lines",
                "replace_line",
                "insert_line",
                "set_mid",
                "add_mid",
                "bundle",
                "drop_all",
                "direction",
                "m_formats",
                "dup_section",
                "drop_section",
                "swap_sections",
                "line_ending",
                "value_dump",
            ]
        )
    )
    a, b = draw(st.integers(0, 200)), draw(st.integers(0, 200))
    text = ""
    if name in ("replace_line", "insert_line"):
        text = draw(sdp_lines())
    elif name in ("set_mid", "add_mid"):
        text = draw(mid_values())
    elif name == "bundle":
        text = " ".join(draw(st.lists(mid_values(), max_size=5)))
    elif name == "drop_all":
        text = draw(st.sampled_from(LINE_PREFIXES))
    elif name == "direction":
        text = draw(st.sampled_from(DIRECTIONS + ("bogus", "")))
    elif name == "m_formats":
        text = " ".join(str(draw(ints())) for _ in range(draw(st.integers(0, 5))))
    elif name == "line_ending":
        text = draw(st.sampled_from(["\n", "\r", "\r\r\n", "\n\r", "\r\n\r\n", " \r\n"]))
    elif name == "value_dump":
        text = draw(words())
    elif name == "dup_section":
        b = draw(st.integers(1, 20))
    return (name, a, b, text)


def _sections(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) line ranges of the media sections."""
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    return [(s, starts[k + 1] if k + 1 < len(starts) else len(lines)) for k, s in enumerate(starts)]


def apply_mutation(lines: list[str], mutation: Mutation) -> list[str]:
    """`lines` edited by one mutation; a line-ending change is applied by render()."""
    name, a, b, text = mutation
    lines = list(lines)
    sections = _sections(lines)
    if not lines:
        return [text] if name in ("replace_line", "insert_line") else lines
    i, j = a % len(lines), b % len(lines)
    if name == "dup_line":
        lines.insert(i, lines[i])
    elif name == "drop_line":
        del lines[i]
    elif name == "swap_lines":
        lines[i], lines[j] = lines[j], lines[i]
    elif name == "replace_line":
        lines[i] = text
    elif name == "insert_line":
        lines.insert(i, text)
    elif name in ("set_mid", "add_mid", "direction") and sections:
        start, end = sections[a % len(sections)]
        if name == "add_mid":
            lines.insert(end, f"a=mid:{text}")
        elif name == "set_mid":
            mids = [k for k in range(start, end) if lines[k].startswith("a=mid:")]
            if mids:
                lines[mids[0]] = f"a=mid:{text}"
            else:
                lines.insert(end, f"a=mid:{text}")
        else:
            dirs = [k for k in range(start, end) if lines[k][2:] in DIRECTIONS]
            if dirs and b % 2 == 0:
                lines[dirs[0]] = f"a={text}"
            else:
                lines.insert(end, f"a={text}")
    elif name == "bundle":
        groups = [k for k, line in enumerate(lines) if line.startswith("a=group:BUNDLE")]
        new = f"a=group:BUNDLE {text}".rstrip()
        if groups:
            lines[groups[0]] = new
        else:
            lines.insert(min(4, len(lines)), new)
    elif name == "drop_all":
        lines = [line for line in lines if not line.startswith(text)]
    elif name == "m_formats" and sections:
        start, _end = sections[a % len(sections)]
        parts = lines[start].split()
        lines[start] = " ".join([*parts[:3], text]).rstrip()
    elif name == "dup_section" and sections:
        start, end = sections[a % len(sections)]
        lines = lines[:end] + lines[start:end] * b + lines[end:]
    elif name == "drop_section" and sections:
        start, end = sections[a % len(sections)]
        del lines[start:end]
    elif name == "swap_sections" and len(sections) > 1:
        (s1, e1), (s2, e2) = sections[0], sections[1]
        lines = lines[:s1] + lines[s2:e2] + lines[s1:e1] + lines[e2:]
    elif name == "value_dump":
        # Put a hostile value after the first ':' (or ' ') of line i.
        line = lines[i]
        sep = ":" if ":" in line else " "
        head = line.split(sep, 1)[0]
        lines[i] = f"{head}{sep}{text}"
    return lines


@dataclass(frozen=True)
class OfferCase:
    """A base offer and the edits made to it; `render()` gives the exact body sent."""

    base: str
    edits: tuple[Mutation, ...]
    raw_prefix: bytes = b""  # bytes put in front (BOM, invalid UTF-8)
    raw_suffix: bytes = b""

    def render(self, offers: dict[str, str]) -> bytes:
        lines = offers[self.base].split("\r\n")[:-1]
        ending = "\r\n"
        for edit in self.edits:
            if edit[0] == "line_ending":
                ending = edit[3]
            else:
                lines = apply_mutation(lines, edit)
        text = ending.join(lines) + ending
        return self.raw_prefix + text.encode("utf-8", errors="surrogatepass") + self.raw_suffix

    def describe(self, offers: dict[str, str]) -> str:
        """The case as a reader wants it: base offer, edits, and the diff they made."""
        before = offers[self.base].split("\r\n")[:-1]
        after = self.render(offers).decode("utf-8", errors="backslashreplace")
        after_lines = re.split(r"\r\n|\r|\n", after)
        if after_lines and not after_lines[-1]:
            after_lines.pop()
        diff = difflib.unified_diff(before, after_lines, lineterm="", n=1)
        changed = [repr(line)[1:-1] for line in list(diff)[2:]]
        if len(changed) > 60:
            changed = changed[:60] + [f"... ({len(changed) - 60} more diff lines)"]
        raw = f"; raw prefix {self.raw_prefix!r} suffix {self.raw_suffix!r}"
        return (
            f"base offer {self.base!r}, edits {list(self.edits)!r}"
            + (raw if self.raw_prefix or self.raw_suffix else "")
            + "\ndiff against the base offer:\n"
            + "\n".join(changed)
        )


RAW_BYTES = (
    b"",
    b"",
    b"",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\x80",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\x00",
    b"\xf4\x90\x80\x80",
)


def offer_cases(offers: dict[str, str]) -> st.SearchStrategy[OfferCase]:
    return st.builds(
        OfferCase,
        base=st.sampled_from(sorted(offers)),
        edits=st.lists(mutations(), min_size=0, max_size=4).map(tuple),
        raw_prefix=st.sampled_from([b""] * 20 + list(RAW_BYTES[3:5])),
        raw_suffix=st.sampled_from([b""] * 20 + list(RAW_BYTES[3:])),
    )


def random_bodies() -> st.SearchStrategy[bytes]:
    """Bodies that are not offers at all, or only start like one."""
    return st.one_of(
        st.binary(max_size=400),
        st.text(max_size=400).map(lambda t: t.encode("utf-8", errors="surrogatepass")),
        st.text(max_size=400).map(lambda t: ("v=0\r\n" + t).encode("utf-8", "surrogatepass")),
        st.lists(sdp_lines(), max_size=12).map(
            lambda ls: ("v=0\r\n" + "\r\n".join(ls) + "\r\n").encode("utf-8", "surrogatepass")
        ),
    )


# --- trickle fragments ----------------------------------------------------------------------


@dataclass(frozen=True)
class FragmentCase:
    lines: tuple[str, ...]
    ending: str
    if_match: str  # "etag", "wrong", "star", "list", "weak", "none"
    content_type: str


@st.composite
def fragment_lines(draw: st.DrawFn) -> str:
    choice = draw(st.integers(0, 12))
    if choice <= 6:
        return "a=" + draw(candidate_values())
    if choice == 7:
        return "a=end-of-candidates"
    if choice == 8:
        return f"a=mid:{draw(mid_values())}"
    if choice == 9:
        same = draw(st.integers(0, 3)) > 0
        return f"a=ice-ufrag:{UFRAG if same else draw(words())}"
    if choice == 10:
        same = draw(st.integers(0, 3)) > 0
        return f"a=ice-pwd:{PWD if same else draw(words())}"
    if choice == 11:
        return draw(
            st.sampled_from(
                [
                    "a=ice-options:trickle",
                    "a=group:BUNDLE 0 1",
                    "m=audio 9 UDP/TLS/RTP/SAVPF 0",
                    "a=end-of-candidates x",
                ]
            )
        )
    return draw(sdp_lines())


def fragment_cases() -> st.SearchStrategy[FragmentCase]:
    return st.builds(
        FragmentCase,
        lines=st.lists(fragment_lines(), min_size=0, max_size=8).map(tuple),
        ending=st.sampled_from(["\r\n", "\n", "\r"]),
        if_match=st.sampled_from(["etag"] * 12 + ["wrong", "star", "list", "weak", "none"]),
        content_type=st.sampled_from(
            ["application/trickle-ice-sdpfrag"] * 16
            + ["application/sdp", "text/plain", "application/trickle-ice-sdpfrag; charset=x"]
        ),
    )


# --- harness shared by test_fuzz_signalling.py and test_fuzz_ipc.py ---------------------------

REPO = Path(__file__).resolve().parent.parent.parent
SUMMARY_PATH = REPO / "bench" / "results" / "fuzz-summary.json"
# 503 codes that say "capacity or availability, try again" (README, gateway/http/errors.py);
# "internal" is not one of them: it means the server failed on the input.
AVAILABILITY_CODES = frozenset(
    {
        "no_worker",
        "worker_timeout",
        "worker_gone",
        "too_many_pending_sessions",
        "worker_full",
        "shutting_down",
        "overloaded",
    }
)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def code(self) -> str:
        try:
            return str(self.json().get("code"))
        except (ValueError, AttributeError):
            return "?"

    def label(self) -> str:
        """'201' or '400 bad_offer': what the summary counts."""
        return str(self.status) if self.status < 300 else f"{self.status} {self.code()}"


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Reply:
    """One request on its own connection, exactly as given (no encoding, no redirects)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
    finally:
        connection.close()


def process_children(pid: int) -> frozenset[int]:
    """Live child pids of `pid` (from /proc/PID/task/*/children; no psutil)."""
    children: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return frozenset()
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as handle:
                children.update(int(child) for child in handle.read().split())
        except OSError:
            continue
    alive = set()
    for child in children:
        try:
            with open(f"/proc/{child}/stat", encoding="ascii", errors="replace") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            alive.add(child)
    return frozenset(alive)


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of one metric family in a Prometheus text page."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def shown(data: object, limit: int = 1500) -> str:
    """An input as it goes into an assertion message: exact (repr), cut when huge."""
    text = repr(data)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def write_summary(section: str, summary: dict[str, Any]) -> None:
    """Merge this module's figures into bench/results/fuzz-summary.json (git-ignored)."""
    SUMMARY_PATH.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing = json.loads(SUMMARY_PATH.read_text())
        if not isinstance(existing, dict):
            existing = {}
    except (OSError, ValueError):
        existing = {}
    existing[section] = summary
    SUMMARY_PATH.write_text(json.dumps(existing, indent=2, sort_keys=True) + "\n")
