"""Transport-wide congestion control feedback for publishers (transport-cc).

aiortc implements no transport-cc (aiortc#780), and with only aiortc's REMB a browser
publisher's bandwidth estimate grows by its loss-based rule, ~8 % a second from 300 kbit/s:
half a minute to reach a camera's bitrate. With transport-cc feedback the browser runs its
full send-side estimator (delay-based, with probing) and ramps up within seconds.

What this module does: `negotiate_transport_cc` adds transport-cc to a publisher's answer
where the offer asked for it (aiortc drops it from answers, as it cannot produce the
feedback) and takes abs-send-time out of that answer, which silences aiortc's REMB (its
crude estimate would cap the browser's); `TransportCcFeedback` records the arrival time of
every packet carrying a transport-wide sequence number and sends the feedback RTCP (RTPFB
FMT 15, draft-holmer-rmcat-transport-wide-cc-extensions-01) every FEEDBACK_INTERVAL.

Publishers that do not offer transport-cc (OBS, ffmpeg, GStreamer without its TWCC
extension) keep abs-send-time and aiortc's REMB.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable

from sfu.rtp import extension_element

TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
FEEDBACK_INTERVAL = 0.1  # seconds; libwebrtc's receivers send one every 50-250 ms
# A window larger than this (a sequence jump from a broken or hostile sender) is cut to its
# newest part: the feedback describes recent packets, never megabytes of "lost" ones.
MAX_REPORTED = 4096
MAX_PENDING = 20000  # arrivals kept while not connected (no flush) before starting over

_RTPFB = 205
_FMT_TRANSPORT_CC = 15
_TICK_US = 250  # receive deltas are in 250 µs
_REFERENCE_US = 64000  # the reference time is in 64 ms
_MAX_RUN = 0x1FFF
_NOT_RECEIVED, _SMALL_DELTA, _LARGE_DELTA = 0, 1, 2

_FEEDBACK_HEADER = struct.Struct("!BBHIIHHI")

SendRtcp = Callable[[bytes], None]


def build_feedback(
    sender_ssrc: int,
    media_ssrc: int,
    base_seq: int,
    arrivals_us: list[int | None],
    feedback_count: int,
) -> bytes:
    """One transport-cc feedback packet for `arrivals_us[i]` = arrival of base_seq + i (µs,
    any monotonic clock) or None when that packet did not arrive. The first entry must be
    a received packet."""
    first = arrivals_us[0]
    if first is None:
        raise ValueError("the first reported packet must have arrived")
    reference = first // _REFERENCE_US
    position = reference * (_REFERENCE_US // _TICK_US)  # in ticks
    symbols: list[int] = []
    deltas = bytearray()
    for arrival in arrivals_us:
        if arrival is None:
            symbols.append(_NOT_RECEIVED)
            continue
        delta = round(arrival / _TICK_US) - position
        if 0 <= delta <= 0xFF:
            symbols.append(_SMALL_DELTA)
            deltas.append(delta)
        else:
            delta = max(-0x8000, min(delta, 0x7FFF))
            symbols.append(_LARGE_DELTA)
            deltas += struct.pack("!h", delta)
        position += delta
    chunks = bytearray()
    run_symbol, run_length = symbols[0], 0
    for symbol in symbols:
        if symbol != run_symbol or run_length == _MAX_RUN:
            chunks += struct.pack("!H", (run_symbol << 13) | run_length)
            run_symbol, run_length = symbol, 0
        run_length += 1
    chunks += struct.pack("!H", (run_symbol << 13) | run_length)
    body = bytes(chunks) + bytes(deltas)
    padding = -(_FEEDBACK_HEADER.size + len(body)) % 4
    if padding:
        body += b"\x00" * (padding - 1) + bytes([padding])
    length_words = (_FEEDBACK_HEADER.size + len(body)) // 4 - 1
    header = _FEEDBACK_HEADER.pack(
        0x80 | (0x20 if padding else 0) | _FMT_TRANSPORT_CC,
        _RTPFB,
        length_words,
        sender_ssrc,
        media_ssrc,
        base_seq & 0xFFFF,
        len(arrivals_us),
        ((reference & 0xFFFFFF) << 8) | (feedback_count & 0xFF),
    )
    return header + body


class TransportCcFeedback:
    """Arrival times of one publisher connection's packets, reported every 100 ms."""

    def __init__(self, extension_id: int, sender_ssrc: int, send: SendRtcp) -> None:
        self.extension_id = extension_id
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = 0
        self._send = send
        self._arrivals: dict[int, int] = {}  # unwrapped transport seq -> arrival (µs)
        self._highest = -1
        self._next_report = -1  # first unwrapped seq the next feedback covers
        self._feedback_count = 0
        self._timer: asyncio.TimerHandle | None = None
        self.sent = 0

    def record(self, data: bytes, ssrc: int) -> None:
        """Per packet: note its transport-wide sequence number and arrival time."""
        position = extension_element(data, self.extension_id)
        if position < 0 or position + 2 > len(data):
            return
        seq = (data[position] << 8) | data[position + 1]
        highest = self._highest
        if highest < 0:
            unwrapped = seq
            self._next_report = seq
        else:
            step = (seq - highest) & 0xFFFF
            unwrapped = highest + (step - 0x10000 if step >= 0x8000 else step)
            if unwrapped < self._next_report:
                return  # already reported as lost; too late to matter
        if unwrapped > highest:
            self._highest = unwrapped
        arrivals = self._arrivals
        if len(arrivals) >= MAX_PENDING:
            arrivals.clear()
            self._next_report = unwrapped
        arrivals[unwrapped] = time.monotonic_ns() // 1000
        self.media_ssrc = ssrc

    def start(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FEEDBACK_INTERVAL, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(FEEDBACK_INTERVAL, self._tick)
        packet = self.flush()
        if packet is not None:
            self._send(packet)

    def flush(self) -> bytes | None:
        """The feedback for everything received since the last one (None if nothing was)."""
        arrivals = self._arrivals
        if not arrivals:
            return None
        start = max(self._next_report, self._highest - MAX_REPORTED + 1)
        while start not in arrivals:  # a report starts at a received packet
            start += 1
            if start > self._highest:
                arrivals.clear()
                return None
        end = self._highest
        window = [arrivals.get(seq) for seq in range(start, end + 1)]
        packet = build_feedback(
            self.sender_ssrc, self.media_ssrc, start, window, self._feedback_count
        )
        self._feedback_count = (self._feedback_count + 1) & 0xFF
        self._next_report = end + 1
        arrivals.clear()
        self.sent += 1
        return packet


def negotiate_transport_cc(offer_sdp: str, answer_sdp: str) -> tuple[str, int | None]:
    """Add transport-cc to the answer's audio/video sections where the offer asked for it.

    Returns the new answer and the transport-wide-cc extension id (None when the offer did
    not ask for it). For each m-section, the offer's extmap id is kept (as aiortc does for
    the extensions it knows) and `a=rtcp-fb:<pt> transport-cc` is added for every answered
    payload type the offer listed with transport-cc.
    """
    offered = _sections(offer_sdp)
    answer_sections = _sections(answer_sdp)
    extension_id: int | None = None
    out: list[str] = []
    for index, lines in enumerate(answer_sections):
        if index == 0 or index > len(offered) - 1:
            out.extend(lines)
            continue
        offer_lines = offered[index]
        offer_id = _extmap_id(offer_lines, TRANSPORT_CC_URI)
        feedback_pts = {
            line.split()[0].split(":", 1)[1]
            for line in offer_lines
            if line.startswith("a=rtcp-fb:") and line.split()[1:] == ["transport-cc"]
        }
        if offer_id is None or not feedback_pts or not lines[0].startswith(("m=audio", "m=video")):
            out.extend(lines)
            continue
        answered_pts = lines[0].split()[3:]
        added = [f"a=rtcp-fb:{pt} transport-cc" for pt in answered_pts if pt in feedback_pts]
        if not added or _extmap_id(lines, TRANSPORT_CC_URI) is not None:
            out.extend(lines)
            continue
        extension_id = offer_id
        # Without abs-send-time the stock receiver sends no REMB: its estimate (measured to
        # hold Chromium near 250-450 kbit/s) would cap the browser's send-side estimate.
        lines = [line for line in lines if not _is_extmap(line, ABS_SEND_TIME_URI)]
        last_extmap = max(
            (i for i, line in enumerate(lines) if line.startswith("a=extmap:")), default=0
        )
        lines = [
            *lines[: last_extmap + 1],
            f"a=extmap:{offer_id} {TRANSPORT_CC_URI}",
            *lines[last_extmap + 1 :],
        ]
        out.extend(lines + added)
    return "\r\n".join(out) + "\r\n", extension_id


def _sections(sdp: str) -> list[list[str]]:
    sections: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if not line:
            continue
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def _is_extmap(line: str, uri: str) -> bool:
    parts = line.split()
    return line.startswith("a=extmap:") and len(parts) >= 2 and parts[1] == uri


def _extmap_id(lines: list[str], uri: str) -> int | None:
    for line in lines:
        if line.startswith("a=extmap:"):
            parts = line[len("a=extmap:") :].split()
            if len(parts) >= 2 and parts[1] == uri:
                try:
                    return int(parts[0].split("/")[0])
                except ValueError:
                    return None
    return None
