"""Transport-wide congestion control feedback for publishers (transport-cc).

aiortc implements no transport-cc (aiortc#780), and with only aiortc's REMB a browser
publisher's bandwidth estimate grows by its loss-based rule, ~8 % a second from 300 kbit/s:
half a minute to reach a camera's bitrate. With transport-cc feedback the browser runs its
full send-side estimator (delay-based, with probing) and ramps up within seconds.

`TransportCcFeedback` records the arrival time of every packet of a publisher connection
that carries a transport-wide sequence number (from its parsed view: the extension block
is already located) and sends the feedback RTCP (RTPFB FMT 15,
draft-holmer-rmcat-transport-wide-cc-extensions-01) every FEEDBACK_INTERVAL.
The answer side (transport-cc added where the offer asked for it, abs-send-time removed so
that aiortc's REMB falls silent) is `sfu.sdp.negotiate_transport_cc`.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from sfu.media.clock import RUNNING_LOOP, Scheduler, Timer
from sfu.media.packet import RtpView, find_extension

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

    def __init__(
        self,
        extension_id: int,
        sender_ssrc: int,
        send: SendRtcp,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        scheduler: Scheduler = RUNNING_LOOP,
    ) -> None:
        """clock_ns: arrival times, in ns of any monotonic clock."""
        self.extension_id = extension_id
        self.sender_ssrc = sender_ssrc
        self.media_ssrc = 0
        self._send = send
        self._clock_ns = clock_ns
        self._scheduler = scheduler
        self._arrivals: dict[int, int] = {}  # unwrapped transport seq -> arrival (µs)
        self._highest = -1
        self._next_report = -1  # first unwrapped seq the next feedback covers
        self._feedback_count = 0
        self._timer: Timer | None = None
        self.sent = 0

    def record(self, packet: RtpView) -> None:
        """Per packet: note its transport-wide sequence number and arrival time."""
        data = packet.data
        position = find_extension(data, packet.extension_offset, self.extension_id)
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
        arrivals[unwrapped] = self._clock_ns() // 1000
        self.media_ssrc = packet.ssrc

    def start(self) -> None:
        if self._timer is None:
            self._timer = self._scheduler.call_later(FEEDBACK_INTERVAL, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = self._scheduler.call_later(FEEDBACK_INTERVAL, self._tick)
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
