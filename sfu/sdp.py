"""Pure SDP preparation: what we change in offers before aiortc sees them, and in answers.

Errors are ValueError with a message fit for the HTTP client.
"""

from __future__ import annotations

import re

from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu.forward import CodecKey

MAX_OFFER_MEDIA_SECTIONS = 16
_MDNS_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ \S+\.local \d+ ", re.IGNORECASE)
_HOST_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ udp \d+ )(\S+)( \d+ typ host.*)$", re.I)


def strip_mdns_candidates(sdp: str) -> str:
    """Remove `.local` candidates: resolving them costs aioice a one-second stall each, and
    ICE still connects through the peer-reflexive candidate learned from the first check.

    When any is removed, or the offer has none at all (OBS, ffmpeg), `a=end-of-candidates`
    goes too: aioice fails a connection at once when the candidate list is complete but
    empty, while peer-reflexive discovery needs it open (the session's connect deadline
    still bounds it).
    """
    lines = sdp.splitlines()
    kept = [line for line in lines if not _MDNS_CANDIDATE.match(line)]
    if len(kept) != len(lines) or not any(line.startswith("a=candidate:") for line in kept):
        kept = [line for line in kept if line.strip() != "a=end-of-candidates"]
    return "\r\n".join(kept) + "\r\n"


def parse_offer(sdp: str) -> aiortc_sdp.SessionDescription:
    """Validate an offer well enough that aiortc will not choke on it."""
    if not sdp.startswith("v=0"):
        raise ValueError("the body is not an SDP offer (it must start with v=0)")
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"malformed SDP offer: {exc}") from None
    media = [m for m in description.media if m.kind in ("audio", "video")]
    if not media:
        raise ValueError("the offer has no audio or video section")
    if len(description.media) > MAX_OFFER_MEDIA_SECTIONS:
        raise ValueError(f"the offer has more than {MAX_OFFER_MEDIA_SECTIONS} media sections")
    for section in media:
        if section.ice is None or not section.ice.usernameFragment or not section.ice.password:
            raise ValueError(f"the {section.kind} section has no ice-ufrag/ice-pwd")
        if section.dtls is None or not section.dtls.fingerprints:
            raise ValueError(f"the {section.kind} section has no DTLS fingerprint")
    return description


def offered_kinds(description: aiortc_sdp.SessionDescription, direction: str) -> list[str]:
    """Kinds (first section of each) whose direction lets the client do `direction`.

    direction "send": sections the client sends on (WHIP); "recv": sections it receives on.
    """
    allowed = {"send": ("sendonly", "sendrecv"), "recv": ("recvonly", "sendrecv")}[direction]
    kinds: list[str] = []
    for section in description.media:
        if section.kind in ("audio", "video") and section.kind not in kinds:
            if (section.direction or "sendrecv") in allowed:
                kinds.append(section.kind)
    return kinds


def offered_codec_names(description: aiortc_sdp.SessionDescription, kind: str) -> list[str]:
    names: list[str] = []
    for section in description.media:
        if section.kind == kind:
            for codec in section.rtp.codecs:
                name = codec.mimeType.split("/", 1)[-1]
                if name.lower() not in ("rtx", "red", "ulpfec", "flexfec-03") and name not in names:
                    names.append(name)
    return names


def announce_public_ip(answer: str, public_ip: str | None) -> str:
    """Behind 1:1 NAT, host candidates must carry the public address."""
    if not public_ip:
        return answer
    out = []
    for line in answer.splitlines():
        match = _HOST_CANDIDATE.match(line)
        if match and ":" not in match.group(2) and ":" not in public_ip:
            line = match.group(1) + public_ip + match.group(3)
        out.append(line)
    return "\r\n".join(out) + "\r\n"


def ice_credentials(sdp: str) -> tuple[str, str]:
    ufrag = pwd = ""
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:") and not ufrag:
            ufrag = line.split(":", 1)[1].strip()
        elif line.startswith("a=ice-pwd:") and not pwd:
            pwd = line.split(":", 1)[1].strip()
    return ufrag, pwd


def codec_key(codec: RTCRtpCodecParameters) -> CodecKey:
    mime = codec.mimeType.lower()
    fmtp = ""
    if mime == "video/h264":
        profile = str(codec.parameters.get("profile-level-id", "42e01f"))[:4].lower()
        mode = str(codec.parameters.get("packetization-mode", "0"))
        fmtp = f"profile={profile};packetization-mode={mode}"
    return CodecKey(mime_type=mime, clock_rate=codec.clockRate, fmtp=fmtp)
