"""H265 for the test client: the RFC 7798 payload format and aiortc glue (aiortc has no H265).

* `packetize(nal_units)`: RTP payloads from NAL units (without start codes): single NAL
  unit packets, aggregation packets (AP) for runs of small units such as VPS/SPS/PPS/SEI,
  fragmentation units (FU) for units over the payload size. No DONL fields
  (sprop-max-don-diff 0), as WebRTC senders do.
* `depacketize(payloads)`: the NAL units back from one access unit's payloads (strict:
  ValueError on malformed input); `depayload(payload)`: one packet as an Annex B fragment,
  what aiortc's receiver concatenates per frame before decoding (stateless, like aiortc's
  own H264 depayloader).
* `H265Encoder` (libx265 through PyAV: Main profile, no B-frames, zero latency,
  VPS/SPS/PPS before every IDR) and `H265Decoder` (FFmpeg's hevc decoder), registered for
  video/H265 in aiortc's codec lookups by `install()` for the whole process. This is test
  tooling: the SFU itself never encodes, decodes or depacketizes H265 on the forwarding
  path (its recorder has its own depacketizer, sfu.recording.codecs.h265_access_unit).

Like many encoders in the field, the encoder makes an IDR every `KEYFRAME_INTERVAL` seconds
and ignores keyframe requests unless told otherwise, so a test can tell the SFU's instant
start apart from a keyframe sent on request.

`STATS` counts what this process sent and received, for the client's JSON result.
"""

from __future__ import annotations

import fractions
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

import av
from aiortc import rtcrtpreceiver as aiortc_rtcrtpreceiver
from aiortc import rtcrtpsender as aiortc_rtcrtpsender
from aiortc.codecs.base import Decoder, Encoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import VIDEO_TIME_BASE, convert_timebase
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.frame import Frame
from av.packet import Packet

MIME_TYPE = "video/h265"
PAYLOAD_MAX = 1200  # bytes of RTP payload
KEYFRAME_INTERVAL = 1.0  # seconds between the encoder's own IDR pictures
START_CODE = b"\x00\x00\x00\x01"

NAL_HEADER_SIZE = 2
FU_HEADER_SIZE = 1
AP_TYPE = 48
FU_TYPE = 49
PACI_TYPE = 50
IRAP_TYPES = range(16, 22)  # BLA_W_LP .. CRA_NUT
VPS_TYPE, SPS_TYPE, PPS_TYPE = 32, 33, 34


def nal_type(nal_unit: bytes) -> int:
    return (nal_unit[0] >> 1) & 0x3F


# --- Annex B -----------------------------------------------------------------------------


