"""Pure SDP preparation: what we change in offers before aiortc sees them, and in answers.

Errors are ValueError with a message fit for the HTTP client.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from aioice.candidate import candidate_foundation
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from sfu.codecs import CodecKey

MAX_OFFER_MEDIA_SECTIONS = 16
TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
_MDNS_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ \S+\.local \d+ ", re.IGNORECASE)
_CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d+) (\S+) (\d+) (\S+) (\d+) typ (\S+)(.*)$")
_PROFILE_LEVEL_ID = re.compile(r"^[0-9a-fA-F]{6}\Z")
# RFC 8843 makes a MID a token; we also keep it within what a one-byte RTP header extension
# can carry (16 bytes), which is where every viewer's packets repeat it.
MAX_MID_LENGTH = 16
_MID = re.compile(r"^[A-Za-z0-9!#$%&'*+\-.^_`{|}~]{1,16}\Z")
_DIRECTION_LINES = ("a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive")
_FMTP_PROFILE_LEVEL_ID = re.compile(r"^(a=fmtp:(\d+) .*profile-level-id=)([0-9a-fA-F]{6})(.*)$")
# Codecs that only protect or repair another codec: not a choice a viewer or publisher makes.
_REPAIR_CODECS = ("rtx", "red", "ulpfec", "flexfec-03")
# Attributes that describe the one BUNDLE transport; they may appear only in the first section.
_TRANSPORT_ATTRIBUTES = (
    "a=ice-ufrag:",
    "a=ice-pwd:",
    "a=ice-options:",
    "a=fingerprint:",
    "a=setup:",
    "a=candidate:",
    "a=end-of-candidates",
)
# What a declined but bundled section repeats from the answer's first section.
_SHARED_TRANSPORT = ("c=", "a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:")
# H264 profiles aiortc's profile table does not name (profile_idc and profile-iop, in hex).
_H264_PROFILE_NAMES = {"6e00": "high-10", "7a00": "high-422", "f400": "high-444"}
# H265 general_profile_idc values (RFC 7798 §7.1 profile-id; H.265 Annex A).
_H265_PROFILE_NAMES = {
    1: "main",
    2: "main-10",
    3: "main-still-picture",
    4: "range-extensions",
    5: "high-throughput",
    9: "screen-content",
}
_H265_PROFILE_ID = re.compile(r"^[0-9]{1,2}\Z")
# The H265 parameters an answer echoes from the offer: capacity, not bitstream format.
_H265_LEVEL_PARAMETERS = ("level-id", "tier-flag")
_H265_LEVEL_VALUE = re.compile(r"^[0-9]{1,3}\Z")
_FMTP_PAYLOAD_TYPE = re.compile(r"^a=fmtp:(\d+) (.*)$")


def strip_mdns_candidates(sdp: str) -> str:
    """Remove `.local` candidates and every `a=end-of-candidates`.

    Resolving an mDNS candidate costs aioice a one-second stall each, and ICE still connects
    through the peer-reflexive candidate learned from the first check. End-of-candidates
    goes because aioice fails a connection at once when its candidate list is complete but
    empty, which is what OBS and ffmpeg offers (no candidates at all) and offers without
    usable ones amount to; and with BUNDLE every section feeds one transport, so a marker in
    the first section would close the list before a later section's candidates. Trickle may
    still end the list (Session.add_candidates); the connect deadline bounds the rest.
    """
    kept = [
        line
        for line in sdp.splitlines()
        if not _MDNS_CANDIDATE.match(line) and line.strip() != "a=end-of-candidates"
    ]
    return "\r\n".join(kept) + "\r\n"


def parse_offer(sdp: str) -> aiortc_sdp.SessionDescription:
    """Parse an offer well enough to choose its sections; `check_transport` validates those."""
    if not sdp.startswith("v=0"):
        raise ValueError("the body is not an SDP offer (it must start with v=0)")
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    # aiortc's parser asserts on malformed m= lines and payload types.
    except (ValueError, KeyError, IndexError, TypeError, AssertionError, StopIteration) as exc:
        raise ValueError(f"malformed SDP offer: {exc or type(exc).__name__}") from None
    media = [m for m in description.media if m.kind in ("audio", "video")]
    if not media:
        raise ValueError("the offer has no audio or video section")
    if len(description.media) > MAX_OFFER_MEDIA_SECTIONS:
        raise ValueError(f"the offer has more than {MAX_OFFER_MEDIA_SECTIONS} media sections")
    check_structure(sdp)
    return description


def check_structure(sdp: str) -> None:
    """What aiortc assumes of an offer and fails on obscurely (or leaves a session half
    built): exactly one well-formed, unique a=mid per section, at most one direction per
    section, and a BUNDLE group that names only sections of the offer."""
    session, sections = _split(sdp)
    mids: list[str] = []
    for number, section in enumerate(sections, start=1):
        kind = section[0][2:].split(" ", 1)[0] or "?"
        where = f"m-line {number} ({kind[:16]})"
        values = [line[len("a=mid:") :].strip() for line in section if line.startswith("a=mid:")]
        if not values:
            raise ValueError(f"{where} has no a=mid: WHIP and WHEP offers must BUNDLE with MIDs")
        if len(values) > 1:
            raise ValueError(f"{where} has {len(values)} a=mid lines; one is allowed")
        mid = values[0]
        if not _MID.match(mid):
            raise ValueError(
                f"{where}: a=mid must be 1 to {MAX_MID_LENGTH} token characters, "
                f"not {mid[:40]!r}"
            )
        if mid in mids:
            raise ValueError(f"{where} repeats a=mid:{mid}")
        mids.append(mid)
        directions = [line for line in section if line.strip() in _DIRECTION_LINES]
        if len(directions) > 1:
            raise ValueError(f"{where} has {len(directions)} direction attributes; one is allowed")
    groups = [line for line in session if line.startswith("a=group:BUNDLE")]
    if len(groups) > 1:
        raise ValueError("the offer has more than one BUNDLE group")
    for name in groups[0].split()[1:] if groups else []:
        if name not in mids:
            raise ValueError(f"the BUNDLE group names mid {name[:40]!r}, which no section has")


def check_transport(description: aiortc_sdp.SessionDescription, indexes: Collection[int]) -> None:
    """The sections we answer must carry ICE credentials and a DTLS fingerprint."""
    for index in indexes:
        section = description.media[index]
        if section.ice is None or not section.ice.usernameFragment or not section.ice.password:
            raise ValueError(f"the {section.kind} section has no ice-ufrag/ice-pwd")
        if section.dtls is None or not section.dtls.fingerprints:
            raise ValueError(f"the {section.kind} section has no DTLS fingerprint")


def section_direction(section: aiortc_sdp.MediaDescription) -> str:
    return section.direction or "sendrecv"


_DIRECTIONS = {"send": ("sendonly", "sendrecv"), "recv": ("recvonly", "sendrecv")}


def offered_kinds(description: aiortc_sdp.SessionDescription, direction: str) -> list[str]:
    """Kinds with at least one section whose direction lets the client do `direction`.

    direction "send": sections the client sends on (WHIP); "recv": sections it receives on.
    """
    allowed = _DIRECTIONS[direction]
    kinds: list[str] = []
    for section in description.media:
        if section.kind in ("audio", "video") and section.kind not in kinds:
            if section_direction(section) in allowed:
                kinds.append(section.kind)
    return kinds


def sections_for(
    description: aiortc_sdp.SessionDescription, kind: str, direction: str
) -> list[int]:
    """Indexes of the `kind` sections on which the client can do `direction`, in order."""
    allowed = _DIRECTIONS[direction]
    return [
        i
        for i, section in enumerate(description.media)
        if section.kind == kind and section_direction(section) in allowed
    ]


def media_codecs(section: aiortc_sdp.MediaDescription) -> list[RTCRtpCodecParameters]:
    """The section's codecs without the repair formats (RTX, RED, FEC)."""
    return [
        c for c in section.rtp.codecs if c.mimeType.split("/", 1)[-1].lower() not in _REPAIR_CODECS
    ]


