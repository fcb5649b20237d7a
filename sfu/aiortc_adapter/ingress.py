"""The publisher side: every decrypted packet is seen at the DTLS transport before aiortc
parses it; aiortc's receive path still runs for its RTCP (its decoders stopped)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import RtcpPacket, RtpPacket

from sfu.aiortc_adapter.versions import PARSE_ERRORS, AdapterError

log = logging.getLogger(__name__)


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

        receiver.receive = receive  # type: ignore[method-assign]  # instance-level seam


def bundle_transport(pc: RTCPeerConnection) -> RTCDtlsTransport:
    """The one DTLS transport every m-line uses (BUNDLE is resolved in setRemoteDescription)."""
    transceivers = pc.getTransceivers()
    if not transceivers:
        raise AdapterError("peer connection has no transceivers")
    return transceivers[0].receiver.transport


def ice_connection(pc: RTCPeerConnection) -> object:
    """The aioice Connection of `pc`'s bundle, as an opaque key (what IceMux.on_rebinding
    names)."""
    connection: object = bundle_transport(pc).transport._connection
    return connection


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

    dtls._handle_rtp_data = handle_rtp_data  # type: ignore[method-assign]  # the ingress seam
    dtls._handle_rtcp_data = handle_rtcp_data  # type: ignore[method-assign]  # the ingress seam


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
