"""The plane's worker side in one process: a home room and an edge room linked by the real
transport (memfd rings, an eventfd doorbell, the abstract Unix socket), fed synthetic RTP
at the home, the edge's viewers sending into lists. The end-to-end tests run the same with
real processes, aiortc peers and the gateway (tests/plane/test_plane_e2e.py)."""

from __future__ import annotations

import asyncio
import os
import secrets
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from sfu.codecs import CodecKey
from sfu.media import ForwardingStats, Output, TrackForwarder
from sfu.plane import FollowRefused, PlaneEdge, PlaneHome
from sfu.room import Room
from sfu.session import SessionSettings
from tests.support.outputs import list_output

VP8 = CodecKey("video/vp8", 90000, "")
VP8_PARAMETERS = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
KEYFRAME = b"\x10\x00" + b"k" * 100  # VP8: start of partition 0, P bit clear
INTERFRAME = b"\x10\x01" + b"i" * 100


def rtp(seq: int, ts: int, payload: bytes, ssrc: int = 1111, marker: int = 1) -> bytes:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, ssrc=ssrc, marker=marker)
    packet.payload = payload
    return packet.serialize()


def out_header(data: bytes) -> tuple[int, int]:
    """(sequence number, timestamp) of a packet an Output sent."""
    seq, ts = struct.unpack_from("!HI", data, 2)
    return seq, ts


def settings() -> SessionSettings:
    return SessionSettings(connect_timeout=30, public_ip=None)


@dataclass
class Plane:
    home_room: Room
    home: PlaneHome
    edge: PlaneEdge
    edge_room: Room
    name: str
    keyframe_requests: list[float]

    @property
    def forwarder(self) -> TrackForwarder:
        return self.home_room.forwarders["video"]

    def publish(self, seq: int, ts: int, keyframe: bool = False) -> None:
        self.forwarder.on_rtp(rtp(seq, ts, KEYFRAME if keyframe else INTERFRAME), False)


def viewer(sent: list[bytes], stats: ForwardingStats) -> Output:
    return list_output(sent, stats)


def home_room(name: str, requests: list[float]) -> Room:
    room = Room(name, settings())
    room.publisher_codecs_changed({"video": VP8_PARAMETERS})
    forwarder = room.forwarder("video")
    forwarder.set_source(VP8, lambda: requests.append(asyncio.get_running_loop().time()))
    return room


async def settle(turns: int = 5) -> None:
    for _ in range(turns):
        await asyncio.sleep(0.01)


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    name = f"test-{os.getpid()}-{secrets.token_hex(4)}"
    requests: list[float] = []
    room = home_room("r", requests)
    home = PlaneHome(name, "home", {"r": room})
    edge = PlaneEdge(name, "edge")
    edge_room = Room("r", settings())
    yield Plane(room, home, edge, edge_room, name, requests)
    edge.close()
    home.close()


async def test_edge_viewer_gets_every_packet_in_order(plane: Plane) -> None:
    plane.publish(1, 0, keyframe=True)
    await plane.edge.follow(plane.edge_room, "home")
    sent: list[bytes] = []
    output = viewer(sent, ForwardingStats())
    plane.edge_room.forwarders["video"].attach(output)
    await settle()
    sent.clear()  # the instant-start backlog: checked in its own test
    for seq in range(2, 200):
        plane.publish(seq, seq * 3000, keyframe=seq % 50 == 0)
        if seq % 7 == 0:
            await asyncio.sleep(0)  # bursts, as packets come off a socket
    await settle()
    seqs = [out_header(data)[0] for data in sent]
    assert len(seqs) == 198
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
    assert sent[-1].endswith(INTERFRAME)
    assert plane.edge.packets_read >= 198 and plane.edge.packets_lost == 0


async def test_edge_joiner_starts_at_the_latest_keyframe(plane: Plane) -> None:
    plane.publish(10, 1000, keyframe=True)
    plane.publish(11, 2000)
    plane.publish(12, 3000)
    await plane.edge.follow(plane.edge_room, "home")  # the ring is prefilled with the GOP
    sent: list[bytes] = []
    plane.edge_room.forwarders["video"].attach(viewer(sent, ForwardingStats()))
    await settle()
    plane.publish(13, 4000)
    await settle()
    assert [data[-len(KEYFRAME) :] == KEYFRAME for data in sent] == [True, False, False, False]
    seqs = [out_header(data)[0] for data in sent]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))


