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


def test_fanout_one_packet_to_50_viewers(benchmark, sinks) -> None:  # type: ignore[no-untyped-def]
    stats = ForwardingStats()
    forwarder = TrackForwarder("video", stats)
    codec = CodecKey("video/vp8", 90000, "")
    forwarder.set_source(codec, lambda: None)
    for index, (sock, addr) in enumerate(sinks):
        forwarder.outputs.append(
            Output(
                send=_send_path(sock, addr),
                report=SenderState(),
                codec=codec,
                ssrc=1000 + index,
                payload_type=96,
                rtx_ssrc=2000 + index,
                rtx_payload_type=97,
                header=header_template(4, "0"),
                stats=stats,
            )
        )
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
    for seq in range(1024):
        packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq, ssrc=42)
        packet.payload = PAYLOAD
        forwarder.on_rtp(packet.serialize(), 42, False)
    lost = [(100 + output.seq_offset) & 0xFFFF]
    benchmark(forwarder.retransmit, output, lost)
