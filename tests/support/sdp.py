"""SDP for the signalling tests: a minimal offer, codec surgery, candidate ports."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

from testkit.processes import GatewayProcess

# A well-formed sendonly video offer with no candidates: enough for every HTTP-level check.
OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=ice-ufrag:cli1\r\na=ice-pwd:clientpasswordclientpass\r\na=sendonly\r\n"
)


def only_codec(offer: str, kind: str, rtpmap: str) -> str:
    """The offer with its `kind` m-line reduced to one payload type, `rtpmap` ("100 H266/90000").

    Still a well-formed offer (ICE, DTLS, mid, direction untouched): only the codec is useless.
    """
    pt = rtpmap.split()[0]
    out: list[str] = []
    section = ""
    for line in offer.split("\r\n"):
        if line.startswith("m=") or not line:
            if section == kind:
                out.append(f"a=rtpmap:{rtpmap}")  # at the end of its section
            section = line[2:].split()[0] if line else ""
            if section == kind:
                line = " ".join([*line.split()[:3], pt])
        elif section == kind and line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:", "a=ssrc")):
            continue
        out.append(line)
    return "\r\n".join(out)


def candidate_ports(sdp: str) -> set[int]:
    """UDP ports of the host candidates in an SDP."""
    found = re.findall(r"^a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host", sdp, re.M | re.I)
    return {int(port) for port in found}


def post_offer_sync(gateway: GatewayProcess, kind: str, room: str, sdp: str) -> tuple[int, str]:
    """POST an offer to the room's WHIP (`kind` "publish") or WHEP endpoint, blocking;
    returns (status, body), whatever the status."""
    path = "/api/whip/publish/" if kind == "publish" else "/api/whep/play/"
    request = urllib.request.Request(
        gateway.url + path + room,
        data=sdp.encode(),
        headers={"Content-Type": "application/sdp"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
