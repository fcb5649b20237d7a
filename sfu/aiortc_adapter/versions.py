"""The aiortc and aioice versions and private members the adapter was verified against,
checked when a worker starts (a mismatch is a boot failure, exit 3)."""

from __future__ import annotations

import logging
import struct

import aioice
import aioice.ice
import aiortc
from aiortc import RTCRtpSender
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport

log = logging.getLogger(__name__)


PINNED_VERSIONS = {"aiortc": "1.16.0", "aioice": "0.13.0"}

_REQUIRED_MEMBERS: tuple[tuple[type, str], ...] = (
    (RTCDtlsTransport, "_handle_rtp_data"),
    (RTCDtlsTransport, "_handle_rtcp_data"),
    (RTCDtlsTransport, "_send_rtp"),
    (RTCRtpSender, "_handle_rtcp_packet"),
    (RTCRtpSender, "_run_rtp"),
    (aiortc.RTCRtpReceiver, "_RTCRtpReceiver__stop_decoder"),
    (aioice.ice.Connection, "get_component_candidates"),
    (aioice.ice.Connection, "gather_candidates"),
    (aioice.ice.Connection, "local_password"),
    (aioice.ice.StunProtocol, "datagram_received"),
    (aioice.ice.StunProtocol, "send_stun"),
    # certificates: the worker's certificate, its fingerprints and OpenSSL context made once.
    (RTCCertificate, "generateCertificate"),
    (RTCCertificate, "getFingerprints"),
    (RTCCertificate, "_create_ssl_context"),
    # timeline: the client's first STUN check (a one-shot instance attribute over it).
    (aioice.ice.Connection, "request_received"),
)

# Errors aiortc's own parsers raise on hostile input; struct.error is not a ValueError and
# would otherwise kill RTCDtlsTransport.__run (aiortc#745).
PARSE_ERRORS = (ValueError, struct.error, IndexError, KeyError, TypeError)


class AdapterError(RuntimeError):
    """The installed aiortc/aioice do not offer the seams this adapter relies on."""


def check_versions() -> None:
    found = {"aiortc": aiortc.__version__, "aioice": aioice.__version__}
    for name, wanted in PINNED_VERSIONS.items():
        if found[name] != wanted:
            raise AdapterError(
                f"{name} {found[name]} is installed but live-sfu's forwarding seams were "
                f"verified against {name}=={wanted}; install the pinned version"
            )
    for owner, member in _REQUIRED_MEMBERS:
        if not hasattr(owner, member):
            raise AdapterError(f"{owner.__qualname__}.{member} is missing from aiortc")