def offered_codec_names(description: aiortc_sdp.SessionDescription, kind: str) -> list[str]:
    names: list[str] = []
    for section in description.media:
        if section.kind == kind:
            for codec in media_codecs(section):
                name = describe_codec(codec)
                if name not in names:
                    names.append(name)
    return names


# --- reduced offers and the answers to them ---------------------------------------------


def _split(sdp: str) -> tuple[list[str], list[list[str]]]:
    session: list[str] = []
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
        elif line:
            session.append(line)
    return session, sections


def _mid(lines: list[str]) -> str | None:
    return next(
        (line[len("a=mid:") :].strip() for line in lines if line.startswith("a=mid:")), None
    )


def reduce_offer(sdp: str, keep: Collection[int]) -> str:
    """The offer as aiortc should see it: only the sections at `keep`.

    aiortc cannot reject one m-line (it fails the whole description when one has no codec it
    knows), so it negotiates the sections we take and `restore_rejected` puts the others back
    into the answer, rejected. The BUNDLE group shrinks to the kept MIDs; when the first
    kept section lacks the transport attributes (BUNDLE lets a client put them in the first
    section only), they are copied from the offer's first section.
    """
    session, sections = _split(sdp)
    kept_sections = [sections[i] for i in sorted(keep)]
    kept_mids = [mid for mid in (_mid(s) for s in kept_sections) if mid is not None]
    out_session = []
    for line in session:
        if line.startswith("a=group:BUNDLE"):
            line = " ".join(["a=group:BUNDLE", *kept_mids])
        out_session.append(line)
    if kept_sections and sections and kept_sections[0] is not sections[0]:
        first = kept_sections[0]
        missing = [
            line
            for line in sections[0]
            if line.startswith(_TRANSPORT_ATTRIBUTES)
            and not any(own.startswith(line.split(":", 1)[0]) for own in first)
        ]
        kept_sections[0] = first + missing
    lines = out_session + [line for section in kept_sections for line in section]
    return "\r\n".join(lines) + "\r\n"


