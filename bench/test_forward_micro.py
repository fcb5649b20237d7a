"""Micro-benchmarks of the per-packet path (pytest-benchmark; no timing assertions).

    .venv/bin/python -m pytest bench/test_forward_micro.py --benchmark-only

`bare_loop` is the baseline measured in the same run: rewrite a header in place,
SRTP-protect with pylibsrtp and sendto, per viewer, with nothing else. The forwarder's
figure divided by it is the forwarding efficiency of the Python part of the path.

Each benchmark then checks the work it timed: what every viewer was sent (counted by its
sender report and found on its socket), byte for byte on one viewer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pylibsrtp
import pytest
from aiortc.rtp import RtpPacket

from sfu.aiortc_adapter import SenderState
from sfu.codecs import CodecKey
from sfu.media import ForwardingStats, Output, RtpView, TrackForwarder, header_template
from sfu.media.clock import ManualClock
from sfu.media.transport_cc import TransportCcFeedback
from sfu.plane.home import Bells, RingMirror

VIEWERS = 50
PAYLOAD = os.urandom(1100)
VP8 = CodecKey("video/vp8", 90000, "")

Sink = tuple[socket.socket, socket.socket, tuple[str, int]]  # sender, receiver, its address


def _srtp_session() -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=os.urandom(30),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    )
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return pylibsrtp.Session(policy=policy)


def _open_sinks(count: int) -> list[Sink]:
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    sinks = []
    for _ in range(count):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        sinks.append((sender, receiver, receiver.getsockname()))
    return sinks


def _close_sinks(sinks: list[Sink]) -> None:
    for _, receiver, _ in sinks:
        receiver.close()
    if sinks:
        sinks[0][0].close()


@pytest.fixture
def sinks() -> Iterator[list[Sink]]:
    opened = _open_sinks(VIEWERS)
    yield opened
    _close_sinks(opened)


def _received(receiver: socket.socket) -> int:
    """Datagrams waiting on a viewer's socket (what the kernel kept of what it was sent)."""
    count = 0
    while True:
        try:
            receiver.recv(2048)
        except BlockingIOError:
            return count
        count += 1


def _send_path(
    sock: socket.socket, addr: tuple[str, int], keep: list[bytes] | None = None
) -> Callable[[bytes], None]:
    """SRTP protect and sendto; `keep` holds the last clear packet (one viewer's)."""
    protect = _srtp_session().protect

    if keep is None:

        def send(packet: bytes) -> None:
            try:
                sock.sendto(protect(packet), addr)
            except BlockingIOError:
                pass

        return send

    def send_and_keep(packet: bytes) -> None:
        keep[0] = packet
        try:
            sock.sendto(protect(packet), addr)
        except BlockingIOError:
            pass

    return send_and_keep


def _forwarder(stats: ForwardingStats) -> TrackForwarder:
    """A video track whose timers never run (the benchmarks have no event loop)."""
    forwarder = TrackForwarder("video", stats, scheduler=ManualClock())
    forwarder.set_source(VP8, lambda: None)
    return forwarder


def _start_with_keyframe(forwarder: TrackForwarder) -> None:
    """A video track is forwarded from its first keyframe on (sfu.media.instant_start)."""
    packet = RtpPacket(payload_type=96, sequence_number=65535, timestamp=0, ssrc=42)
    packet.payload = b"\x10\x00" + PAYLOAD  # VP8: start of partition 0, key frame
    forwarder.receive(RtpView(packet.serialize()), False)


def _viewer_output(send: Callable[[bytes], None], index: int, stats: ForwardingStats) -> Output:
    """Viewer number `index` of a fan-out: its own SSRCs, RTX negotiated, a MID header."""
    return Output(
        send=send,
        report=SenderState(),
        codec=VP8,
        ssrc=1000 + index,
        payload_type=96,
        rtx_ssrc=2000 + index,
        rtx_payload_type=97,
        header=header_template(4, "0"),
        stats=stats,
    )


def _expected(output: Output, seq: int, ts: int, payload: bytes) -> bytes:
    """The packet `output` sends for source packet (seq, ts, no marker, no padding)."""
    header = bytearray(header_template(4, "0"))
    out_seq = (seq + output.seq_offset) & 0xFFFF
    out_ts = (ts + output.ts_offset) & 0xFFFFFFFF
    struct.pack_into("!BHII", header, 1, output.payload_type, out_seq, out_ts, output.ssrc)
    return bytes(header) + payload


