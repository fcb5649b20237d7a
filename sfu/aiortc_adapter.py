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
* network: ``aioice.ice.get_host_addresses`` picks the addresses to gather on; a uvloop
  subclass maps ``local_addr=(ip, 0)`` binds into the configured UDP port range.

The versions these seams were verified against are pinned in pyproject.toml and checked by
``check_versions()`` when a worker starts.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import aioice
import aioice.ice
import aiortc
import pylibsrtp
import pylibsrtp._binding as pylibsrtp_binding
from aiortc import RTCPeerConnection, RTCRtpSender, RTCRtpTransceiver
from aiortc import codecs as aiortc_codecs
from aiortc import rtcpeerconnection as aiortc_rtcpeerconnection
from aiortc import rtp as aiortc_rtp
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.rtp import AnyRtcpPacket, RtcpPacket, RtpPacket

from sfu.sdp import codec_key

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


# --- network -----------------------------------------------------------------------------


def restrict_host_addresses(addresses: list[str]) -> None:
    """Gather ICE host candidates on exactly these addresses."""
    fixed = list(addresses)

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


def default_host_addresses() -> list[str]:
    """aioice's own choice (every non-loopback address), or loopback when that is empty."""
    found = aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True)
    return found or ["127.0.0.1"]


class PortRange:
    """Hands out UDP ports from [low, high], skipping ports that are in use."""

    def __init__(self, low: int, high: int) -> None:
        self.low = low
        self.high = high
        self._next = low
        self.exhausted_at = -1.0  # time.monotonic() of the last bind that found no port

    def bind(self, family: int, host: str) -> socket.socket:
        size = self.high - self.low + 1
        for _ in range(size):
            port = self._next
            self._next = self.low if port >= self.high else port + 1
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((host, port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise
            sock.setblocking(False)
            return sock
        self.exhausted_at = time.monotonic()
        raise OSError(errno.EADDRINUSE, f"no free UDP port in {self.low}-{self.high}")


_installed_ranges: list[PortRange] = []


def udp_ports_exhausted_since(moment: float) -> bool:
    """Whether a bind found the installed UDP port range full at or after `moment`
    (time.monotonic()). aioice only logs such a failure and gathers no candidate."""
    return any(ports.exhausted_at >= moment for ports in _installed_ranges)


def install_port_range(loop: asyncio.AbstractEventLoop, ports: PortRange) -> None:
    """Make aioice's `create_datagram_endpoint(local_addr=(ip, 0))` bind inside `ports`.

    aioice has no port-range option (aiortc#487, aioice#47). It asks the running loop for
    an ephemeral port; we wrap that one call on the worker's loop instance.
    """
    original = loop.create_datagram_endpoint
    _installed_ranges.append(ports)

    async def create_datagram_endpoint(
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str, int] | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        if local_addr is not None and local_addr[1] == 0 and not kwargs:
            family = socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET
            sock = ports.bind(family, local_addr[0])
            return await original(protocol_factory, sock=sock)
        return await original(protocol_factory, local_addr=local_addr, **kwargs)

    loop.create_datagram_endpoint = create_datagram_endpoint  # type: ignore[method-assign,assignment]


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

    * the codec table gains VP9 (profiles 0 and 2), AV1 and H264 in every common profile,
      each with RTX, in packetization modes 1 and 0;
    * codecs match when their bitstreams are interchangeable: H264 by profile (not level)
      and packetization mode, VP9 by profile-id, AV1 by profile (`sfu.sdp.codec_key`);
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
    aiortc_rtp.DYNAMIC_PAYLOAD_TYPES = _DYNAMIC_PAYLOAD_TYPES  # type: ignore[assignment]

    certificate_class = RTCCertificate
    create_context = certificate_class._create_ssl_context

    def create_ssl_context(self: Any, srtp_profiles: Any) -> Any:
        context = create_context(self, srtp_profiles)
        context.set_cipher_list(DTLS_CIPHERS)
        return context

    certificate_class._create_ssl_context = create_ssl_context  # type: ignore[method-assign]
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


# --- publisher ---------------------------------------------------------------------------

RawRtpHandler = Callable[[bytes], None]
DropCounter = Callable[[str], None]


def stop_decoders(pc: RTCPeerConnection) -> None:
    """No decoder thread for any receiver of `pc` (we forward; we never decode).

    `receive()` starts the thread when DTLS connects; we stop it right after, which keeps
    aiortc's stock receive path (stats, NACK, REMB, receiver reports) minus the decoding.
    """
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        original = receiver.receive

        async def receive(parameters: Any, _orig: Any = original, _rx: Any = receiver) -> None:
            await _orig(parameters)
            _rx._RTCRtpReceiver__stop_decoder()

        receiver.receive = receive  # type: ignore[method-assign]


def bundle_transport(pc: RTCPeerConnection) -> RTCDtlsTransport:
    """The one DTLS transport every m-line uses (BUNDLE is resolved in setRemoteDescription)."""
    transceivers = pc.getTransceivers()
    if not transceivers:
        raise AdapterError("peer connection has no transceivers")
    return transceivers[0].receiver.transport


def remote_candidate_count(pc: RTCPeerConnection) -> int:
    """Remote candidates aioice accepted (signalled, or learned as peer-reflexive)."""
    connection = bundle_transport(pc).transport._connection
    return len(connection._remote_candidates)


def hook_ingress(
    pc: RTCPeerConnection,
    on_rtp: RawRtpHandler | None,
    count_drop: DropCounter,
) -> None:
    """Feed every decrypted RTP packet of `pc` to `on_rtp` first, then to aiortc.

    Must be called after setRemoteDescription (BUNDLE discards the other transports there).
    This replaces aiortc's two dispatch methods with the same parse-and-route steps, with
    two differences: our handler sees the raw bytes first, and every parse failure (not
    only ValueError: struct.error escapes aiortc and closes the transport, aiortc#745) is
    dropped and counted. Used on viewers too (on_rtp=None), where RTP is not expected.
    """
    dtls = bundle_transport(pc)
    router = dtls._rtp_router
    extensions_map = dtls._rtp_header_extensions_map

    async def handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
        if on_rtp is not None:
            try:
                on_rtp(data)
            except Exception:
                count_drop("forward_error")
                log.exception("forwarding failed for one packet")
        try:
            packet = RtpPacket.parse(data, extensions_map)
        except PARSE_ERRORS:
            count_drop("malformed_rtp")
            return
        receiver = router.route_rtp(packet)
        if receiver is not None:
            await receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)

    async def handle_rtcp_data(data: bytes) -> None:
        try:
            packets = RtcpPacket.parse(data)
        except PARSE_ERRORS:
            count_drop("malformed_rtcp")
            return
        for packet in packets:
            for recipient in router.route_rtcp(packet):
                await recipient._handle_rtcp_packet(packet)

    dtls._handle_rtp_data = handle_rtp_data  # type: ignore[method-assign]
    dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]


