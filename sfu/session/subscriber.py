"""WHEP: a subscriber session gets one Output per track its room forwards, attached once
DTLS is up (mediasoup's Consumers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiortc import RTCRtpSender, RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
)
from aiortc.sdp import SessionDescription

from sfu import aiortc_adapter as adapter
from sfu.codecs import CodecKey
from sfu.media import Output, TrackForwarder, header_template
from sfu.rtp import AUDIO_LEVEL_URI, MID_URI
from sfu.sdp import (
    codec_key,
    describe_codec,
    first_section_with,
    offered_codec_names,
    offered_kinds,
    parse_offer,
)
from sfu.session.base import RTX_CAPABILITY, OfferError, Session, SessionSettings

if TYPE_CHECKING:
    from sfu.room import Room


class SubscriberSession(Session):
    """WHEP: one Output per track the room forwards, attached once DTLS is up."""

    kind = "subscriber"

    def __init__(self, room: Room, session_id: str, settings: SessionSettings) -> None:
        super().__init__(room, session_id, settings)
        self._pending: list[tuple[TrackForwarder, Output, RTCRtpSender]] = []
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

    def _prepare_output(self, kind: str, transceiver: RTCRtpTransceiver, wanted: CodecKey) -> None:
        codecs = adapter.negotiated_codecs(transceiver)
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
        extensions = adapter.negotiated_extensions(transceiver)
        sender = transceiver.sender
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
                transceiver.mid,
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
                path = adapter.SrtpSendPath(sender)
            except ConnectionError:
                continue
            output.send = path.send
            forwarder.attach(output)
            self.outputs[forwarder.kind] = (forwarder, output)
        self._pending.clear()

    def on_path_changed(self) -> None:
        # Seconds of video went to the old address: a decoder waits for a keyframe, and a
        # viewer that does not re-NACK (aiortc) waits until its jitter buffer overflows.
        for forwarder, _output in self.outputs.values():
            if forwarder.kind == "video":
                forwarder.request_keyframe()

    def hook_first_packet(self, seen: Callable[[], None]) -> None:
        """Each output's send takes a one-shot wrapper; the first packet sent to this viewer
        puts every output's own send back."""
        outputs = [output for _forwarder, output in self.outputs.values()]
        sends = [output.send for output in outputs]

        def restore() -> None:
            for output, send in zip(outputs, sends, strict=True):
                output.send = send
            seen()

        for output, send in zip(outputs, sends, strict=True):

            def first(packet: bytes, _send: Callable[[bytes], None] = send) -> None:
                restore()
                _send(packet)

            output.send = first

    def detach(self) -> None:
        for forwarder, output in self.outputs.values():
            forwarder.detach(output)
        self.outputs.clear()
        self._pending.clear()


def _not_connected(packet: bytes) -> None:
    raise ConnectionError("viewer not connected yet")
