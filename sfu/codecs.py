"""What identifies a codec for raw forwarding: a leaf module (no aiortc, no forwarding).

The SDP side (sfu.sdp) builds a CodecKey from what was negotiated; the forwarding side
(sfu.media) only compares and names them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CodecKey:
    """What must match between a publisher's and a viewer's codec for raw forwarding."""

    mime_type: str  # lower-case, e.g. "video/vp8"
    clock_rate: int
    fmtp: str  # the parameters that matter for the bitstream (H264 profile, packetization)

    def describe(self) -> str:
        name = self.mime_type.split("/", 1)[-1]
        return f"{name}/{self.clock_rate}" + (f" ({self.fmtp})" if self.fmtp else "")