def restore_rejected(answer: str, offer: str, keep: Collection[int]) -> str:
    """Put back, declined, every offer section not in `keep`.

    An audio or video section the client bundled stays in the BUNDLE group as an
    `a=inactive` section listing its first offered format: browsers and aiortc clients both
    accept that, while aiortc cannot take a port-0 section (it wants ICE credentials and a
    codec in every section, and starts a transport for each unbundled one). Any other
    section (a data channel) is rejected with port 0 (RFC 8829 §5.3.1).
    """
    session, answered = _split(answer)
    offer_session, offered = _split(offer)
    kept = sorted(keep)
    if len(answered) != len(kept) or not answered:
        raise ValueError("the answer does not match the sections we negotiated")
    by_index = dict(zip(kept, answered, strict=True))
    offer_bundle = next(
        (line.split()[1:] for line in offer_session if line.startswith("a=group:BUNDLE")), []
    )
    template = answered[0]
    port = template[0].split()[1]
    shared = [line for line in template if line.startswith(_SHARED_TRANSPORT)]
    bundle: list[str] = []
    sections: list[list[str]] = []
    for index, section in enumerate(offered):
        mid = _mid(section)
        if index in by_index:
            sections.append(by_index[index])
            if mid is not None:
                bundle.append(mid)
            continue
        parts = section[0][2:].split()
        kind = parts[0]
        proto = parts[2] if len(parts) > 2 else "UDP/TLS/RTP/SAVPF"
        fmt = parts[3] if len(parts) > 3 else "0"
        mid_line = [f"a=mid:{mid}"] if mid is not None else []
        if kind in ("audio", "video") and mid is not None and mid in offer_bundle:
            described = [
                line for line in section if line.startswith((f"a=rtpmap:{fmt} ", f"a=fmtp:{fmt} "))
            ]
            sections.append(
                [f"m={kind} {port} {proto} {fmt}", *shared, *mid_line, "a=inactive", "a=rtcp-mux"]
                + described
            )
            bundle.append(mid)
        else:
            sections.append([f"m={kind} 0 {proto} {fmt}", "c=IN IP4 0.0.0.0", *mid_line])
    lines = [
        " ".join(["a=group:BUNDLE", *bundle]) if line.startswith("a=group:BUNDLE") else line
        for line in session
    ]
    lines += [line for section in sections for line in section]
    return "\r\n".join(lines) + "\r\n"


