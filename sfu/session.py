"""WHIP and WHEP sessions: one aiortc RTCPeerConnection each (mediasoup's Transport plus its
Producers or Consumers).

A session is closed by the user (DELETE: `close("deleted")`), by its parent room
(`close("room closed")`), or by itself when ICE/DTLS fail or it never connects. Every path
runs the same idempotent `close()`, which reports exactly once through `on_closed`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.exceptions import InvalidAccessError, InvalidStateError, OperationError
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
)
from aiortc.sdp import SessionDescription, candidate_from_sdp

from sfu import aiortc_adapter as adapter
from sfu.congestion import TransportCcFeedback, negotiate_transport_cc
from sfu.forward import CodecKey, ForwardingStats, Output, TrackForwarder
from sfu.rtp import AUDIO_LEVEL_URI, MID_URI, SSRC, header_template
from sfu.sdp import (
    announce_public_ip,
    check_transport,
    codec_key,
    describe_codec,
    echo_h264_levels,
    first_section_with,
    media_codecs,
    offered_codec_names,
    offered_kinds,
    parse_offer,
    reduce_offer,
    restore_rejected,
    sections_for,
    strip_mdns_candidates,
)

if TYPE_CHECKING:
    from sfu.room import Room

log = logging.getLogger(__name__)

ClosedCallback = Callable[["Session", str], None]
StateCallback = Callable[["Session", str], None]

RTX_CAPABILITY = RTCRtpCodecCapability(mimeType="video/rtx", clockRate=90000)


MAX_ERROR_DETAIL = 200


class OfferError(ValueError):
    """The offer cannot be served; the message is for the HTTP client."""


class CapacityError(RuntimeError):
    """This worker cannot take the session now (no free UDP port); retrying later may work."""


class SessionSettings:
    def __init__(
        self, *, connect_timeout: float, public_ip: str | None, transport_cc: bool = True
    ) -> None:
        self.connect_timeout = connect_timeout
        self.public_ip = public_ip
        # Answer publishers' transport-cc and send them its feedback (sfu.congestion).
        self.transport_cc = transport_cc


class Session:
    kind = "session"

    def __init__(
        self,
        room: Room,
        session_id: str,
        settings: SessionSettings,
        stats: ForwardingStats,
        on_state: StateCallback,
        on_closed: ClosedCallback,
    ) -> None:
        self.room = room
        self.id = session_id
        self.settings = settings
        self.stats = stats
        self._on_state = on_state
        self._on_closed = on_closed
        adapter.install_negotiation()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.connected = False
        self.closed = False
        self._deadline: asyncio.TimerHandle | None = None
        self._mids: list[str] = []

    # --- lifecycle ------------------------------------------------------------------------

    def _watch_connection(self) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.settings.connect_timeout, self._connect_deadline)

        @self.pc.on("connectionstatechange")
        def on_change() -> None:
            state = self.pc.connectionState
            if state == "connected" and not self.connected and not self.closed:
                self.connected = True
                if self._deadline is not None:
                    self._deadline.cancel()
                    self._deadline = None
                self.on_connected()
                self._on_state(self, "connected")
            elif state in ("failed", "closed") and not self.closed:
                asyncio.ensure_future(self.close(f"connection {state}"))

    def _connect_deadline(self) -> None:
        self._deadline = None
        if not self.connected and not self.closed:
            timeout = self.settings.connect_timeout
            asyncio.ensure_future(self.close(f"not connected within {timeout:g} s"))

    def on_connected(self) -> None:
        """Subclasses start forwarding here."""

    def count_drop(self, reason: str) -> None:
        self.stats.dropped += 1

    async def close(self, reason: str) -> None:
        """Close and report through `on_closed` (once, whatever fails on the way)."""
        if self.closed:
            return
        try:
            await self.abort()
        finally:
            self._on_closed(self, reason)

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
        return announce_public_ip(full, self.settings.public_ip)

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


class PublisherSession(Session):
    """WHIP: receives one audio and one video track and feeds the room's forwarders."""

    kind = "publisher"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._routes: dict[int, tuple[TrackForwarder, bool]] = {}
        self._requesters: dict[str, Callable[[], None]] = {}
        self._rtcp_ssrc = random.randrange(1, 1 << 32)
        self.codecs: dict[str, RTCRtpCodecParameters] = {}
        self.transport_cc: TransportCcFeedback | None = None

    async def open(self, offer_sdp: str) -> str:
        try:
            description = parse_offer(offer_sdp)
        except ValueError as exc:
            raise OfferError(str(exc)) from None
        if not offered_kinds(description, "send"):
            raise OfferError("a WHIP offer must send audio or video (sendonly or sendrecv)")
        chosen = self._choose_codecs(description)
        for kind, codec in chosen.values():
            transceiver = self.pc.addTransceiver(kind, direction="recvonly")
            preferences = [adapter.codec_capability(codec)]
            if kind == "video":
                preferences.append(RTX_CAPABILITY)
            transceiver.setCodecPreferences(preferences)
        answer = await self._answer(offer_sdp, description, sorted(chosen))
        if self.settings.transport_cc:
            answer, extension_id = negotiate_transport_cc(offer_sdp, answer)
            if extension_id is not None:
                self.transport_cc = TransportCcFeedback(
                    extension_id, self._rtcp_ssrc, lambda rtcp: adapter.send_rtcp(self.pc, rtcp)
                )
        adapter.stop_decoders(self.pc)
        self._route_tracks()
        if not self._routes:
            raise OfferError("none of the offered audio/video codecs can be forwarded")
        adapter.hook_ingress(self.pc, self._on_rtp, self.count_drop)
        self._watch_connection()
        return answer

    def _choose_codecs(
        self, description: SessionDescription
    ) -> dict[int, tuple[str, RTCRtpCodecParameters]]:
        """Per kind, the first section we can forward and the one codec to take from it.

        The answer names that codec only (plus its RTX), so the publisher cannot switch to
        another mid-stream. Viewers already in the room negotiated the last publisher's
        codec: a new publisher that offers it too is asked for it, so they keep playing.
        """
        chosen: dict[int, tuple[str, RTCRtpCodecParameters]] = {}
        refused: list[str] = []
        for kind in ("audio", "video"):
            indexes = sections_for(description, kind, "send")
            room_codec = self.room.codecs.get(kind)
            for index in indexes:
                offered = media_codecs(description.media[index])
                matches = (adapter.local_codec(kind, codec) for codec in offered)
                local = [c for c in matches if c is not None]
                if not local:
                    continue
                pick = local[0]
                if room_codec is not None:
                    same = [c for c in local if codec_key(c) == codec_key(room_codec)]
                    pick = same[0] if same else pick
                chosen[index] = (kind, pick)
                break
            else:
                if indexes:
                    names = ", ".join(offered_codec_names(description, kind)) or "none"
                    refused.append(f"{kind}: the offer sends {names}")
        if refused:
            forwarded = ", ".join(
                dict.fromkeys(
                    describe_codec(c).split(" (")[0]
                    for kind in ("audio", "video")
                    for c in adapter.local_codecs(kind)
                )
            )
            raise OfferError(
                "no offered codec can be forwarded (" + "; ".join(refused) + f"); "
                f"live-sfu forwards {forwarded}"
            )
        return chosen

    def _route_tracks(self) -> None:
        seen: set[str] = set()
        for transceiver in self.pc.getTransceivers():
            kind = transceiver.kind
            if kind in seen or transceiver.currentDirection not in ("recvonly", "sendrecv"):
                continue
            codecs = adapter.negotiated_codecs(transceiver)
            media = next((c for c in codecs if not c.mimeType.lower().endswith("/rtx")), None)
            if media is None or media.payloadType is None:
                continue
            seen.add(kind)
            forwarder = self.room.forwarder(kind)
            requester = self._keyframe_requester(forwarder)
            self._requesters[kind] = requester
            extensions = adapter.negotiated_extensions(transceiver)
            forwarder.set_source(
                codec_key(media),
                requester,
                audio_level_id=extensions.get(AUDIO_LEVEL_URI) if kind == "audio" else None,
            )
            self.codecs[kind] = media
            self._routes[media.payloadType] = (forwarder, False)
            for codec in codecs:
                is_rtx = codec.mimeType.lower().endswith("/rtx")
                if is_rtx and codec.payloadType is not None:
                    if codec.parameters.get("apt") == media.payloadType:
                        self._routes[codec.payloadType] = (forwarder, True)
        self.room.publisher_codecs_changed(self.codecs)

    def _keyframe_requester(self, forwarder: TrackForwarder) -> Callable[[], None]:
        def request() -> None:
            ssrc = forwarder.source_ssrc
            if ssrc is None or self.closed:
                return
            pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=self._rtcp_ssrc, media_ssrc=ssrc)
            adapter.send_rtcp(self.pc, bytes(pli))

        return request

    def _on_rtp(self, data: bytes) -> None:
        if len(data) < 12:
            self.stats.dropped += 1
            return
        ssrc = SSRC.unpack_from(data, 8)[0]
        transport_cc = self.transport_cc
        if transport_cc is not None:  # every packet counts, bandwidth probes included
            transport_cc.record(data, ssrc)
        route = self._routes.get(data[1] & 0x7F)
        if route is None:
            self.stats.dropped += 1
            return
        route[0].on_rtp(data, ssrc, route[1])

    def on_connected(self) -> None:
        if self.transport_cc is not None:
            self.transport_cc.start()
        for forwarder in self.room.forwarders.values():
            if forwarder.outputs:
                forwarder.request_keyframe()

    def detach(self) -> None:
        if self.transport_cc is not None:
            self.transport_cc.stop()
        self._routes.clear()
        for kind, requester in self._requesters.items():
            forwarder = self.room.forwarders.get(kind)
            if forwarder is not None:
                forwarder.clear_source(requester)


