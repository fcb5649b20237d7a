"""What WHIP and WHEP sessions share: one aiortc RTCPeerConnection each (mediasoup's
Transport), created by its room (`Room.open_session`) and closed in one of three ways:

* by the user (`close("deleted")`, a DELETE) or by itself (ICE/DTLS failed, never
  connected): the session tells its room, which forgets it and closes itself once empty;
* by its room (`parent_closed`, the room is closing): the room already forgets it;
* `abort()`, when opening failed: nobody is told, since the gateway never got an answer.

Each of them runs the same idempotent teardown, which cannot raise.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability
from aiortc.sdp import SessionDescription, candidate_from_sdp

from common import tracing
from sfu import aiortc_adapter as adapter
from sfu.media import ForwardingStats
from sfu.sdp import (
    announce_public_ip,
    check_transport,
    echo_h264_levels,
    reduce_offer,
    restart_fragment,
    restore_rejected,
    strip_mdns_candidates,
)

if TYPE_CHECKING:
    from sfu.room import Room

log = logging.getLogger(__name__)

RTX_CAPABILITY = RTCRtpCodecCapability(mimeType="video/rtx", clockRate=90000)


MAX_ERROR_DETAIL = 200


class OfferError(ValueError):
    """The offer cannot be served; the message is for the HTTP client."""


class CapacityError(RuntimeError):
    """This worker cannot take the session now (no free UDP port); retrying later may work."""


SessionKind = Literal["publisher", "subscriber"]


class SessionSettings:
    def __init__(
        self,
        *,
        connect_timeout: float,
        public_ip: str | Sequence[str] | None,
        transport_cc: bool = True,
    ) -> None:
        self.connect_timeout = connect_timeout
        # PUBLIC_IP: the addresses announced before the host ones (sfu/sdp.py).
        self.public_ip: tuple[str, ...] = (
            (public_ip,) if isinstance(public_ip, str) else tuple(public_ip or ())
        )
        # Answer publishers' transport-cc and send them its feedback (sfu.media.transport_cc).
        self.transport_cc = transport_cc


class Session:
    kind: SessionKind

    def __init__(self, room: Room, session_id: str, settings: SessionSettings) -> None:
        """Sessions are made by their room (Room.open_session), which is their parent."""
        self.room = room
        self.id = session_id
        self.settings = settings
        self.stats: ForwardingStats = room.stats
        # The set-up timeline: seconds from the offer reaching the worker (now) to each of
        # TIMELINE_MARKS, sent to the gateway with the connected and first_packet states
        # (live_session_phase_seconds) and, when tracing is on, span events at each mark.
        self.opened_at = time.monotonic()
        self.timeline: dict[str, float] = {}
        adapter.install_negotiation()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.connected = False
        self.closed = False
        self._deadline: asyncio.TimerHandle | None = None
        self._mids: list[str] = []
        self.answer_sdp = ""  # as sent to the client (an ICE restart repeats parts of it)
        # Tracing (common/tracing.py), NO_SPAN when off: from the offer to connected, with
        # ice.connected and dtls.connected events; then from connected to the first packet.
        self.connect_span = tracing.NO_SPAN
        self.first_packet_span = tracing.NO_SPAN

    async def open(self, offer_sdp: str) -> str:
        """Answer the client's offer; OfferError for what the client sent."""
        raise NotImplementedError

    # --- lifecycle ------------------------------------------------------------------------

    def trace_connection(self) -> None:
        """Start the connect span (a child of the current one: the worker's open span); a
        no-op when tracing is off."""
        self.connect_span = tracing.start_span(
            "sfu.session.connect",
            attributes={
                "sfu.session.kind": self.kind,
                "sfu.session.id_prefix": tracing.short_id(self.id),
                "sfu.room": self.room.name,
            },
        )

    def _watch_connection(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.settings.connect_timeout, self._connect_deadline)
        self._watch_ice()

        @self.pc.on("connectionstatechange")
        def on_change() -> None:
            state = self.pc.connectionState
            if state == "connected" and not self.connected and not self.closed:
                self.connected = True
                if self._deadline is not None:
                    self._deadline.cancel()
                    self._deadline = None
                self.mark("dtls.connected")  # aiortc's connected: ICE and DTLS both up
                self.on_connected()
                self.room.session_connected(self)
                if self.connect_span.recording:
                    self._traced_connected()
                self.hook_first_packet(self._first_packet)
            elif state in ("failed", "closed") and not self.closed:
                asyncio.ensure_future(self.close(f"connection {state}"))

    def _connect_deadline(self) -> None:
        self._deadline = None
        if not self.connected and not self.closed:
            timeout = self.settings.connect_timeout
            asyncio.ensure_future(self.close(f"not connected within {timeout:g} s"))

    def on_connected(self) -> None:
        """Subclasses start forwarding here."""

    def on_path_changed(self) -> None:
        """The client's address changed under the session (a NAT rebinding the ICE mux
        followed): what was sent meanwhile was lost. Subclasses recover here."""

    # --- the set-up timeline ----------------------------------------------------------------

    def mark(self, name: str) -> None:
        """The first time `name` (one of TIMELINE_MARKS) happened, in seconds since the
        offer; a span event of that name on the span still open, when tracing is on."""
        if name in self.timeline or self.closed:
            return
        self.timeline[name] = time.monotonic() - self.opened_at
        span = self.first_packet_span if name == "first_packet" else self.connect_span
        span.event(name)

    def _watch_ice(self) -> None:
        @self.pc.on("iceconnectionstatechange")
        def on_ice_change() -> None:
            if self.pc.iceConnectionState in ("connected", "completed"):
                self.mark("ice.connected")

    def _watch_handshakes(self) -> None:
        """After setRemoteDescription (the bundle's transports exist), before the answer is
        sent: the client's first check, and the DTLS handshake's start and end."""
        adapter.on_first_check(self.pc, lambda: self.mark("ice.first_check"))

        def on_dtls(state: str) -> None:
            if state == "connecting":
                self.mark("dtls.start")
            elif state == "connected":
                self.mark("dtls.connected")

        adapter.on_dtls_state(self.pc, on_dtls)

    def _traced_connected(self) -> None:
        """Connected (aiortc: ICE and DTLS both): end the connect span, and start the one
        that ends at the first packet."""
        connect = self.connect_span
        self.first_packet_span = tracing.start_span("sfu.session.first_packet", parent=connect)
        connect.end()

    def _first_packet(self) -> None:
        self.mark("first_packet")
        self.first_packet_span.end()
        if not self.closed:
            self.room.session_first_packet(self)  # the gateway's time-to-first-packet

    def hook_first_packet(self, seen: Callable[[], None]) -> None:
        """Subclasses call `seen` once, at the first packet forwarded to (or received from)
        the session after it connected, with a hook that runs once and then takes itself out
        of the path: no per-packet cost is left behind."""

    def count_drop(self, reason: str) -> None:
        self.stats.dropped += 1

    async def close(self, reason: str) -> None:
        """Close on the user's request or on its own; its room forgets it and is told once."""
        if self.closed:
            return
        self._trace_close(reason)
        try:
            await self.abort()
        finally:
            self.room.session_closed(self, reason)

    async def parent_closed(self, reason: str) -> None:
        """Its room is closing (and forgets every session itself): close, and report it."""
        if self.closed:
            return
        self._trace_close(reason)
        try:
            await self.abort()
        finally:
            self.room.report_closed(self, reason)

    def _trace_close(self, reason: str) -> None:
        """A session closed before it connected, or before its first packet: say why (our
        own words, never the client's) on the span still open."""
        for span in (self.connect_span, self.first_packet_span):
            span.set("sfu.close_reason", reason)

    async def abort(self) -> None:
        """Close without reporting: for a session whose opening failed.

        Nothing here may raise: aiortc can fail to close a half-built connection (after an
        offer it could not answer), and the session must be released all the same.
        """
        if self.closed:
            return
        self.closed = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self.connect_span.recording:
            self.connect_span.fail("not_connected")
        self.connect_span.end()
        self.first_packet_span.end()  # no packet came: the span has no first_packet event
        try:
            self.detach()
        except Exception:
            log.warning("session %s: detaching failed", self.id[:8], exc_info=True)
        try:
            await self.pc.close()
        except Exception:  # a half-built connection may fail to close; it is gone either way
            log.debug("closing peer connection of %s failed", self.id[:8], exc_info=True)
            await _stop_ice_transports(self.pc)  # its UDP ports, at least, must be freed

    def detach(self) -> None:
        """Subclasses unhook from the room's forwarders here."""

    # --- signalling ---------------------------------------------------------------------

    async def _answer(
        self, offer_sdp: str, description: SessionDescription, keep: list[int]
    ) -> str:
        """Negotiate the offer's sections at `keep`; the answer rejects every other one."""
        try:
            check_transport(description, keep)
        except ValueError as exc:
            raise OfferError(str(exc)) from None
        reduced = strip_mdns_candidates(reduce_offer(offer_sdp, keep))
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(reduced, "offer"))
            answer = await self.pc.createAnswer()
        except (OperationError, InvalidAccessError, InvalidStateError, ValueError) as exc:
            raise OfferError(f"cannot use this offer: {_detail(exc)}") from None
        except (AttributeError, KeyError, IndexError, TypeError, AssertionError) as exc:
            # aiortc's negotiation has only the offer as input, and these are how it fails
            # on offers it did not expect; check_structure refuses the known ones earlier.
            log.info("session %s: aiortc cannot answer the offer: %r", self.id[:8], exc)
            raise OfferError(f"cannot answer this offer: {_detail(exc)}") from None
        self._watch_handshakes()
        gathering = time.monotonic()
        await self.pc.setLocalDescription(answer)
        local = self.pc.localDescription
        if "\na=candidate:" not in local.sdp:
            # aioice skips an address whose bind fails: an answer without a candidate could
            # never connect, so it is not sent.
            if adapter.udp_ports_exhausted_since(gathering):
                raise CapacityError("no free UDP port for a new session")
            raise RuntimeError("ICE gathered no local candidate")
        self._mids = [t.mid for t in self.pc.getTransceivers() if t.mid is not None]
        try:
            full = echo_h264_levels(restore_rejected(local.sdp, offer_sdp, keep), description)
        except ValueError as exc:
            raise OfferError(f"cannot answer this offer: {exc}") from None
        self.answer_sdp = announce_public_ip(full, self.settings.public_ip)
        self.mark("answer")
        return self.answer_sdp

    async def restart_ice(
        self, ufrag: str, pwd: str, candidates: list[str], mid: str | None, end: bool
    ) -> str:
        """An ICE restart (RFC 9725 §4.3): the client's new credentials and candidates in,
        the sdpfrag of our new ones out. Media goes on over the pair in use until the
        client's checks nominate a new one; DTLS is kept."""
        try:
            restarted = adapter.restart_ice(self.pc, ufrag, pwd)
        except ValueError as exc:
            raise OfferError(f"cannot restart ICE: {exc}") from None
        await self.add_candidates(candidates, mid, end)
        fragment = restart_fragment(
            self.answer_sdp, restarted.ufrag, restarted.pwd, restarted.candidates
        )
        return announce_public_ip(fragment, self.settings.public_ip)

    async def add_candidates(self, candidates: list[str], mid: str | None, end: bool) -> None:
        sdp_mid = mid if mid in self._mids else (self._mids[0] if self._mids else None)
        for value in candidates:
            text = value[len("candidate:") :] if value.startswith("candidate:") else value
            try:
                candidate = candidate_from_sdp(text)
            # aiortc's parser asserts on a short line (an empty foundation, for one).
            except (ValueError, IndexError, AssertionError) as exc:
                raise OfferError(f"malformed candidate {value[:100]!r}: {_detail(exc)}") from None
            if candidate.ip.lower().endswith(".local"):
                continue  # mDNS: see strip_mdns_candidates
            usable = candidate.component == 1 and candidate.protocol.lower() == "udp"
            if not usable or not candidate.port:
                continue  # nothing aioice could pair: one component (rtcp-mux), UDP only
            candidate.sdpMid = sdp_mid
            try:
                await self.pc.addIceCandidate(candidate)
            except ValueError as exc:  # aioice: a candidate after end-of-candidates
                raise OfferError(f"candidate {value[:100]!r} refused: {_detail(exc)}") from None
        if end and adapter.remote_candidate_count(self.pc) > 0:
            # aiortc's end-of-candidates. Never on an empty list: aioice would fail the
            # connection at once, where a peer-reflexive candidate may still come.
            try:
                await self.pc.addIceCandidate(None)
            except ValueError:
                pass  # a second end-of-candidates changes nothing


async def _stop_ice_transports(pc: RTCPeerConnection) -> None:
    for transceiver in pc.getTransceivers():
        for dtls in (transceiver.receiver.transport, transceiver.sender.transport):
            try:
                await dtls.transport.stop()
            except Exception:
                log.debug("stopping an ICE transport failed", exc_info=True)


def _detail(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= MAX_ERROR_DETAIL else text[:MAX_ERROR_DETAIL] + "…"