def send_rtcp(pc: RTCPeerConnection, packet: bytes) -> None:
    """Send one RTCP packet on `pc` (rare: keyframe requests), without awaiting it."""
    dtls = bundle_transport(pc)
    if dtls.state != "connected":
        return
    task = asyncio.ensure_future(dtls._send_rtp(packet))
    task.add_done_callback(_ignore_send_failure)


def _ignore_send_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("RTCP send failed: %s", task.exception())


# --- viewer ------------------------------------------------------------------------------


class SenderState:
    """What a ForwardingSender reads for its sender reports, and where its feedback goes.

    sr_wallclock is the `time.time()` at which the RTP timestamp sr_rtp_timestamp was sent.
    """

    __slots__ = ("packets", "octets", "sr_rtp_timestamp", "sr_wallclock", "on_feedback")

    def __init__(self) -> None:
        self.packets = 0
        self.octets = 0
        self.sr_rtp_timestamp = 0
        self.sr_wallclock = 0.0
        self.on_feedback: Callable[[AnyRtcpPacket], None] | None = None


_NTP_EPOCH_OFFSET = 2208988800


def _ntp(wallclock: float) -> int:
    if wallclock <= 0:
        return 0
    seconds = wallclock + _NTP_EPOCH_OFFSET
    return (int(seconds) << 32) | int((seconds % 1) * (1 << 32))


