"""The load generator's taps on aiortc (bench/agents.py), kept out of production code.

Like sfu/aiortc_adapter, these use aiortc's and aioice's private members; they only serve
the benchmark's cheap viewers and its report, never a server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection

from sfu.aiortc_adapter import bundle_transport

SrtpTap = Callable[[bytes, Callable[[bytes], bytes]], None]


def tap_srtp_ingress(pc: RTCPeerConnection, on_srtp: SrtpTap) -> None:
    """Hand every SRTP (not SRTCP) datagram of `pc` to `on_srtp(data, unprotect)` straight
    from the UDP socket callback, before aioice tries to parse it as STUN and before
    aiortc's receive queue, RTP parsing and receivers.

    For the benchmark's viewers: they account packets from the clear RTP header and decrypt
    only what they measure, so that hundreds fit beside the server. STUN, DTLS and RTCP keep
    aioice's and aiortc's path. Call after setRemoteDescription (BUNDLE picks the transport
    there; the offerer's sockets exist since setLocalDescription gathered them).
    """
    dtls = bundle_transport(pc)
    for protocol in dtls.transport._connection._protocols:
        original = protocol.datagram_received

        def datagram_received(data: bytes, addr: Any, _original: Any = original) -> None:
            srtp = dtls._rx_srtp
            if (
                srtp is not None
                and len(data) >= 12
                and 127 < data[0] < 192
                and not 192 <= data[1] <= 223
            ):
                on_srtp(data, srtp.unprotect)
            else:
                _original(data, addr)

        protocol.datagram_received = datagram_received  # type: ignore[method-assign,assignment]


def srtp_profile_name(pc: RTCPeerConnection) -> str:
    """The SRTP protection profile DTLS negotiated on `pc`, e.g. "SRTP_AEAD_AES_256_GCM"."""
    dtls = bundle_transport(pc)
    if dtls.state != "connected":
        return ""
    ssl = dtls._ssl
    return ssl.get_selected_srtp_profile().decode() if ssl is not None else ""
