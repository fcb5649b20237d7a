"""What the local workers of one plane tell each other over their link (ipc/shm/link.py).

An *edge* (a worker with viewers of a room whose publisher is elsewhere) joins the room's
*home* once, handing it its doorbell; then follows rooms: the home answers with the rooms'
codecs and one ring per track, whose memfds travel with the answer (SCM_RIGHTS, in the
order of `tracks`). Keyframe requests go back to the home. Updates (a new track, new codecs)
come as unsolicited Rings. Every struct is small: one message is one datagram.
"""

from __future__ import annotations

import msgspec

MAX_MESSAGE_BYTES = 65536
MAX_FDS = 8


class _Msg(msgspec.Struct, forbid_unknown_fields=True, tag_field="t"):
    pass


class CodecDescription(msgspec.Struct, forbid_unknown_fields=True):
    """One negotiated codec of the home's publisher (what edge viewers negotiate)."""

    kind: str
    mime_type: str
    clock_rate: int
    payload_type: int | None
    channels: int | None = None
    parameters: dict[str, str | int | None] = msgspec.field(default_factory=dict)
    rtcp_feedback: list[tuple[str, str | None]] = msgspec.field(default_factory=list)


class TrackRing(msgspec.Struct, forbid_unknown_fields=True):
    kind: str
    ring_id: int
    slots: int
    stride: int


class Join(_Msg, tag="join"):
    """edge -> home, first on a link; carries the edge's doorbell (an eventfd)."""

    worker_id: str


class Follow(_Msg, tag="follow"):
    """edge -> home: send me this room's rings (answered Rings or Refused)."""

    request_id: int
    room: str


class Rings(_Msg, tag="rings"):
    """home -> edge: the room's codecs and rings (memfds attached in `tracks` order).
    request_id 0: an update the edge did not ask for (a new track, new codecs)."""

    request_id: int
    room: str
    codecs: list[CodecDescription]
    tracks: list[TrackRing]


class Refused(_Msg, tag="refused"):
    request_id: int
    room: str
    reason: str


class Unfollow(_Msg, tag="unfollow"):
    room: str


class KeyframeRequest(_Msg, tag="keyframe"):
    """edge -> home: its viewers want a keyframe of this track (already rate-limited)."""

    room: str
    kind: str


class RoomGone(_Msg, tag="room_gone"):
    """home -> edge: the room closed on the home; its rings are written no more."""

    room: str


PlaneMessage = Join | Follow | Rings | Refused | Unfollow | KeyframeRequest | RoomGone

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[PlaneMessage] = msgspec.msgpack.Decoder(PlaneMessage)


def encode(message: PlaneMessage) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> PlaneMessage:
    """ValueError for anything that is not one well-formed plane message."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValueError(f"malformed plane message: {exc}") from None