def echo_h264_levels(answer: str, description: aiortc_sdp.SessionDescription) -> str:
    """Answer each H264 and H265 format with the level the client offered for it.

    aiortc answers with its own table's profile-level-id (H264) or level-id and tier-flag
    (H265); the profile is the same, but the level would tell a publisher to encode no
    higher than level 3.1 (and a viewer that we send no higher than that). Echoing the
    offered level is always acceptable to the client.
    """
    offered: list[dict[int, str]] = []
    offered_h265: list[dict[int, dict[str, str]]] = []
    for section in description.media:
        levels: dict[int, str] = {}
        h265: dict[int, dict[str, str]] = {}
        for codec in section.rtp.codecs:
            payload_type = codec.payloadType
            mime = codec.mimeType.lower()
            if payload_type is None:
                continue
            if mime == "video/h265":
                h265[payload_type] = {
                    name: str(codec.parameters[name])
                    for name in _H265_LEVEL_PARAMETERS
                    if name in codec.parameters
                    and _H265_LEVEL_VALUE.match(str(codec.parameters[name]))
                }
                continue
            value = str(codec.parameters.get("profile-level-id", ""))
            if mime != "video/h264":
                continue
            if _PROFILE_LEVEL_ID.match(value):
                levels[payload_type] = value
        offered.append(levels)
        offered_h265.append(h265)
    lines = []
    index = -1
    for line in answer.splitlines():
        if line.startswith("m="):
            index += 1
        elif line.startswith("a=fmtp:") and 0 <= index < len(offered):
            match = _FMTP_PROFILE_LEVEL_ID.match(line)
            if match is not None:
                level = offered[index].get(int(match.group(2)))
                if level is not None:
                    line = match.group(1) + level + match.group(4)
            else:
                line = _echo_h265_level(line, offered_h265[index])
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _echo_h265_level(line: str, offered: dict[int, dict[str, str]]) -> str:
    """An H265 fmtp line of the answer with the offered level-id and tier-flag."""
    match = _FMTP_PAYLOAD_TYPE.match(line)
    if match is None:
        return line
    wanted = offered.get(int(match.group(1)))
    if not wanted:
        return line
    parameters = []
    for parameter in match.group(2).split(";"):
        name = parameter.split("=", 1)[0].strip()
        if name in wanted:
            parameter = f"{name}={wanted[name]}"
        parameters.append(parameter)
    return f"a=fmtp:{match.group(1)} " + ";".join(parameters)


def announce_public_ip(answer: str, public_ip: str | Sequence[str] | None) -> str:
    """Behind 1:1 NAT (PUBLIC_IP, several addresses allowed): for each host candidate, the
    public addresses of its family (IPv4 for IPv4, IPv6 for IPv6) on the same port and
    transport, announced as host candidates with aioice's foundation for that address.

    In each media section the public candidates come first, UDP before TCP (ffmpeg takes the
    first candidate), then the answer's own candidates (a client on the same LAN still
    reaches the private address); priorities go down in that order (256 apart: the local
    preference), so a client that sorts by priority agrees with the order."""
    publics = [public_ip] if isinstance(public_ip, str) else list(public_ip or ())
    if not publics:
        return answer
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        out.extend(_announce_block(block, publics))
        block.clear()

    for line in answer.splitlines():
        if line.startswith("a=candidate:"):
            block.append(line)
            continue
        flush()
        out.append(line)
    flush()
    return "\r\n".join(out) + "\r\n"


