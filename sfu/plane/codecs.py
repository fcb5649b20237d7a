"""A room's negotiated codecs as they travel from its home to its edges, and back."""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtcpFeedback, RTCRtpCodecParameters

from ipc.shm.messages import CodecDescription


def describe(kind: str, codec: RTCRtpCodecParameters) -> CodecDescription:
    return CodecDescription(
        kind=kind,
        mime_type=codec.mimeType,
        clock_rate=codec.clockRate,
        payload_type=codec.payloadType,
        channels=codec.channels,
        parameters=dict(codec.parameters),
        rtcp_feedback=[(f.type, f.parameter) for f in codec.rtcpFeedback],
    )


def parameters(description: CodecDescription) -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType=description.mime_type,
        clockRate=description.clock_rate,
        channels=description.channels,
        payloadType=description.payload_type,
        rtcpFeedback=[RTCRtcpFeedback(type=t, parameter=p) for t, p in description.rtcp_feedback],
        parameters=dict(description.parameters),
    )