def _check_fanout(
    outputs: list[Output], sinks: list[Sink], packets: int, last: bytes, expected: bytes
) -> None:
    """Every viewer was sent every packet; one viewer's last one byte for byte."""
    assert [o.report.packets for o in outputs] == [packets] * len(outputs)
    assert all(_received(receiver) > 0 for _, receiver, _ in sinks)
    assert last == expected


def test_fanout_one_packet_to_50_viewers(benchmark, sinks) -> None:  # type: ignore[no-untyped-def]
    stats = ForwardingStats()
    forwarder = _forwarder(stats)
    kept = [b""]
    outputs = []
    for index, (sock, _, addr) in enumerate(sinks):
        output = _viewer_output(_send_path(sock, addr, kept if index == 0 else None), index, stats)
        forwarder.attach(output)
        outputs.append(output)
    _start_with_keyframe(forwarder)
    packet = RtpPacket(payload_type=96, sequence_number=0, timestamp=0, ssrc=42)
    packet.payload = PAYLOAD
    data = bytearray(packet.serialize())
    seq = [0]

    def one_packet() -> None:
        seq[0] = (seq[0] + 1) & 0xFFFF
        struct.pack_into("!H", data, 2, seq[0])
        forwarder.receive(RtpView(bytes(data)), False)

    benchmark(one_packet)
    calls = stats.packets_in - 1  # after the keyframe
    _check_fanout(outputs, sinks, calls + 1, kept[0], _expected(outputs[0], seq[0], 0, PAYLOAD))


def test_bare_loop_baseline_50_viewers(benchmark, sinks) -> None:  # type: ignore[no-untyped-def]
    sessions = [(_srtp_session().protect, sock, addr) for sock, _, addr in sinks]
    packet = RtpPacket(payload_type=96, sequence_number=0, timestamp=0, ssrc=42)
    packet.payload = PAYLOAD
    data = bytearray(packet.serialize())
    seq = [0]
    calls = [0]

    def one_packet() -> None:
        seq[0] = (seq[0] + 1) & 0xFFFF
        calls[0] += 1
        for index, (protect, sock, addr) in enumerate(sessions):
            struct.pack_into("!HII", data, 2, seq[0], 0, 1000 + index)
            try:
                sock.sendto(protect(bytes(data)), addr)
            except BlockingIOError:
                pass

    benchmark(one_packet)
    assert calls[0] > 0 and seq[0] == calls[0] & 0xFFFF
    assert all(_received(receiver) > 0 for _, receiver, _ in sinks)
    assert bytes(data[2:12]) == struct.pack("!HII", seq[0], 0, 1000 + VIEWERS - 1)


def test_header_rewrite_only(benchmark) -> None:  # type: ignore[no-untyped-def]
    stats = ForwardingStats()
    kept = [b""]

    def send(packet: bytes) -> None:
        kept[0] = packet

    output = _viewer_output(send, 0, stats)
    output.epoch = 1
    benchmark(output.forward, 1, 2, 0, 0, PAYLOAD, 0.0, 1)
    assert output.report.packets > 0 and stats.send_errors == 0
    assert kept[0] == _expected(output, 1, 2, PAYLOAD)
    assert kept[0][:12] == bytes.fromhex("90 60 0001 00000002 000003e8")  # seq/ts offsets 0


def test_nack_lookup(benchmark) -> None:  # type: ignore[no-untyped-def]
    stats = ForwardingStats()
    forwarder = _forwarder(stats)
    kept = [b""]

    def send(packet: bytes) -> None:
        kept[0] = packet

    output = _viewer_output(send, 0, stats)
    forwarder.attach(output)
    _start_with_keyframe(forwarder)
    for seq in range(1024):
        packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq, ssrc=42)
        packet.payload = PAYLOAD
        forwarder.receive(RtpView(packet.serialize()), False)
    lost = [(100 + output.seq_offset) & 0xFFFF]
    rtx_seq = output.rtx_seq
    benchmark(forwarder.retransmit, output, lost)
    assert forwarder.nack_hits > 0 and forwarder.nack_misses == 0
    answered = (output.rtx_seq - rtx_seq) & 0xFFFF
    assert answered == forwarder.nack_hits & 0xFFFF
    rtx = RtpPacket.parse(kept[0])
    assert (rtx.payload_type, rtx.ssrc) == (97, output.rtx_ssrc)
    assert rtx.payload == struct.pack("!H", lost[0]) + PAYLOAD  # OSN, then the original


# --- added with the load generator (bench/load.py) ------------------------------------------