def _announce_block(lines: list[str], publics: list[str]) -> list[str]:
    """One run of candidate lines, with the public candidates before it."""
    added: list[tuple[bool, list[str]]] = []  # (is TCP, fields of a public candidate)
    own: list[tuple[bool, list[str] | str]] = []  # (is TCP, fields, or a line kept as is)
    for line in lines:
        match = _CANDIDATE.match(line)
        if match is None:
            own.append((False, line))
            continue
        fields = list(match.groups())
        tcp = fields[2].lower() == "tcp"
        own.append((tcp, fields))
        if fields[6].lower() != "host" or fields[4] in publics:
            continue
        v6 = ":" in fields[4]
        for address in publics:
            if (":" in address) != v6:
                continue
            public = [candidate_foundation("host", fields[2].lower(), address), *fields[1:]]
            public[4] = address
            added.append((tcp, public))
    if not added:
        return list(lines)
    ordered: list[tuple[bool, list[str] | str]] = [
        *sorted(added, key=lambda item: item[0]),
        *sorted(own, key=lambda item: item[0]),
    ]
    result: list[str] = []
    step = 0
    for _tcp, parts in ordered:
        if isinstance(parts, str):
            result.append(parts)
            continue
        foundation, component, transport, prio, address, port, kind, rest = parts
        if kind.lower() == "host":
            prio = str(max(int(prio) - 256 * step, 1))
            step += 1
        result.append(
            f"a=candidate:{foundation} {component} {transport} {prio} {address} {port} "
            f"typ {kind}{rest}"
        )
    return result


def ice_credentials(sdp: str) -> tuple[str, str]:
    ufrag = pwd = ""
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:") and not ufrag:
            ufrag = line.split(":", 1)[1].strip()
        elif line.startswith("a=ice-pwd:") and not pwd:
            pwd = line.split(":", 1)[1].strip()
    return ufrag, pwd


# --- codecs --------------------------------------------------------------------------------


def h264_profile(profile_level_id: object) -> str:
    """The H264 profile a profile-level-id names, ignoring the level (RFC 6184 §8.1).

    Spellings of one profile compare equal (42e01f and 4de01f are both constrained
    baseline), as in libwebrtc. A missing value means constrained baseline, as browsers
    assume. ValueError when it is not six hex digits.
    """
    text = "42e01f" if profile_level_id is None else str(profile_level_id)
    if not _PROFILE_LEVEL_ID.match(text):
        raise ValueError(f"malformed H264 profile-level-id {text!r}")
    profile_idc, profile_iop = int(text[0:2], 16), int(text[2:4], 16)
    for idc, pattern, profile in aiortc_sdp.H264_PROFILE_PATTERNS:
        if idc == profile_idc and pattern.matches(profile_iop):
            return profile.name.removeprefix("PROFILE_").lower().replace("_", "-")
    raw = text[:4].lower()
    return _H264_PROFILE_NAMES.get(raw, f"profile-{raw}")


def h265_profile(profile_id: object) -> str:
    """The H265 profile a profile-id names (RFC 7798 §7.1), e.g. "main" or "main-10".

    A missing value means Main, as RFC 7798 says. ValueError when it is not a
    general_profile_idc (0-31).
    """
    text = "1" if profile_id is None else str(profile_id)
    if not _H265_PROFILE_ID.match(text) or int(text) > 31:
        raise ValueError(f"malformed H265 profile-id {text[:40]!r}")
    number = int(text)
    return _H265_PROFILE_NAMES.get(number, f"profile-{number}")


