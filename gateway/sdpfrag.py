"""Just enough SDP reading for the gateway: trickle fragments (RFC 8840) and offer sanity.

The workers do the real SDP work; the gateway only needs the client's ICE credentials (to spot
an ICE restart) and the candidates to forward, and rejects obvious garbage early with a 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_FRAGMENT_LINES = 1000  # a fragment is a handful of candidates; more is abuse
_LINE = re.compile(r"^[a-z]=")


@dataclass
class SdpFragment:
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    candidates: list[tuple[str | None, str]] = field(default_factory=list)  # (mid, value)
    end_of_candidates: bool = False


@dataclass(frozen=True)
class OfferSummary:
    ice_ufrag: str | None
    ice_pwd: str | None
    media_sections: int


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _check_candidate(value: str) -> None:
    # candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> ...
    tokens = value.split()
    if len(tokens) < 8 or not tokens[0].startswith("candidate:") or tokens[6] != "typ":
        raise ValueError(f"malformed candidate line: {value[:80]!r}")
    if tokens[0] == "candidate:":  # an empty foundation
        raise ValueError(f"malformed candidate line: {value[:80]!r}")
    if not tokens[1].isdigit() or not tokens[3].isdigit() or not tokens[5].isdigit():
        raise ValueError(f"malformed candidate line: {value[:80]!r}")


def parse_sdpfrag(text: str) -> SdpFragment:
    """Parse an application/trickle-ice-sdpfrag body; ValueError on anything that is not one."""
    lines = _lines(text)
    if len(lines) > MAX_FRAGMENT_LINES:
        raise ValueError(f"fragment has more than {MAX_FRAGMENT_LINES} lines")
    fragment = SdpFragment()
    mid: str | None = None
    for line in lines:
        if not _LINE.match(line):
            raise ValueError(f"not an SDP line: {line[:80]!r}")
        if line.startswith("m="):
            mid = None  # a new media section; its a=mid follows
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=ice-ufrag:"):
            fragment.ice_ufrag = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=ice-pwd:"):
            fragment.ice_pwd = line[len("a=ice-pwd:") :]
        elif line.startswith("a=candidate:"):
            value = line[len("a=") :]
            _check_candidate(value)
            fragment.candidates.append((mid, value))
        elif line == "a=end-of-candidates":
            fragment.end_of_candidates = True
        # a=ice-options, a=group and others are legal and of no use to the gateway
    if not (fragment.candidates or fragment.end_of_candidates or fragment.ice_ufrag):
        raise ValueError("fragment carries no candidate, end-of-candidates or ICE credentials")
    return fragment


def summarize_offer(text: str) -> OfferSummary:
    """Cheap sanity check of an SDP offer: must start with v=0 and have an m= line."""
    if not text.startswith("v=0"):
        raise ValueError("body is not an SDP offer (it must start with v=0)")
    ufrag: str | None = None
    pwd: str | None = None
    media = 0
    for line in _lines(text):
        if line.startswith("m="):
            media += 1
        elif line.startswith("a=ice-ufrag:") and ufrag is None:
            ufrag = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=ice-pwd:") and pwd is None:
            pwd = line[len("a=ice-pwd:") :]
    if media == 0:
        raise ValueError("SDP offer has no media section (m= line)")
    return OfferSummary(ufrag, pwd, media)
