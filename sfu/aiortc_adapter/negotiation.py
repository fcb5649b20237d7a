"""aiortc's codec table extended to everything live-sfu forwards, and what a transceiver
negotiated (read from aiortc's private members)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCRtpTransceiver
from aiortc import codecs as aiortc_codecs
from aiortc import rtcpeerconnection as aiortc_rtcpeerconnection
from aiortc import rtp as aiortc_rtp
from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from sfu.sdp import codec_key

log = logging.getLogger(__name__)


# --- negotiation -------------------------------------------------------------------------


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[RTCRtpCodecParameters]:
    return list(transceiver._codecs)


def negotiated_extensions(transceiver: RTCRtpTransceiver) -> dict[str, int]:
    """Header-extension URI -> id, as agreed with this peer."""
    return {ext.uri: ext.id for ext in transceiver._headerExtensions}


def codec_capability(codec: RTCRtpCodecParameters) -> RTCRtpCodecCapability:
    return RTCRtpCodecCapability(
        mimeType=codec.mimeType,
        clockRate=codec.clockRate,
        channels=codec.channels,
        parameters=dict(codec.parameters),
    )


# --- codec table, payload types, DTLS ciphers ----------------------------------------------

# Video formats added to aiortc's table (it has VP8 and H264 42001f/42e01f, packetization
# mode 1). We never encode or decode them: publishers' decoders are stopped and viewers'
# senders are ForwardingSenders; the table only drives negotiation.
_H264_PROFILE_LEVEL_IDS = (
    "42001f",  # baseline
    "42e01f",  # constrained baseline
    "4d001f",  # main
    "640c1f",  # constrained high
    "64001f",  # high (OBS's default)
    "f4001f",  # predictive high 4:4:4
    "6e001f",  # high 10
    "7a001f",  # high 4:2:2
)
# H265 (RFC 7798) in Main and Main 10, single RTP stream; level 3.1 (93) like aiortc's H264
# entries: answers echo the client's level-id and tier-flag (sfu.sdp.echo_h264_levels).
_H265_PROFILE_IDS = ("1", "2")
_EXTRA_VIDEO_FORMATS: tuple[tuple[str, dict[str, str]], ...] = (
    ("video/VP9", {"profile-id": "0"}),
    ("video/VP9", {"profile-id": "2"}),
    ("video/AV1", {}),
    *(
        (
            "video/H264",
            {
                "level-asymmetry-allowed": "1",
                "packetization-mode": mode,
                "profile-level-id": plid,
            },
        )
        for mode in ("1", "0")
        for plid in _H264_PROFILE_LEVEL_IDS
    ),
    # Last, so that the payload types the formats above get stay what they were before it.
    *(
        (
            "video/H265",
            {"level-id": "93", "profile-id": profile_id, "tier-flag": "0", "tx-mode": "SRST"},
        )
        for profile_id in _H265_PROFILE_IDS
    ),
)
# Payload types for our own offers (only test clients make offers; the worker always answers
# and mirrors the client's payload types). 96-102 are aiortc's; then the rest of the upper
# dynamic range and the lower one Chrome also uses (RFC 8872 §3.2).
_SPARE_PAYLOAD_TYPES = (*range(103, 128), *range(35, 64))
_DYNAMIC_PAYLOAD_TYPES = frozenset((*range(35, 64), *range(96, 128)))
# aiortc offers only ECDHE-ECDSA suites, so as the DTLS client (the answerer of an actpass
# offer, or facing ffmpeg's setup:passive) it cannot talk to a server with an RSA
# certificate (GStreamer's webrtcbin). Our own certificate stays ECDSA.
DTLS_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)

_negotiation_installed = False


def install_negotiation() -> None:
    """Extend aiortc's negotiation to everything live-sfu forwards (idempotent, per process).

    * the codec table gains VP9 (profiles 0 and 2), AV1, H265 (Main and Main 10, tx-mode
      SRST) and H264 in every common profile, each with RTX, H264 in packetization modes 1
      and 0;
    * codecs match when their bitstreams are interchangeable: H264 by profile (not level)
      and packetization mode, H265 by profile-id (not level-id or tier) and tx-mode, VP9 by
      profile-id, AV1 by profile (`sfu.sdp.codec_key`);
    * payload types 35-63 count as dynamic, so an answer keeps a client's PT there (Chrome
      puts AV1 and some H264 formats in that range) instead of substituting our own;
    * DTLS offers ECDHE-RSA suites as well as ECDHE-ECDSA ones.
    """
    global _negotiation_installed
    if _negotiation_installed:
        return
    table = aiortc_codecs.CODECS["video"]
    spare = iter(pt for pt in _SPARE_PAYLOAD_TYPES if all(c.payloadType != pt for c in table))
    for mime_type, parameters in _EXTRA_VIDEO_FORMATS:
        candidate = RTCRtpCodecParameters(mimeType=mime_type, clockRate=90000, parameters={})
        candidate.parameters.update(parameters)
        if any(_same_format(candidate, c, codec_key) for c in table):
            continue
        media_pt, rtx_pt = next(spare), next(spare)
        template = table[0]  # VP8: aiortc's rtcp-fb set (nack, nack pli, goog-remb)
        table.append(
            RTCRtpCodecParameters(
                mimeType=mime_type,
                clockRate=90000,
                payloadType=media_pt,
                rtcpFeedback=list(template.rtcpFeedback),
                parameters=dict(parameters),
            )
        )
        table.append(
            RTCRtpCodecParameters(
                mimeType="video/rtx",
                clockRate=90000,
                payloadType=rtx_pt,
                parameters={"apt": media_pt},
            )
        )

    def is_codec_compatible(a: RTCRtpCodecParameters, b: RTCRtpCodecParameters) -> bool:
        return _same_format(a, b, codec_key)

    aiortc_rtcpeerconnection.is_codec_compatible = is_codec_compatible
    aiortc_rtp.DYNAMIC_PAYLOAD_TYPES = _DYNAMIC_PAYLOAD_TYPES  # type: ignore[assignment]  # aiortc declares a range

    certificate_class = RTCCertificate
    create_context = certificate_class._create_ssl_context

    def create_ssl_context(self: Any, srtp_profiles: Any) -> Any:
        context = create_context(self, srtp_profiles)
        context.set_cipher_list(DTLS_CIPHERS)
        return context

    certificate_class._create_ssl_context = create_ssl_context  # type: ignore[method-assign]  # ciphers
    _negotiation_installed = True


def _same_format(
    a: RTCRtpCodecParameters,
    b: RTCRtpCodecParameters,
    key: Callable[[RTCRtpCodecParameters], object],
) -> bool:
    if a.mimeType.lower() != b.mimeType.lower() or a.clockRate != b.clockRate:
        return False
    try:
        return key(a) == key(b)
    except ValueError:  # e.g. a malformed H264 profile-level-id
        return False


def local_codec(kind: str, offered: RTCRtpCodecParameters) -> RTCRtpCodecParameters | None:
    """Our table's entry aiortc will negotiate for an offered codec, or None."""
    compatible = aiortc_rtcpeerconnection.is_codec_compatible
    for codec in aiortc_codecs.CODECS.get(kind, []):
        if not codec.mimeType.lower().endswith("/rtx") and compatible(codec, offered):
            return codec
    return None


def local_codecs(kind: str) -> list[RTCRtpCodecParameters]:
    """Every codec (without RTX) our table offers for `kind`."""
    codecs = aiortc_codecs.CODECS.get(kind, [])
    return [c for c in codecs if not c.mimeType.lower().endswith("/rtx")]
