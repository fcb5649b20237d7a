"""WHIP: a publisher session receives one audio and one video track and feeds its room's
forwarders (mediasoup's Producers)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket
from aiortc.sdp import SessionDescription

from sfu import aiortc_adapter as adapter
from sfu.media import RtpView, TrackForwarder
from sfu.media.transport_cc import TransportCcFeedback
from sfu.rtp import AUDIO_LEVEL_URI
from sfu.sdp import (
    codec_key,
    describe_codec,
    media_codecs,
    negotiate_transport_cc,
    offered_codec_names,
    offered_kinds,
    parse_offer,
    sections_for,
)
from sfu.session.base import RTX_CAPABILITY, OfferError, Session, SessionSettings

if TYPE_CHECKING:
    from sfu.room import Room


class PublisherSession(Session):
    """WHIP: receives one audio and one video track and feeds the room's forwarders."""

    kind = "publisher"

    def __init__(self, room: Room, session_id: str, settings: SessionSettings) -> None:
        super().__init__(room, session_id, settings)
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
        """Per decrypted packet: the one parse of its header, then transport-cc and the
        track it belongs to (by payload type: media or RTX) read the same view."""
        try:
            packet = RtpView(data)
        except ValueError:
            self.stats.dropped += 1
            return
        transport_cc = self.transport_cc
        if transport_cc is not None:  # every packet counts, bandwidth probes included
            transport_cc.record(packet)
        route = self._routes.get(packet.payload_type)
        if route is None:
            self.stats.dropped += 1
            return
        route[0].receive(packet, route[1])

    def hook_first_packet(self, seen: Callable[[], None]) -> None:
        """The ingress hook takes a one-shot handler that puts the plain one back."""

        def first(data: bytes) -> None:
            adapter.hook_ingress(self.pc, self._on_rtp, self.count_drop)
            seen()
            self._on_rtp(data)

        adapter.hook_ingress(self.pc, first, self.count_drop)

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
