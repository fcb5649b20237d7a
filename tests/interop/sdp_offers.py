"""SDP offers written the way real clients write them, for negotiation tests.

`browser_offer` follows what Chrome 126+ puts in an offer (format list, payload types in
both dynamic ranges, rtcp-fb, extensions, BUNDLE, `msid-semantic: WMS` with its space);
the builders let a test take formats out or add sections to model other clients.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

# (payload type, rtpmap, fmtp or "") in Chrome's order. RTX follows each media format.
CHROME_VIDEO: tuple[tuple[int, str, str], ...] = (
    (96, "VP8/90000", ""),
    (97, "rtx/90000", "apt=96"),
    (98, "VP9/90000", "profile-id=0"),
    (99, "rtx/90000", "apt=98"),
    (100, "VP9/90000", "profile-id=2"),
    (101, "rtx/90000", "apt=100"),
    (102, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
    (103, "rtx/90000", "apt=102"),
    (104, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f"),
    (105, "rtx/90000", "apt=104"),
    (106, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
    (107, "rtx/90000", "apt=106"),
    (108, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f"),
    (109, "rtx/90000", "apt=108"),
    (127, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"),
    (125, "rtx/90000", "apt=127"),
    (39, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=4d001f"),
    (40, "rtx/90000", "apt=39"),
    (112, "H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f"),
    (113, "rtx/90000", "apt=112"),
    (45, "AV1/90000", "level-idx=5;profile=0;tier=0"),
    (46, "rtx/90000", "apt=45"),
    (116, "red/90000", ""),
    (117, "rtx/90000", "apt=116"),
    (118, "ulpfec/90000", ""),
)
CHROME_AUDIO: tuple[tuple[int, str, str], ...] = (
    (111, "opus/48000/2", "minptime=10;useinbandfec=1"),
    (63, "red/48000/2", "111/111"),
    (9, "G722/8000", ""),
    (0, "PCMU/8000", ""),
    (8, "PCMA/8000", ""),
    (13, "CN/8000", ""),
    (110, "telephone-event/48000", ""),
    (126, "telephone-event/8000", ""),
)
VIDEO_EXTENSIONS = (
    "urn:ietf:params:rtp-hdrext:toffset",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:3gpp:video-orientation",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
)
AUDIO_EXTENSIONS = (
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "urn:ietf:params:rtp-hdrext:sdes:mid",
)
EXTENSION_IDS = {
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level": 1,
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time": 2,
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01": 3,
    "urn:ietf:params:rtp-hdrext:sdes:mid": 4,
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id": 10,
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id": 11,
    "urn:3gpp:video-orientation": 13,
    "urn:ietf:params:rtp-hdrext:toffset": 14,
}
FINGERPRINT = "sha-256 " + ":".join(["AB"] * 32)


@dataclass
class Section:
    kind: str  # audio | video | application
    direction: str = "sendonly"
    formats: tuple[tuple[int, str, str], ...] = ()
    simulcast_rids: tuple[str, ...] = ()
    port: int = 9
    extra: list[str] = field(default_factory=list)


def h264_formats(*profiles: tuple[int, str, int]) -> tuple[tuple[int, str, str], ...]:
    """H264 formats (payload type, profile-level-id, packetization mode), each with RTX."""
    formats: list[tuple[int, str, str]] = []
    for pt, plid, mode in profiles:
        fmtp = f"level-asymmetry-allowed=1;packetization-mode={mode};profile-level-id={plid}"
        formats += [(pt, "H264/90000", fmtp), (pt + 1, "rtx/90000", f"apt={pt}")]
    return tuple(formats)


def only(
    formats: tuple[tuple[int, str, str], ...], *names: str
) -> tuple[tuple[int, str, str], ...]:
    """The formats whose rtpmap starts with one of `names`, plus the RTX of each."""
    kept = [f for f in formats if f[1].split("/")[0] in names]
    pts = {str(f[0]) for f in kept}
    return tuple(f for f in formats if f in kept or (f[1].startswith("rtx/") and f[2][4:] in pts))


def browser_offer(sections: list[Section], setup: str = "actpass") -> str:
    ufrag, pwd = secrets.token_hex(4), secrets.token_hex(12)
    mids = [str(i) for i in range(len(sections))]
    lines = [
        "v=0",
        f"o=- {secrets.randbelow(1 << 62)} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE " + " ".join(mids),
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS stream",
    ]
    for mid, section in zip(mids, sections, strict=True):
        if section.kind == "application":
            lines += [
                f"m=application {section.port} UDP/DTLS/SCTP webrtc-datachannel",
                "c=IN IP4 0.0.0.0",
                f"a=ice-ufrag:{ufrag}",
                f"a=ice-pwd:{pwd}",
                "a=ice-options:trickle",
                f"a=fingerprint:{FINGERPRINT}",
                f"a=setup:{setup}",
                f"a=mid:{mid}",
                "a=sctp-port:5000",
                "a=max-message-size:262144",
            ]
            continue
        pts = " ".join(str(f[0]) for f in section.formats)
        lines += [
            f"m={section.kind} {section.port} UDP/TLS/RTP/SAVPF {pts}",
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            f"a=ice-ufrag:{ufrag}",
            f"a=ice-pwd:{pwd}",
            "a=ice-options:trickle",
            f"a=fingerprint:{FINGERPRINT}",
            f"a=setup:{setup}",
            f"a=mid:{mid}",
        ]
        extensions = VIDEO_EXTENSIONS if section.kind == "video" else AUDIO_EXTENSIONS
        lines += [f"a=extmap:{EXTENSION_IDS[uri]} {uri}" for uri in extensions]
        lines.append(f"a={section.direction}")
        sends = section.direction in ("sendonly", "sendrecv")
        if sends:
            lines.append(f"a=msid:stream track-{section.kind}-{mid}")
        lines += ["a=rtcp-mux", "a=rtcp-rsize"]
        for pt, rtpmap, fmtp in section.formats:
            lines.append(f"a=rtpmap:{pt} {rtpmap}")
            if section.kind == "video" and not rtpmap.startswith(("rtx/", "red/", "ulpfec/")):
                lines += [
                    f"a=rtcp-fb:{pt} goog-remb",
                    f"a=rtcp-fb:{pt} transport-cc",
                    f"a=rtcp-fb:{pt} ccm fir",
                    f"a=rtcp-fb:{pt} nack",
                    f"a=rtcp-fb:{pt} nack pli",
                ]
            elif rtpmap.startswith("opus/"):
                lines.append(f"a=rtcp-fb:{pt} transport-cc")
            if fmtp:
                lines.append(f"a=fmtp:{pt} {fmtp}")
        if section.simulcast_rids:
            lines += [f"a=rid:{rid} send" for rid in section.simulcast_rids]
            lines.append("a=simulcast:send " + ";".join(section.simulcast_rids))
        elif sends:
            ssrc, rtx_ssrc = 1000 + int(mid) * 2, 1001 + int(mid) * 2
            if section.kind == "video":
                lines.append(f"a=ssrc-group:FID {ssrc} {rtx_ssrc}")
            for value in (ssrc, rtx_ssrc) if section.kind == "video" else (ssrc,):
                lines += [
                    f"a=ssrc:{value} cname:interop",
                    f"a=ssrc:{value} msid:stream track-{section.kind}-{mid}",
                ]
        lines += section.extra
    return "\r\n".join(lines) + "\r\n"


# --- reading answers ---------------------------------------------------------------------


@dataclass
class AnsweredSection:
    kind: str
    port: int
    formats: list[int]
    mid: str | None
    direction: str | None
    rtpmap: dict[int, str]
    fmtp: dict[int, str]
    lines: list[str]


def answer_sections(sdp: str) -> tuple[list[str], list[AnsweredSection]]:
    session: list[str] = []
    sections: list[AnsweredSection] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind, port, _proto, *fmt = line[2:].split()
            formats = [int(f) for f in fmt] if kind != "application" else []
            sections.append(AnsweredSection(kind, int(port), formats, None, None, {}, {}, []))
        elif not sections:
            session.append(line)
            continue
        current = sections[-1]
        current.lines.append(line)
        if line.startswith("a=mid:"):
            current.mid = line[6:]
        elif line in ("a=sendonly", "a=recvonly", "a=sendrecv", "a=inactive"):
            current.direction = line[2:]
        elif line.startswith("a=rtpmap:"):
            pt, value = line[9:].split(" ", 1)
            current.rtpmap[int(pt)] = value
        elif line.startswith("a=fmtp:"):
            pt, value = line[7:].split(" ", 1)
            current.fmtp[int(pt)] = value
    return session, sections