class SubscriberSession(Session):
    """WHEP: one Output per track the room forwards, attached once DTLS is up."""

    kind = "subscriber"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._pending: list[tuple[TrackForwarder, Output, object]] = []
        self.outputs: dict[str, tuple[TrackForwarder, Output]] = {}

    async def open(self, offer_sdp: str) -> str:
        try:
            description = parse_offer(offer_sdp)
        except ValueError as exc:
            raise OfferError(str(exc)) from None
        kinds = offered_kinds(description, "recv")
        if not kinds:
            raise OfferError("a WHEP offer must receive audio or video (recvonly or sendrecv)")
        room_codecs = self.room.codecs
        wanted: dict[str, RTCRtpCodecParameters] = {
            k: room_codecs[k] for k in kinds if k in room_codecs
        }
        if not wanted:
            sent = ", ".join(sorted(room_codecs)) or "nothing yet"
            raise OfferError(f"the offer receives {'/'.join(kinds)} but the room sends {sent}")
        keep: list[int] = []
        for kind, codec in wanted.items():
            index = first_section_with(description, kind, "recv", codec_key(codec))
            if index is not None:
                keep.append(index)
        if len(keep) < len(wanted):
            raise OfferError(self._codec_mismatch(description, wanted))
        transceivers = {}
        for kind, codec in wanted.items():
            transceiver = self.pc.addTransceiver(kind, direction="sendonly")
            preferences = [adapter.codec_capability(codec)]
            if kind == "video":
                preferences.append(RTX_CAPABILITY)
            transceiver.setCodecPreferences(preferences)
            transceivers[kind] = transceiver
        answer = await self._answer(offer_sdp, description, sorted(keep))
        adapter.hook_ingress(self.pc, None, self.count_drop)
        for kind, transceiver in transceivers.items():
            self._prepare_output(kind, transceiver, codec_key(wanted[kind]))
        if not self._pending:
            raise OfferError(self._codec_mismatch(description, wanted))
        self._watch_connection()
        return answer

    @staticmethod
    def _codec_mismatch(
        description: SessionDescription, wanted: dict[str, RTCRtpCodecParameters]
    ) -> str:
        parts = []
        for kind, codec in wanted.items():
            if first_section_with(description, kind, "recv", codec_key(codec)) is not None:
                continue
            offered = ", ".join(offered_codec_names(description, kind)) or "none"
            parts.append(
                f"{kind}: the room sends {describe_codec(codec)}, the offer accepts {offered}"
            )
        return "no common codec with the room's publisher (" + "; ".join(parts) + ")"

    def _prepare_output(self, kind: str, transceiver: object, wanted: CodecKey) -> None:
        codecs = adapter.negotiated_codecs(transceiver)  # type: ignore[arg-type]
        media = next((c for c in codecs if not c.mimeType.lower().endswith("/rtx")), None)
        if media is None or media.payloadType is None or codec_key(media) != wanted:
            return
        rtx = next(
            (
                c
                for c in codecs
                if c.mimeType.lower().endswith("/rtx")
                and c.parameters.get("apt") == media.payloadType
            ),
            None,
        )
        extensions = adapter.negotiated_extensions(transceiver)  # type: ignore[arg-type]
        sender = transceiver.sender  # type: ignore[attr-defined]
        report = adapter.make_forwarding(sender)
        ssrc, rtx_ssrc = adapter.sender_ssrcs(sender)
        # Audio level travels only where this viewer negotiated it; the forwarder fills it
        # from the publisher's packets (or blanks it when the publisher sends none).
        audio_level_id = extensions.get(AUDIO_LEVEL_URI) if kind == "audio" else None
        output = Output(
            send=_not_connected,
            report=report,
            codec=wanted,
            ssrc=ssrc,
            payload_type=media.payloadType,
            rtx_ssrc=rtx_ssrc,
            rtx_payload_type=rtx.payloadType if rtx is not None else None,
            header=header_template(
                extensions.get(MID_URI),
                transceiver.mid,  # type: ignore[attr-defined]
                audio_level_id,
            ),
            stats=self.stats,
            audio_level_id=audio_level_id,
        )
        forwarder = self.room.forwarder(kind)
        report.on_feedback = self._feedback_handler(forwarder, output)
        self._pending.append((forwarder, output, sender))

    def _feedback_handler(
        self, forwarder: TrackForwarder, output: Output
    ) -> Callable[[AnyRtcpPacket], None]:
        def on_feedback(packet: AnyRtcpPacket) -> None:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                forwarder.retransmit(output, [seq & 0xFFFF for seq in packet.lost])
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (
                RTCP_PSFB_PLI,
                RTCP_PSFB_FIR,
            ):
                forwarder.request_keyframe()
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                pass  # REMB from viewers: aggregation toward the publisher comes later

        return on_feedback

    def on_connected(self) -> None:
        for forwarder, output, sender in self._pending:
            try:
                path = adapter.SrtpSendPath(sender)  # type: ignore[arg-type]
            except ConnectionError:
                continue
            output.send = path.send
            forwarder.attach(output)
            self.outputs[forwarder.kind] = (forwarder, output)
        self._pending.clear()

    def detach(self) -> None:
        for forwarder, output in self.outputs.values():
            forwarder.detach(output)
        self.outputs.clear()
        self._pending.clear()


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


def _not_connected(packet: bytes) -> None:
    raise ConnectionError("viewer not connected yet")
