"""Keyframes: detecting them in RTP payloads, and asking a publisher for one.

Detection: each `*_keyframe` function looks at the first bytes of one packet's payload
(after the RTP header and any RTX original-sequence field) and says whether that packet
starts a keyframe, without depacketising. Pure functions: they never raise on short or
malformed input, they answer False.

Requests (`KeyframeRequests`): viewers' PLI/FIR, joining viewers, recordings and source
changes all ask for keyframes; the publisher is sent at most one request per
KEYFRAME_REQUEST_INTERVAL, and a request that comes too soon is not lost but sent when the
interval ends (one timer, behind an injected Scheduler).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sfu.media.clock import RUNNING_LOOP, Clock, Scheduler, Timer

KEYFRAME_REQUEST_INTERVAL = 0.5  # seconds between keyframe requests sent to a publisher

KeyframeTest = Callable[[bytes], bool]

_H264_IDR = 5
_H264_SPS = 7
_H264_STAP_A = 24
_H264_FU_A = 28
# H265 (RFC 7798): NAL unit types of IRAP pictures (BLA, IDR, CRA), the parameter sets that
# precede them, and the RTP payload structures.
_H265_IRAP_FIRST = 16
_H265_IRAP_LAST = 21
_H265_VPS = 32
_H265_SPS = 33
_H265_AP = 48
_H265_FU = 49


def vp8_keyframe(payload: bytes) -> bool:
    """RFC 7741: the start of partition 0 of a frame whose P bit (inverse key frame) is 0."""
    size = len(payload)
    if size < 1:
        return False
    first = payload[0]
    if not first & 0x10 or first & 0x07:  # S bit and PID 0: the start of the frame
        return False
    offset = 1
    if first & 0x80:  # X: extension byte follows
        if size < 2:
            return False
        ext = payload[1]
        offset = 2
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if size <= offset:
                return False
            offset += 2 if payload[offset] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            offset += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            offset += 1
    return size > offset and not payload[offset] & 0x01


def vp9_keyframe(payload: bytes) -> bool:
    """RFC 9628: B (start of frame) set, P (inter-picture predicted) clear, base spatial layer."""
    if len(payload) < 1:
        return False
    first = payload[0]
    if first & 0x40 or not first & 0x08:  # P set, or B clear
        return False
    if not first & 0x20:  # no layer indices: a single spatial layer
        return True
    offset = 1
    if first & 0x80:  # I: picture id
        if len(payload) <= offset:
            return False
        offset += 2 if payload[offset] & 0x80 else 1
    if len(payload) <= offset:
        return False
    return (payload[offset] >> 1) & 0x07 == 0  # SID 0


def _h264_nal_is_key(nal_header: int) -> bool:
    nal_type = nal_header & 0x1F
    return nal_type == _H264_IDR or nal_type == _H264_SPS


def h264_keyframe(payload: bytes) -> bool:
    """RFC 6184: an IDR slice or SPS, alone, in a STAP-A, or starting an FU-A."""
    size = len(payload)
    if size < 1:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type == _H264_FU_A:
        return size >= 2 and bool(payload[1] & 0x80) and _h264_nal_is_key(payload[1])
    if nal_type == _H264_STAP_A:
        offset = 1
        while offset + 2 < size:
            length = (payload[offset] << 8) | payload[offset + 1]
            if length == 0:
                return False
            if _h264_nal_is_key(payload[offset + 2]):
                return True
            offset += 2 + length
        return False
    return _h264_nal_is_key(payload[0])


def _h265_nal_is_key(nal_type: int) -> bool:
    return (
        _H265_IRAP_FIRST <= nal_type <= _H265_IRAP_LAST
        or nal_type == _H265_VPS
        or nal_type == _H265_SPS
    )


def h265_keyframe(payload: bytes) -> bool:
    """RFC 7798: an IRAP slice (BLA, IDR, CRA), VPS or SPS, alone, in an aggregation packet
    (AP), or starting a fragmentation unit (FU). Without DONL fields (sprop-max-don-diff 0,
    what WebRTC senders use); PACI packets count as not key."""
    size = len(payload)
    if size < 2 or payload[0] & 0x80:  # the NAL unit header is 2 bytes; F must be 0
        return False
    nal_type = (payload[0] >> 1) & 0x3F
    if nal_type == _H265_FU:
        return size >= 3 and bool(payload[2] & 0x80) and _h265_nal_is_key(payload[2] & 0x3F)
    if nal_type == _H265_AP:
        offset = 2
        while offset + 2 < size:
            length = (payload[offset] << 8) | payload[offset + 1]
            if length < 2:
                return False
            if _h265_nal_is_key((payload[offset + 2] >> 1) & 0x3F):
                return True
            offset += 2 + length
        return False
    return _h265_nal_is_key(nal_type)


def av1_keyframe(payload: bytes) -> bool:
    """AV1 RTP spec: the N bit of the aggregation header starts a new coded video sequence."""
    return len(payload) >= 1 and bool(payload[0] & 0x08) and not payload[0] & 0x80


def always(payload: bytes) -> bool:
    """Audio: every packet is a random access point."""
    return True


KEYFRAME_TESTS: dict[str, KeyframeTest] = {
    "video/vp8": vp8_keyframe,
    "video/vp9": vp9_keyframe,
    "video/h264": h264_keyframe,
    "video/h265": h265_keyframe,
    "video/av1": av1_keyframe,
}


def keyframe_test(mime_type: str) -> KeyframeTest:
    """The keyframe test for a codec; audio and unknown codecs count every packet."""
    return KEYFRAME_TESTS.get(mime_type.lower(), always)


class KeyframeRequests:
    """Rate-limits keyframe requests to one `requester`; never loses one."""

    __slots__ = ("requester", "interval", "_clock", "_scheduler", "_last", "_timer", "sent")

    def __init__(
        self,
        interval: float = KEYFRAME_REQUEST_INTERVAL,
        clock: Clock = time.monotonic,
        scheduler: Scheduler = RUNNING_LOOP,
    ) -> None:
        self.requester: Callable[[], None] | None = None
        self.interval = interval
        self._clock = clock
        self._scheduler = scheduler
        self._last = -float("inf")
        self._timer: Timer | None = None
        self.sent = 0

    def request(self) -> None:
        """Send a request now if the interval allows, else once it ends (coalesced)."""
        if self.requester is None:
            return
        wait = self._last + self.interval - self._clock()
        if wait <= 0:
            self._send()
        elif self._timer is None:
            self._timer = self._scheduler.call_later(wait, self._send)

    def _send(self) -> None:
        self._timer = None
        self._last = self._clock()
        requester = self.requester
        if requester is not None:
            self.sent += 1
            requester()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.requester = None
