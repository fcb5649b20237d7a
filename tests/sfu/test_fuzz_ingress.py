"""Property-based fuzzing of a live publisher connection's RTP/RTCP ingress.

Hypothesis builds hostile packets (random header extensions in both RFC 8285 forms, random
CSRC counts, bad padding, truncation, unknown and real payload types and SSRCs, RTCP with
lying lengths). Each one is protected with the publisher's real SRTP session and sent on
its real nominated ICE pair, so it reaches the worker exactly as a publisher's packet would.
The property: afterwards the publisher's session, the worker and the forwarding to a
viewer are all still alive.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pylibsrtp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipc import messages as m
from tests.sfu.conftest import WorkerHarness
from tests.sfu.media import accept, new_pc, publisher_offer, viewer_offer, wait_for

EXAMPLES = 600


@st.composite
def extension_blocks(draw: st.DrawFn) -> bytes:
    profile = draw(st.sampled_from([0xBEDE, 0x1000, 0x1001, draw(st.integers(0, 0xFFFF))]))
    body = b""
    for _ in range(draw(st.integers(0, 6))):
        element_id = draw(st.integers(0, 15))
        value = draw(st.binary(max_size=20))
        if profile == 0xBEDE:
            declared = draw(st.integers(0, 15))  # may disagree with len(value)
            body += bytes([(element_id << 4) | declared]) + value
        else:
            declared = draw(st.integers(0, 255))
            body += bytes([element_id, declared]) + value
    words = (len(body) + 3) // 4
    if draw(st.integers(0, 3)) == 0:  # a block length that lies
        words = draw(st.integers(0, 0xFFFF))
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", profile, words) + body


@st.composite
def rtp_packets(draw: st.DrawFn, payload_types: list[int]) -> bytes:
    csrc_count = draw(st.integers(0, 15))
    has_extension = draw(st.booleans())
    padding = draw(st.booleans())
    first = 0x80 | (0x20 if padding else 0) | (0x10 if has_extension else 0) | csrc_count
    payload_type = draw(st.one_of(st.sampled_from(payload_types), st.integers(0, 127)))
    marker = draw(st.sampled_from([0, 0x80]))
    # Not the publisher's own SSRCs: random sequence numbers on them would push its SRTP
    # sender's replay window ahead and break its real stream (a client-side failure).
    ssrc = draw(st.integers(0, 0xFFFFFFFF))
    header = struct.pack(
        "!BBHII",
        first,
        marker | payload_type,
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 0xFFFFFFFF)),
        ssrc,
    )
    csrcs = bytes(4 * csrc_count)
    if draw(st.integers(0, 3)) == 0:  # fewer than announced
        csrcs = csrcs[: draw(st.integers(0, len(csrcs)))]
    extension = draw(extension_blocks()) if has_extension else b""
    payload = draw(st.binary(max_size=300))
    if padding:
        payload += bytes([draw(st.integers(0, 255))])  # a padding count that may lie
    packet = header + csrcs + extension + payload
    if draw(st.integers(0, 7)) == 0:  # truncated somewhere
        packet = packet[: draw(st.integers(2, max(len(packet), 2)))]
    return packet


@st.composite
def rtcp_packets(draw: st.DrawFn, ssrcs: list[int]) -> bytes:
    packets = b""
    for _ in range(draw(st.integers(1, 3))):
        packet_type = draw(st.sampled_from([200, 201, 202, 203, 204, 205, 206, 207]))
        count = draw(st.integers(0, 31))
        body = struct.pack("!I", draw(st.sampled_from(ssrcs))) + draw(st.binary(max_size=80))
        declared = draw(st.one_of(st.just(len(body) // 4), st.integers(0, 0xFFFF)))
        packets += struct.pack("!BBH", 0x80 | count, packet_type, declared) + body
    return packets


async def test_fuzzed_rtp_and_rtcp_leave_the_connection_alive(worker: WorkerHarness) -> None:
    publisher = new_pc()
    offer = await publisher_offer(publisher)
    answer = await worker.request(m.OpenSession("publisher", "r1", "pub", offer))
    assert isinstance(answer, m.SessionAnswer)
    await accept(publisher, answer.answer)
    viewer = new_pc()
    viewer_sdp, counter = await viewer_offer(viewer)
    viewer_answer = await worker.request(m.OpenSession("subscriber", "r1", "v", viewer_sdp))
    assert isinstance(viewer_answer, m.SessionAnswer)
    await accept(viewer, viewer_answer.answer)
    await wait_for(lambda: counter.frames["video"] >= 10)

    transceivers = publisher.getTransceivers()
    senders = [t.sender for t in transceivers]
    dtls: Any = senders[0].transport
    srtp = dtls._tx_srtp
    pair = dtls.transport._connection._nominated[1]
    ssrcs = [s._ssrc for s in senders] + [s._rtx_ssrc for s in senders]
    payload_types = sorted(
        {c.payloadType for t in transceivers for c in t._codecs if c.payloadType is not None}
    )
    delivered = {"rtp": 0, "rtcp": 0}

    def send(data: bytes, rtcp: bool) -> None:
        try:
            protected = srtp.protect_rtcp(data) if rtcp else srtp.protect(data)
        except (pylibsrtp.Error, ValueError):
            return  # libsrtp will not protect it, so no publisher could send it either
        pair.protocol.transport.sendto(protected, pair.remote_addr)
        delivered["rtcp" if rtcp else "rtp"] += 1

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same packets on every run: a failure reproduces
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        packet=st.one_of(
            rtp_packets(payload_types).map(lambda p: (p, False)),
            rtcp_packets(ssrcs).map(lambda p: (p, True)),
        )
    )
    def generate(packet: tuple[bytes, bool]) -> None:
        hostile.append(packet)

    hostile: list[tuple[bytes, bool]] = []
    generate()
    # Interleaved with the publisher's live stream, as junk from a real client would be:
    # sending all of it in one blocking burst would silence the real source for seconds.
    for start in range(0, len(hostile), 10):
        for packet in hostile[start : start + 10]:
            send(*packet)
        await asyncio.sleep(0.005)
    # libsrtp refuses to protect many malformed headers (and the worker's libsrtp would
    # refuse to unprotect them); enough of each kind must have gone through.
    assert delivered["rtp"] > EXAMPLES // 6 and delivered["rtcp"] > EXAMPLES // 4, delivered

    frames = counter.frames["video"]
    await wait_for(lambda: counter.frames["video"] >= frames + 30, timeout=20)
    heartbeats = len(worker.heartbeats)
    await wait_for(lambda: len(worker.heartbeats) > heartbeats + 2)
    assert worker.process.poll() is None
    assert not any(s.state == "closed" for s in worker.states), worker.states
    assert worker.heartbeats[-1].dropped_packets > 0
    await viewer.close()
    await publisher.close()