def codec_key(codec: RTCRtpCodecParameters) -> CodecKey:
    """What must match between two sides for the bitstream to pass unchanged.

    H264 by profile (not level) and packetization mode; H265 by profile-id (not level-id or
    tier-flag), transmission mode (RFC 7798 tx-mode: only SRST, one RTP stream, is what
    anyone sends, and what our table offers) and decoding order numbers (only without, as
    WebRTC senders do: sprop-max-don-diff 0). ValueError for an H264 format with a
    malformed profile-level-id or an H265 one with a malformed profile-id.
    """
    mime = codec.mimeType.lower()
    parameters = codec.parameters
    fmtp = ""
    if mime == "video/h264":
        profile = h264_profile(parameters.get("profile-level-id"))
        mode = str(parameters.get("packetization-mode", "0"))
        fmtp = f"profile={profile};packetization-mode={mode}"
    elif mime == "video/h265":
        profile = h265_profile(parameters.get("profile-id"))
        mode = str(parameters.get("tx-mode", "SRST")).upper()
        fmtp = f"profile={profile};tx-mode={mode}"
        don = str(parameters.get("sprop-max-don-diff", "0"))
        if don != "0":  # DONL fields in every packet: what keyframe tests do not parse
            fmtp += f";sprop-max-don-diff={don[:16]}"
    elif mime == "video/vp9":
        fmtp = f"profile-id={parameters.get('profile-id', '0')}"
    elif mime == "video/av1":
        fmtp = f"profile={parameters.get('profile', '0')}"
    return CodecKey(mime_type=mime, clock_rate=codec.clockRate, fmtp=fmtp)


def describe_codec(codec: RTCRtpCodecParameters) -> str:
    """A codec as a person reads it, e.g. "H264 (high, 64001f, packetization-mode=1)"."""
    name = codec.mimeType.split("/", 1)[-1]
    parameters = codec.parameters
    mime = codec.mimeType.lower()
    if mime == "video/h264":
        value = parameters.get("profile-level-id")
        try:
            profile = h264_profile(value)
        except ValueError:
            profile = "malformed profile"
        plid = f", {value}" if value is not None else ""
        mode = parameters.get("packetization-mode", "0")
        return f"{name} ({profile}{plid}, packetization-mode={mode})"
    if mime == "video/h265":
        value = parameters.get("profile-id")
        try:
            profile = h265_profile(value)
        except ValueError:
            profile = "malformed profile"
        pid = f", profile-id={str(value)[:16]}" if value is not None else ""
        return f"{name} ({profile}{pid})"
    if mime == "video/vp9":
        return f"{name} (profile-id={parameters.get('profile-id', '0')})"
    if mime == "video/av1":
        return f"{name} (profile={parameters.get('profile', '0')})"
    return name


def first_section_with(
    description: aiortc_sdp.SessionDescription, kind: str, direction: str, wanted: CodecKey
) -> int | None:
    """The first `kind` section usable in `direction` that offers a codec matching `wanted`."""
    for index in sections_for(description, kind, direction):
        for codec in media_codecs(description.media[index]):
            try:
                if codec_key(codec) == wanted:
                    return index
            except ValueError:
                continue
    return None


# --- transport-cc in publishers' answers ---------------------------------------------------


