"""The viewer side: senders whose encoder loop is parked and whose sender reports describe
what we forwarded, and the synchronous SRTP + sendto path of the per-packet fan-out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pylibsrtp
import pylibsrtp._binding as pylibsrtp_binding
from aiortc import RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import AnyRtcpPacket

log = logging.getLogger(__name__)


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
    sender._sfu_state = state  # type: ignore[attr-defined]  # read by ForwardingSender
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
