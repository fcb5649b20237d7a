"""A viewer Output that sends into a list, for the media-core and plane tests."""

from __future__ import annotations

from sfu.aiortc_adapter import SenderState
from sfu.codecs import CodecKey
from sfu.media import ForwardingStats, Output, header_template

VP8 = CodecKey("video/vp8", 90000, "")


def list_output(
    sent: list[bytes], stats: ForwardingStats | None = None, *, rtx_pt: int | None = None
) -> Output:
    """A VP8 viewer (SSRC 0xABCDEF01, payload type 120, MID "0" under id 4) whose packets are
    appended to `sent`; RTX on `rtx_pt` when given."""
    return Output(
        send=sent.append,
        report=SenderState(),
        codec=VP8,
        ssrc=0xABCDEF01,
        payload_type=120,
        rtx_ssrc=0x12345678,
        rtx_payload_type=rtx_pt,
        header=header_template(4, "0"),
        stats=stats or ForwardingStats(),
    )