def negotiate_transport_cc(offer_sdp: str, answer_sdp: str) -> tuple[str, int | None]:
    """Add transport-cc to the answer's audio/video sections where the offer asked for it.

    aiortc drops transport-cc from its answers (it cannot produce the feedback; live-sfu
    does, sfu.media.transport_cc). Returns the new answer and the transport-wide-cc
    extension id (None when the offer did not ask for it). For each m-section, the offer's
    extmap id is kept (as aiortc does for the extensions it knows) and
    `a=rtcp-fb:<pt> transport-cc` is added for every answered payload type the offer listed
    with transport-cc. Where transport-cc is added, abs-send-time is taken out: without it
    aiortc's stock receiver sends no REMB, whose estimate (measured to hold Chromium near
    250-450 kbit/s) would cap the browser's send-side estimate. Publishers that do not
    offer transport-cc (OBS, ffmpeg) keep abs-send-time and aiortc's REMB.
    """
    _, offered = _split(offer_sdp)
    answer_session, answered = _split(answer_sdp)
    extension_id: int | None = None
    out: list[str] = list(answer_session)
    for index, section in enumerate(answered):
        lines = [line for line in section if line]
        if index >= len(offered):
            out.extend(lines)
            continue
        offer_lines = offered[index]
        offer_id = _extmap_id(offer_lines, TRANSPORT_CC_URI)
        feedback_pts = {
            line.split()[0].split(":", 1)[1]
            for line in offer_lines
            if line.startswith("a=rtcp-fb:") and line.split()[1:] == ["transport-cc"]
        }
        if offer_id is None or not feedback_pts or not lines[0].startswith(("m=audio", "m=video")):
            out.extend(lines)
            continue
        answered_pts = lines[0].split()[3:]
        added = [f"a=rtcp-fb:{pt} transport-cc" for pt in answered_pts if pt in feedback_pts]
        if not added or _extmap_id(lines, TRANSPORT_CC_URI) is not None:
            out.extend(lines)
            continue
        extension_id = offer_id
        lines = [line for line in lines if not _is_extmap(line, ABS_SEND_TIME_URI)]
        last_extmap = max(
            (i for i, line in enumerate(lines) if line.startswith("a=extmap:")), default=0
        )
        lines = [
            *lines[: last_extmap + 1],
            f"a=extmap:{offer_id} {TRANSPORT_CC_URI}",
            *lines[last_extmap + 1 :],
        ]
        out.extend(lines + added)
    return "\r\n".join(out) + "\r\n", extension_id


def _is_extmap(line: str, uri: str) -> bool:
    parts = line.split()
    return line.startswith("a=extmap:") and len(parts) >= 2 and parts[1] == uri


def _extmap_id(lines: list[str], uri: str) -> int | None:
    for line in lines:
        if line.startswith("a=extmap:"):
            parts = line[len("a=extmap:") :].split()
            if len(parts) >= 2 and parts[1] == uri:
                try:
                    return int(parts[0].split("/")[0])
                except ValueError:
                    return None
    return None


# --- ICE restart ---------------------------------------------------------------------------

# Attributes a restart answer repeats from the answer (RFC 9725 §4.3.2).
_REPEATED_ICE_ATTRIBUTES = ("a=ice-options:", "a=ice-pacing:", "a=ice-lite")


def restart_fragment(answer: str, ufrag: str, pwd: str, candidates: Sequence[str]) -> str:
    """The 200 body of an ICE restart (RFC 8840 sdpfrag, RFC 9725 §4.3.2): the BUNDLE group
    and the first media section of `answer` (its tag), with the new credentials and
    candidates and end-of-candidates. `candidates` are `candidate:...` values."""
    sessions, sections = _split(answer)
    repeated: list[str] = []
    group: list[str] = []
    for line in sessions:
        if line.startswith("a=group:BUNDLE"):
            group.append(line)
        elif line.startswith(_REPEATED_ICE_ATTRIBUTES):
            repeated.append(line)
    if not sections:
        raise ValueError("the answer has no media section")
    # The BUNDLE tag: the group's first mid (a rejected section is never the tag).
    tag = group[0].split()[1] if group and len(group[0].split()) > 1 else None
    media = next((section for section in sections if _mid(section) == tag), sections[0])
    lines = [*repeated, *group, media[0]]
    mid = _mid(media)
    if mid is not None:
        lines.append(f"a=mid:{mid}")
    lines += [line for line in media if line.startswith(_REPEATED_ICE_ATTRIBUTES)]
    lines += [f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}"]
    lines += [f"a={candidate}" for candidate in candidates]
    lines.append("a=end-of-candidates")
    return "\r\n".join(lines) + "\r\n"
