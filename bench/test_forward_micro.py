"""Micro-benchmarks of the per-packet path (pytest-benchmark; no timing assertions).

    .venv/bin/python -m pytest bench/test_forward_micro.py --benchmark-only

`bare_loop` is the baseline measured in the same run: rewrite a header in place,
SRTP-protect with pylibsrtp and sendto, per viewer, with nothing else. The forwarder's
figure divided by it is the forwarding efficiency of the Python part of the path.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pylibsrtp
import pytest
from aiortc.rtp import RtpPacket

from sfu.aiortc_adapter import SenderState
from sfu.forward import CodecKey, ForwardingStats, Output, TrackForwarder
from sfu.rtp import header_template

VIEWERS = 50
PAYLOAD = os.urandom(1100)


def _srtp_session() -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=os.urandom(30),
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    )
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return pylibsrtp.Session(policy=policy)


@pytest.fixture
def sinks() -> Iterator[list[tuple[socket.socket, tuple[str, int]]]]:
    receivers = []
    for _ in range(VIEWERS):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        receivers.append(receiver)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    yield [(sender, r.getsockname()) for r in receivers]
    for receiver in receivers:
        receiver.close()
    sender.close()


def _send_path(sock: socket.socket, addr: tuple[str, int]):  # type: ignore[no-untyped-def]
    protect = _srtp_session().protect

    def send(packet: bytes) -> None:
        try:
            sock.sendto(protect(packet), addr)
        except BlockingIOError:
            pass

    return send


def _start_with_keyframe(forwarder: TrackForwarder) -> None:
    """A video track is forwarded from its first keyframe on (sfu.forward.InstantStart)."""
    packet = RtpPacket(payload_type=96, sequence_number=65535, timestamp=0, ssrc=42)
    packet.payload = b"\x10\x00" + PAYLOAD  # VP8: start of partition 0, key frame
    forwarder.on_rtp(packet.serialize(), 42, False)


def _viewer_output(send, index: int, stats: ForwardingStats) -> Output:  # type: ignore[no-untyped-def]
    """Viewer number `index` of a fan-out: its own SSRCs, RTX negotiated, a MID header."""
    return Output(
        send=send,
        report=SenderState(),
        codec=CodecKey("video/vp8", 90000, ""),
        ssrc=1000 + index,
        payload_type=96,
        rtx_ssrc=2000 + index,
        rtx_payload_type=97,
        header=header_template(4, "0"),
        stats=stats,
    )


def test_fanout_one_packet_to_50_viewers(benchmark, sinks) -> None:  # type: ignore[no-untyped-def]
    stats = ForwardingStats()
    forwarder = TrackForwarder("video", stats)
    codec = CodecKey("video/vp8", 90000, "")
    forwarder.set_source(codec, lambda: None)
    for index, (sock, addr) in enumerate(sinks):
        forwarder.outputs.append(_viewer_output(_send_path(sock, addr), index, stats))
    _start_with_keyframe(forwarder)
    packet = RtpPacket(payload_type=96, sequence_number=0, timestamp=0, ssrc=42)
    packet.payload = PAYLOAD
    data = bytearray(packet.serialize())
    seq = [0]

    def one_packet() -> None:
        seq[0] = (seq[0] + 1) & 0xFFFF
        struct.pack_into("!H", data, 2, seq[0])
        forwarder.on_rtp(bytes(data), 42, False)

    benchmark(one_packet)


def test_bare_loop_baseline_50_viewers(benchmark, sinks) -> None:  # type: ignore[no-untyped-def]
    sessions = [(_srtp_session().protect, sock, addr) for sock, addr in sinks]
    packet = RtpPacket(payload_type=96, sequence_number=0, timestamp=0, ssrc=42)
    packet.payload = PAYLOAD
    data = bytearray(packet.serialize())
    seq = [0]

    def one_packet() -> None:
        seq[0] = (seq[0] + 1) & 0xFFFF
        for index, (protect, sock, addr) in enumerate(sessions):
            struct.pack_into("!HII", data, 2, seq[0], 0, 1000 + index)
            try:
                sock.sendto(protect(bytes(data)), addr)
            except BlockingIOError:
                pass

    benchmark(one_packet)


def test_header_rewrite_only(benchmark) -> None:  # type: ignore[no-untyped-def]
    stats = ForwardingStats()
    sent: list[bytes] = []
    output = Output(
        send=lambda packet: None,
        report=SenderState(),
        codec=CodecKey("video/vp8", 90000, ""),
        ssrc=1,
        payload_type=96,
        rtx_ssrc=2,
        rtx_payload_type=None,
        header=header_template(4, "0"),
        stats=stats,
    )
    output.epoch = 1
    benchmark(output.forward, 1, 2, 0, 0, PAYLOAD, 0.0, 1)
    assert not sent


def test_nack_lookup(benchmark) -> None:  # type: ignore[no-untyped-def]
    stats = ForwardingStats()
    forwarder = TrackForwarder("video", stats)
    forwarder.set_source(CodecKey("video/vp8", 90000, ""), lambda: None)
    output = Output(
        send=lambda packet: None,
        report=SenderState(),
        codec=CodecKey("video/vp8", 90000, ""),
        ssrc=1,
        payload_type=96,
        rtx_ssrc=2,
        rtx_payload_type=97,
        header=header_template(4, "0"),
        stats=stats,
    )
    forwarder.outputs.append(output)
    _start_with_keyframe(forwarder)
    for seq in range(1024):
        packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq, ssrc=42)
        packet.payload = PAYLOAD
        forwarder.on_rtp(packet.serialize(), 42, False)
    lost = [(100 + output.seq_offset) & 0xFFFF]
    benchmark(forwarder.retransmit, output, lost)


# --- added with the load generator (bench/load.py) ------------------------------------------


def _vp8_packet(seq: int) -> bytes:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq // 10, ssrc=42)
    packet.payload = b"\x00" + PAYLOAD  # VP8 continuation: not a keyframe
    return packet.serialize()


def test_cache_insert_without_viewers(benchmark) -> None:  # type: ignore[no-untyped-def]
    """Per inbound packet: header read, payload slice, NACK cache and keyframe-cache insert."""
    forwarder = TrackForwarder("video", ForwardingStats())
    forwarder.set_source(CodecKey("video/vp8", 90000, ""), lambda: None)
    _start_with_keyframe(forwarder)
    packets = [_vp8_packet(seq) for seq in range(4096)]
    position = [0]

    def one_packet() -> None:
        position[0] = (position[0] + 1) & 4095
        forwarder.on_rtp(packets[position[0]], 42, False)

    benchmark(one_packet)
    assert forwarder.cache[4095 & 1023] is not None


@pytest.mark.parametrize("viewers", [10, 200])
def test_fanout_one_packet_to_n_viewers(benchmark, viewers: int) -> None:  # type: ignore[no-untyped-def]
    """One packet to N viewers through the real Output path (protect + sendto each)."""
    receivers = []
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.setblocking(False)
    stats = ForwardingStats()
    forwarder = TrackForwarder("video", stats)
    codec = CodecKey("video/vp8", 90000, "")
    forwarder.set_source(codec, lambda: None)
    try:
        for index in range(viewers):
            receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receiver.bind(("127.0.0.1", 0))
            receivers.append(receiver)
            send = _send_path(sender, receiver.getsockname())
            forwarder.outputs.append(_viewer_output(send, index, stats))
        _start_with_keyframe(forwarder)
        packets = [_vp8_packet(seq) for seq in range(1024)]
        position = [0]

        def one_packet() -> None:
            position[0] = (position[0] + 1) & 1023
            forwarder.on_rtp(packets[position[0]], 42, False)

        benchmark(one_packet)
        assert stats.packets_out >= viewers
    finally:
        sender.close()
        for receiver in receivers:
            receiver.close()
