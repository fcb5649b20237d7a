"""Every use of aiortc's and aioice's private members lives here.

aiortc has no public API for RTP-level forwarding (research/aiortc-sfu.md). The seams used,
all instance-level, and what each is for:

* publisher: ``RTCDtlsTransport._handle_rtp_data`` / ``_handle_rtcp_data`` are wrapped to
  see every decrypted packet before aiortc parses it; the stock receiver path still runs
  afterwards (with its decoder thread stopped through ``_RTCRtpReceiver__stop_decoder``) so
  that aiortc keeps producing receiver reports, NACKs and REMB for the publisher.
* viewer: each sender's class is swapped for ``ForwardingSender``, which parks the encoder
  loop, reads its sender-report counters from our forwarding state and hands RTCP feedback
  to us; packets go out through the DTLS transport's SRTP session (``_tx_srtp``) and the
  nominated aioice pair (``_connection._nominated``), synchronously, without a coroutine.
* network: ``aioice.ice.get_host_addresses`` picks the addresses to gather on; a wrapper of
  the worker loop's ``create_datagram_endpoint`` maps ``local_addr=(ip, 0)`` binds into the
  configured UDP port range.
* restart: an ICE restart (RFC 9725 §4.3) sets new credentials on the aioice Connection and
  replaces its remote candidates, keeping the pair in use until the client nominates another.
* certificates: ``aiortc.rtcpeerconnection.RTCCertificate`` is replaced by a shim that hands
  every new peer connection the worker's certificate (rotated every CERT_ROTATE) instead of
  generating one per session.
* timeline: a one-shot instance attribute over the aioice Connection's ``request_received``
  sees the client's first STUN check; the bundle DTLS transport's ``statechange`` gives the
  handshake's start and end (the session's set-up timeline).
* mux: with UDP_MUX_PORT/TCP_MUX_PORT, the same loop seam answers aioice's per-session bind
  with a virtual transport over one shared socket per host address, demultiplexed by the
  remote address (after an authenticated STUN Binding request), and
  ``aioice.ice.Connection.gather_candidates`` appends passive ICE-TCP candidates to the
  sessions a mux registered (RFC 6544; accepted connections become StunProtocols).

One module per seam: versions (the pins, checked by ``check_versions()`` when a worker
starts), network, mux, restart, negotiation, ingress (publisher) and egress (viewer). The load
generator's own taps on aiortc live in bench/aiortc_taps.py, outside production code.
"""

from sfu.aiortc_adapter.certificates import (
    CertificateStore,
    WorkerCertificate,
    install_certificates,
    peer_certificates,
    uninstall_certificates,
)
from sfu.aiortc_adapter.egress import (
    ForwardingSender,
    SenderState,
    SrtpSendPath,
    allow_full_size_packets,
    make_forwarding,
    sender_ssrcs,
)
from sfu.aiortc_adapter.ingress import (
    bundle_transport,
    hook_ingress,
    ice_connection,
    remote_candidate_count,
    send_rtcp,
    stop_decoders,
)
from sfu.aiortc_adapter.mux import IceMux, MuxBinding
from sfu.aiortc_adapter.negotiation import (
    codec_capability,
    install_negotiation,
    local_codec,
    local_codecs,
    negotiated_codecs,
    negotiated_extensions,
)
from sfu.aiortc_adapter.network import (
    PortRange,
    default_host_addresses,
    install_port_range,
    restrict_host_addresses,
    udp_ports_exhausted_since,
)
from sfu.aiortc_adapter.restart import RestartedIce, restart_ice
from sfu.aiortc_adapter.timeline import on_dtls_state, on_first_check
from sfu.aiortc_adapter.versions import PINNED_VERSIONS, AdapterError, check_versions

__all__ = [
    "PINNED_VERSIONS",
    "AdapterError",
    "CertificateStore",
    "ForwardingSender",
    "IceMux",
    "MuxBinding",
    "PortRange",
    "RestartedIce",
    "SenderState",
    "SrtpSendPath",
    "WorkerCertificate",
    "allow_full_size_packets",
    "bundle_transport",
    "check_versions",
    "codec_capability",
    "default_host_addresses",
    "hook_ingress",
    "ice_connection",
    "install_certificates",
    "install_negotiation",
    "install_port_range",
    "local_codec",
    "local_codecs",
    "make_forwarding",
    "negotiated_codecs",
    "negotiated_extensions",
    "on_dtls_state",
    "on_first_check",
    "peer_certificates",
    "remote_candidate_count",
    "restart_ice",
    "restrict_host_addresses",
    "send_rtcp",
    "sender_ssrcs",
    "stop_decoders",
    "uninstall_certificates",
    "udp_ports_exhausted_since",
]