def split_annex_b(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (3- or 4-byte start codes)."""
    units: list[bytes] = []
    start = data.find(b"\x00\x00\x01")
    while start >= 0:
        begin = start + 3
        end = data.find(b"\x00\x00\x01", begin)
        unit = data[begin:] if end < 0 else data[begin:end]
        if end >= 0 and unit.endswith(b"\x00"):
            unit = unit[:-1]  # the first zero of a 4-byte start code
        if unit:
            units.append(unit)
        start = end
    return units


# --- RFC 7798 packetization --------------------------------------------------------------


def _fragment(unit: bytes, payload_max: int) -> list[bytes]:
    """FU packets (RFC 7798 §4.4.3) for a NAL unit too large for one packet."""
    header0, header1 = unit[0], unit[1]
    indicator = bytes([(header0 & 0x81) | (FU_TYPE << 1), header1])
    kind = nal_type(unit)
    body = unit[NAL_HEADER_SIZE:]
    room = payload_max - NAL_HEADER_SIZE - FU_HEADER_SIZE
    count = -(-len(body) // room)
    size = -(-len(body) // count)  # even fragments
    payloads = []
    for index in range(count):
        chunk = body[index * size : (index + 1) * size]
        fu_header = kind | (0x80 if index == 0 else 0) | (0x40 if index == count - 1 else 0)
        payloads.append(indicator + bytes([fu_header]) + chunk)
    return payloads


def _aggregate(units: list[bytes]) -> bytes:
    """An AP (RFC 7798 §4.4.2): F is the OR of the units' F bits, LayerId and TID their
    lowest."""
    forbidden = any(u[0] & 0x80 for u in units)
    layer = min(((u[0] & 0x01) << 5) | (u[1] >> 3) for u in units)
    tid = min(u[1] & 0x07 for u in units)
    header = bytes(
        [(0x80 if forbidden else 0) | (AP_TYPE << 1) | (layer >> 5), ((layer & 0x1F) << 3) | tid]
    )
    return header + b"".join(len(u).to_bytes(2, "big") + u for u in units)


def packetize(units: Iterable[bytes], payload_max: int = PAYLOAD_MAX) -> list[bytes]:
    """RTP payloads for one access unit's NAL units, in order."""
    payloads: list[bytes] = []
    pending: list[bytes] = []  # small units waiting to be aggregated
    pending_size = NAL_HEADER_SIZE

    def flush() -> None:
        nonlocal pending_size
        if len(pending) == 1:
            payloads.append(pending[0])
        elif pending:
            payloads.append(_aggregate(pending))
        pending.clear()
        pending_size = NAL_HEADER_SIZE

    for unit in units:
        if len(unit) < NAL_HEADER_SIZE + 1:
            continue
        if len(unit) > payload_max:
            flush()
            payloads += _fragment(unit, payload_max)
            continue
        if pending_size + 2 + len(unit) > payload_max:
            flush()
        pending.append(unit)
        pending_size += 2 + len(unit)
    flush()
    return payloads


def depacketize(payloads: Sequence[bytes]) -> list[bytes]:
    """The NAL units of one access unit's payloads; ValueError when malformed."""
    units: list[bytes] = []
    fragment: list[bytes] | None = None
    for payload in payloads:
        if len(payload) < NAL_HEADER_SIZE + 1:
            raise ValueError("H265 payload shorter than a NAL unit header")
        kind = nal_type(payload)
        if kind == FU_TYPE:
            fu_header = payload[2]
            if fu_header & 0x80:
                if fragment is not None:
                    raise ValueError("FU start inside a fragmented NAL unit")
                header = bytes([(payload[0] & 0x81) | ((fu_header & 0x3F) << 1), payload[1]])
                fragment = [header]
            elif fragment is None:
                raise ValueError("FU continuation without its start")
            fragment.append(payload[3:])
            if fu_header & 0x40:
                units.append(b"".join(fragment))
                fragment = None
            continue
        if fragment is not None:
            raise ValueError("fragmented NAL unit without its end")
        if kind == AP_TYPE:
            offset = NAL_HEADER_SIZE
            while offset < len(payload):
                length = int.from_bytes(payload[offset : offset + 2], "big")
                unit = payload[offset + 2 : offset + 2 + length]
                if length < NAL_HEADER_SIZE or len(unit) != length:
                    raise ValueError("truncated AP")
                units.append(unit)
                offset += 2 + length
        elif kind != PACI_TYPE:
            units.append(payload)
    if fragment is not None:
        raise ValueError("fragmented NAL unit without its end")
    return units


def depayload(payload: bytes) -> bytes:
    """One packet's share of the access unit in Annex B (for aiortc's jitter buffer)."""
    if len(payload) < NAL_HEADER_SIZE + 1:
        raise ValueError("H265 payload shorter than a NAL unit header")
    kind = nal_type(payload)
    if kind == FU_TYPE:
        fu_header = payload[2]
        if fu_header & 0x80:
            header = bytes([(payload[0] & 0x81) | ((fu_header & 0x3F) << 1), payload[1]])
            return START_CODE + header + payload[3:]
        return payload[3:]
    if kind == PACI_TYPE:
        return b""
    return b"".join(START_CODE + unit for unit in depacketize([payload]))


# --- statistics --------------------------------------------------------------------------


class Stats:
    """What this process's H265 encoders and decoders did (updated from aiortc's threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent_units = 0
        self.sent_keyframes = 0
        self.keyframe_requests = 0
        self.received_units = 0
        self.received_keyframes = 0
        self.first_received_types: list[int] | None = None
        self.decoded_frames = 0
        self.decode_errors = 0

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            first = self.first_received_types
            return {
                "sent_units": self.sent_units,
                "sent_keyframes": self.sent_keyframes,
                "keyframe_requests": self.keyframe_requests,
                "received_units": self.received_units,
                "received_keyframes": self.received_keyframes,
                "first_received_types": first,
                "first_received_key": first is not None and is_keyframe_unit(first),
                "decoded_frames": self.decoded_frames,
                "decode_errors": self.decode_errors,
            }


STATS = Stats()


def is_keyframe_unit(types: Sequence[int]) -> bool:
    """An access unit whose NAL unit types include an IRAP picture."""
    return any(kind in IRAP_TYPES for kind in types)


# --- aiortc codecs -----------------------------------------------------------------------


class H265Encoder(Encoder):
    """libx265 (Main, 8-bit 4:2:0) through PyAV, packetized per RFC 7798."""

    def __init__(self, frame_rate: int = 30, honor_keyframe_requests: bool = False) -> None:
        self.frame_rate = frame_rate
        self.honor_keyframe_requests = honor_keyframe_requests
        self.codec: Any = None

    def _open(self, frame: av.VideoFrame) -> Any:
        fps = self.frame_rate
        codec: Any = av.CodecContext.create("libx265", "w")
        codec.width, codec.height = frame.width, frame.height
        codec.pix_fmt = "yuv420p"
        codec.time_base = fractions.Fraction(1, 90000)
        codec.framerate = fractions.Fraction(fps, 1)
        keyint = round(fps * KEYFRAME_INTERVAL)
        codec.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "forced-idr": "1",
            "x265-params": (
                f"keyint={keyint}:min-keyint={keyint}:scenecut=0:bframes=0:"
                "repeat-headers=1:open-gop=0:info=0:log-level=error"
            ),
        }
        return codec

    def _encode(self, frame: av.VideoFrame, force_keyframe: bool) -> Iterator[bytes]:
        if self.codec is None or (frame.width, frame.height) != (
            self.codec.width,
            self.codec.height,
        ):
            self.codec = self._open(frame)
        if force_keyframe:
            with STATS.lock:
                STATS.keyframe_requests += 1
        key = force_keyframe and self.honor_keyframe_requests
        frame.pict_type = av.video.frame.PictureType.I if key else av.video.frame.PictureType.NONE
        for packet in self.codec.encode(frame):
            yield bytes(packet)

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, av.VideoFrame)
        data = b"".join(self._encode(frame, force_keyframe))
        time_base = frame.time_base or VIDEO_TIME_BASE
        timestamp = convert_timebase(frame.pts or 0, time_base, VIDEO_TIME_BASE)
        return self._payloads(data), timestamp

    def pack(self, packet: Packet[Any]) -> tuple[list[bytes], int]:
        assert isinstance(packet, av.Packet)
        timestamp = convert_timebase(packet.pts or 0, packet.time_base, VIDEO_TIME_BASE)
        return self._payloads(bytes(packet)), timestamp

    @staticmethod
    def _payloads(data: bytes) -> list[bytes]:
        units = split_annex_b(data)
        if not units:
            return []
        with STATS.lock:
            STATS.sent_units += 1
            if is_keyframe_unit([nal_type(u) for u in units]):
                STATS.sent_keyframes += 1
        return packetize(units)


class H265Decoder(Decoder):
    """FFmpeg's hevc decoder on the Annex B access units aiortc's jitter buffer assembles."""

    def __init__(self) -> None:
        self.codec: Any = av.CodecContext.create("hevc", "r")

    def decode(self, encoded_frame: JitterFrame) -> list[Frame]:
        types = [nal_type(u) for u in split_annex_b(encoded_frame.data)]
        with STATS.lock:
            STATS.received_units += 1
            if STATS.first_received_types is None:
                STATS.first_received_types = types
            if is_keyframe_unit(types):
                STATS.received_keyframes += 1
        packet = av.Packet(encoded_frame.data)
        packet.pts = encoded_frame.timestamp
        packet.time_base = VIDEO_TIME_BASE
        try:
            frames = cast(list[Frame], self.codec.decode(packet))
        except av.FFmpegError:
            with STATS.lock:
                STATS.decode_errors += 1
            raise  # aiortc logs it and asks the sender for a keyframe (PLI)
        with STATS.lock:
            STATS.decoded_frames += len(frames)
        return frames


_installed = False
_encoder_settings: dict[str, Any] = {"frame_rate": 30, "honor_keyframe_requests": False}


def install(frame_rate: int | None = None, honor_keyframe_requests: bool | None = None) -> None:
    """Send and receive video/H265 with aiortc in this process; a later call only changes
    the settings of encoders made from then on.

    The codec must also be in aiortc's table to be negotiated:
    `sfu.aiortc_adapter.install_negotiation()` adds it. This replaces the sender and
    receiver modules' own bindings of aiortc's get_encoder, get_decoder and depayload,
    wrapping whatever is there (other test patches keep working).
    """
    global _installed
    if frame_rate is not None:
        _encoder_settings["frame_rate"] = frame_rate
    if honor_keyframe_requests is not None:
        _encoder_settings["honor_keyframe_requests"] = honor_keyframe_requests
    if _installed:
        return
    get_encoder = aiortc_rtcrtpsender.get_encoder  # type: ignore[attr-defined]  # an imported name
    get_decoder = aiortc_rtcrtpreceiver.get_decoder  # type: ignore[attr-defined]
    depayload_any = aiortc_rtcrtpreceiver.depayload  # type: ignore[attr-defined]

    def get_h265_encoder(codec: RTCRtpCodecParameters) -> Encoder:
        if codec.mimeType.lower() == MIME_TYPE:
            return H265Encoder(**_encoder_settings)
        return get_encoder(codec)

    def get_h265_decoder(codec: RTCRtpCodecParameters) -> Decoder:
        if codec.mimeType.lower() == MIME_TYPE:
            return H265Decoder()
        return get_decoder(codec)

    def depayload_h265(codec: RTCRtpCodecParameters, payload: bytes) -> bytes:
        if codec.mimeType.lower() == MIME_TYPE:
            return depayload(payload)
        return depayload_any(codec, payload)

    aiortc_rtcrtpsender.get_encoder = get_h265_encoder  # type: ignore[attr-defined]
    aiortc_rtcrtpreceiver.get_decoder = get_h265_decoder  # type: ignore[attr-defined]
    aiortc_rtcrtpreceiver.depayload = depayload_h265  # type: ignore[attr-defined]
    _installed = True