def _vp8_packet(seq: int) -> bytes:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq // 10, ssrc=42)
    packet.payload = b"\x00" + PAYLOAD  # VP8 continuation: not a keyframe
    return packet.serialize()


def test_cache_insert_without_viewers(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Per inbound packet: header parse, payload slice, NACK cache and keyframe-cache insert."""
    stats = ForwardingStats()
    forwarder = _forwarder(stats)
    _start_with_keyframe(forwarder)
    packets = [_vp8_packet(seq) for seq in range(4096)]
    position = [0]

    def one_packet() -> None:
        position[0] = (position[0] + 1) & 4095
        forwarder.on_rtp(packets[position[0]], False)

    benchmark(one_packet)
    assert stats.dropped == 0 and stats.packets_out == 0
    newest = forwarder.cache.get(position[0])
    assert newest is not None and newest[4] == b"\x00" + PAYLOAD


def test_ingest_path_without_viewers(benchmark) -> None:  # type: ignore[no-untyped-def]
    """A publisher's per-packet ingress as PublisherSession._on_rtp runs it: one parse, the
    transport-cc arrival record, the route by payload type, the track (no viewers)."""
    _ingest(benchmark, ring=False)


def test_ingest_path_into_a_ring_without_viewers(benchmark) -> None:  # type: ignore[no-untyped-def]
    """The same with other workers following the room (issue 12): each packet is also
    written to the track's shared-memory ring (sfu.plane.home.RingMirror). The doorbell
    flush is scheduled on a loop that never runs here: one per loop turn, not per packet."""
    _ingest(benchmark, ring=True)


def _ingest(benchmark: Any, ring: bool) -> None:
    stats = ForwardingStats()
    forwarder = _forwarder(stats)
    loop = asyncio.new_event_loop()
    mirror = RingMirror("video", Bells(loop)) if ring else None
    forwarder.mirror = mirror
    _start_with_keyframe(forwarder)
    feedback = TransportCcFeedback(3, 1, lambda rtcp: None, scheduler=ManualClock())
    routes = {96: (forwarder, False)}
    packets = []
    for seq in range(4096):
        packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq // 10, ssrc=42)
        packet.payload = b"\x00" + PAYLOAD
        header = packet.serialize()
        element = b"\xbe\xde\x00\x01" + bytes([0x31]) + struct.pack("!H", seq) + b"\x00"
        packets.append(bytes([header[0] | 0x10]) + header[1:12] + element + header[12:])
    position = [0]

    def on_rtp(data: bytes) -> None:  # PublisherSession._on_rtp
        try:
            packet = RtpView(data)
        except ValueError:
            stats.dropped += 1
            return
        feedback.record(packet)
        route = routes.get(packet.payload_type)
        if route is None:
            stats.dropped += 1
            return
        route[0].receive(packet, route[1])

    def one_packet() -> None:
        position[0] = (position[0] + 1) & 4095
        on_rtp(packets[position[0]])

    try:
        benchmark(one_packet)
        assert stats.dropped == 0 and feedback.flush() is not None
        newest = forwarder.cache.get(position[0])
        assert newest is not None and newest[4] == b"\x00" + PAYLOAD
        if mirror is not None:
            assert mirror.ring.write_seq > 1000 and mirror.dirty
    finally:
        if mirror is not None:
            mirror.close()
        loop.close()


@pytest.mark.parametrize("viewers", [10, 200])
def test_fanout_one_packet_to_n_viewers(benchmark, viewers: int) -> None:  # type: ignore[no-untyped-def]
    """One packet to N viewers through the real Output path (protect + sendto each)."""
    sinks = _open_sinks(viewers)
    stats = ForwardingStats()
    forwarder = _forwarder(stats)
    kept = [b""]
    try:
        outputs = []
        for index, (sock, _, addr) in enumerate(sinks):
            send = _send_path(sock, addr, kept if index == 0 else None)
            output = _viewer_output(send, index, stats)
            forwarder.attach(output)
            outputs.append(output)
        _start_with_keyframe(forwarder)
        packets = [_vp8_packet(seq) for seq in range(1024)]
        position = [0]

        def one_packet() -> None:
            position[0] = (position[0] + 1) & 1023
            forwarder.on_rtp(packets[position[0]], False)

        benchmark(one_packet)
        seq = position[0]
        expected = _expected(outputs[0], seq, seq // 10, b"\x00" + PAYLOAD)
        _check_fanout(outputs, sinks, stats.packets_in, kept[0], expected)
    finally:
        _close_sinks(sinks)