async def test_keyframe_requests_and_nacks_from_edge_viewers(plane: Plane) -> None:
    plane.publish(1, 0, keyframe=True)
    await plane.edge.follow(plane.edge_room, "home")
    sent: list[bytes] = []
    output = viewer(sent, ForwardingStats())
    edge_forwarder = plane.edge_room.forwarders["video"]
    edge_forwarder.attach(output)
    await settle()
    before = len(plane.keyframe_requests)
    await asyncio.sleep(0.6)  # past the home's keyframe request interval
    edge_forwarder.request_keyframe()  # a viewer's PLI
    await settle()
    assert len(plane.keyframe_requests) > before
    for seq in range(2, 40):
        plane.publish(seq, seq * 3000)
    await settle()
    by_seq = {out_header(data)[0]: data for data in sent}
    lost = sorted(by_seq)[-20:-15]
    sent.clear()
    edge_forwarder.retransmit(output, lost)
    assert [out_header(data)[0] for data in sent] == lost
    assert sent == [by_seq[seq] for seq in lost]
    assert edge_forwarder.nack_hits == 5


async def test_republish_and_new_home_keep_viewers_continuous(plane: Plane) -> None:
    plane.publish(1, 0, keyframe=True)
    await plane.edge.follow(plane.edge_room, "home")
    sent: list[bytes] = []
    plane.edge_room.forwarders["video"].attach(viewer(sent, ForwardingStats()))
    await settle()
    for seq in range(2, 20):
        plane.publish(seq, seq * 3000)
    await settle()
    # A republish on the home: another SSRC, sequence numbers and timestamps.
    plane.forwarder.set_source(VP8, lambda: None)
    plane.forwarder.on_rtp(rtp(40000, 9_000_000, KEYFRAME, ssrc=2222), False)
    for seq in range(40001, 40010):
        plane.forwarder.on_rtp(rtp(seq, 9_000_000 + seq, INTERFRAME, ssrc=2222), False)
    await settle()
    # The home dies; a new one (another worker) gets the next publisher.
    plane.home.close()
    await settle()
    assert plane.edge.home_of("r") is None
    assert not plane.edge_room.closed
    requests: list[float] = []
    new_room = home_room("r", requests)
    new_home = PlaneHome(plane.name, "home2", {"r": new_room})
    try:
        new_room.forwarders["video"].on_rtp(rtp(7, 55, KEYFRAME, ssrc=3333), False)
        await plane.edge.follow(plane.edge_room, "home2")
        for seq in range(8, 20):
            new_room.forwarders["video"].on_rtp(rtp(seq, 55 + seq, INTERFRAME, ssrc=3333), False)
        await settle()
    finally:
        new_home.close()
    seqs = [out_header(data)[0] for data in sent]
    # the joiner's backlog (1), 18, 10 from the republish, 13 from the new home
    assert len(seqs) >= 1 + 18 + 10 + 12
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))
    timestamps = [out_header(data)[1] for data in sent]
    assert all(
        0 <= (b - a) & 0xFFFFFFFF < 1 << 31
        for a, b in zip(timestamps, timestamps[1:], strict=False)
    )


async def test_follow_refused_for_an_unknown_room_or_home(plane: Plane) -> None:
    with pytest.raises(FollowRefused):
        await plane.edge.follow(Room("nope", settings()), "home")
    with pytest.raises(FollowRefused):
        await plane.edge.follow(Room("r", settings()), "no-such-worker")


async def test_home_room_stays_while_followed_and_closes_after(plane: Plane) -> None:
    plane.publish(1, 0, keyframe=True)
    await plane.edge.follow(plane.edge_room, "home")
    assert plane.home_room.followers
    assert plane.home.follow_count == 1
    plane.edge.forget("r")
    await settle()
    assert plane.home.follow_count == 0
    assert plane.home_room.closed  # nobody left: no session, no follower


def own_maps() -> str:
    return Path("/proc/self/maps").read_text(encoding="ascii", errors="replace")


def memfds() -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "live-sfu-ring" in target:
            found.append(target)
    return found


async def test_nothing_left_mapped_or_open_after_closing(plane: Plane) -> None:
    plane.publish(1, 0, keyframe=True)
    await plane.edge.follow(plane.edge_room, "home")
    assert memfds()
    plane.edge.forget("r")
    await settle()
    plane.edge.close()
    plane.home.close()
    await settle()
    assert memfds() == []
    assert "live-sfu-ring" not in own_maps()
