"""The one codec for IPC frames (msgpack through msgspec)."""

from __future__ import annotations

import msgspec

from ipc.messages import Frame

MAX_MESSAGE_BYTES = 4 * 1024 * 1024

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Frame)


class BadMessage(ValueError):
    """Undecodable, oversized or unknown frame."""


def encode(frame: Frame) -> bytes:
    return _encoder.encode(frame)


def decode(data: bytes) -> Frame:
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"frame of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise BadMessage(str(exc)) from exc