class ForwardingSender(RTCRtpSender):
    """An RTCRtpSender whose packets come from the forwarder, not from an encoder.

    Installed by class swap on a sender aiortc already built (so all of aiortc's wiring
    stays intact). The name-mangled sender-report fields become read-only views of
    `_sfu_state`, so the reports aiortc's RTCP task sends describe what we forwarded.
    """

    _sfu_state: SenderState

    @property
    def _RTCRtpSender__packet_count(self) -> int:
        return self._sfu_state.packets

    @_RTCRtpSender__packet_count.setter
    def _RTCRtpSender__packet_count(self, value: int) -> None:
        pass

    @property
    def _RTCRtpSender__octet_count(self) -> int:
        return self._sfu_state.octets

    @_RTCRtpSender__octet_count.setter
    def _RTCRtpSender__octet_count(self, value: int) -> None:
        pass

    @property
    def _RTCRtpSender__rtp_timestamp(self) -> int:
        return self._sfu_state.sr_rtp_timestamp

    @_RTCRtpSender__rtp_timestamp.setter
    def _RTCRtpSender__rtp_timestamp(self, value: int) -> None:
        pass

    @property
    def _RTCRtpSender__ntp_timestamp(self) -> int:
        return _ntp(self._sfu_state.sr_wallclock)

    @_RTCRtpSender__ntp_timestamp.setter
    def _RTCRtpSender__ntp_timestamp(self, value: int) -> None:
        pass

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        # Parked: no encoder and no 20 ms polling; the forwarder sends for us.
        started: asyncio.Event = getattr(self, "_RTCRtpSender__rtp_started")  # noqa: B009
        exited: asyncio.Event = getattr(self, "_RTCRtpSender__rtp_exited")  # noqa: B009
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        finally:
            exited.set()

    async def _handle_rtcp_packet(self, packet: AnyRtcpPacket) -> None:
        on_feedback = self._sfu_state.on_feedback
        if on_feedback is not None:
            on_feedback(packet)
        # Receiver reports still update aiortc's round-trip-time estimate.
        if type(packet).__name__ in ("RtcpRrPacket", "RtcpSrPacket"):
            await super()._handle_rtcp_packet(packet)


def make_forwarding(sender: RTCRtpSender) -> SenderState:
    """Turn a sender aiortc created into a ForwardingSender; call before it is started."""
    state = SenderState()
    sender.__class__ = ForwardingSender
    sender._sfu_state = state  # type: ignore[attr-defined]
    return state


def sender_ssrcs(sender: RTCRtpSender) -> tuple[int, int]:
    """(media SSRC, RTX SSRC) announced for this sender in our SDP."""
    return sender._ssrc, sender._rtx_ssrc


# pylibsrtp protects in a 1500-byte buffer and keeps 144 bytes free for the longest
# trailer, so RTP over 1356 bytes raises ValueError. Publishers send larger packets
# (GStreamer's payloaders fill 1400 bytes), which must reach viewers unchanged.
SRTP_BUFFER_BYTES = 2048


def allow_full_size_packets(session: pylibsrtp.Session) -> None:
    """Let `session` protect any RTP packet that fits a UDP datagram (idempotent)."""
    if len(session._cdata) < SRTP_BUFFER_BYTES:
        cdata = pylibsrtp_binding.ffi.new("char[]", SRTP_BUFFER_BYTES)
        session._cdata = cdata
        session._buffer = pylibsrtp_binding.ffi.buffer(cdata)


class SrtpSendPath:
    """Protect and send one RTP packet to a connected peer, synchronously.

    Follows the nominated ICE pair if the controlling peer nominates another one.
    """

    __slots__ = ("_protect", "_nominated", "_pair", "_sendto", "_addr")

    def __init__(self, sender: RTCRtpSender) -> None:
        dtls = sender.transport
        if dtls.state != "connected" or dtls._tx_srtp is None:
            raise ConnectionError("DTLS is not connected")
        allow_full_size_packets(dtls._tx_srtp)
        self._protect: Callable[[bytes], bytes] = dtls._tx_srtp.protect
        self._nominated: dict[int, Any] = dtls.transport._connection._nominated
        self._pair: Any = None
        self._sendto: Callable[[bytes, Any], None] = _unconnected
        self._addr: Any = None

    def send(self, packet: bytes) -> None:
        pair = self._nominated.get(1)
        if pair is not self._pair:
            if pair is None:
                raise ConnectionError("no nominated ICE pair")
            self._pair = pair
            self._sendto = pair.protocol.transport.sendto
            self._addr = pair.remote_addr
        self._sendto(self._protect(packet), self._addr)


def _unconnected(data: bytes, addr: Any) -> None:
    raise ConnectionError("not connected")


# --- load generator support (bench/) -----------------------------------------------------

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
