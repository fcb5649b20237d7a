"""Sessions leave nothing behind: open/close cycles as the worker runs them, in-process.

Each cycle runs as in the worker: a Room opens a PublisherSession (and
a SubscriberSession) that answer a real offer, a DELETE (`close("deleted")`), then the room
is closed. Afterwards no session, RTCPeerConnection or room may still be alive, and
Python's traced memory may not grow with the number of cycles: a session kept alive holds
its peer connection, certificate, transports and SDP (tens of KiB each), far above the
bound used here.

The loop is uvloop, as in the worker (uvloop's own bounded sockaddr cache is filled only by
sessions that send STUN, which the measured cycles do not). What RSS does is not asserted:
the allocator keeps freed pages, so RSS rises over the first hundred cycles and then stays
level; tests/soak/test_churn_soak.py watches RSS over a long run.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import weakref
from typing import Any

import aioice.ice
import pytest
import uvloop

from sfu.media.instant_start import InstantStart
from sfu.room import Room
from sfu.session import Session, SessionKind, SessionSettings
from tests.interop.sdp_offers import CHROME_AUDIO, CHROME_VIDEO, Section, browser_offer, only
from tests.sfu.media import accept, new_pc, publisher_offer, viewer_offer, wait_for

WARMUP_CYCLES = 40
MEASURED_CYCLES = 200
CONNECTED_CYCLES = 3
# Bytes of traced memory the measured cycles may add in all (lazy imports, interned
# strings, free lists). A session kept alive costs more than 20 KiB, so a leak of one per
# cycle adds over 4 MiB here.
GROWTH_BOUND = 256 * 1024

SETTINGS = SessionSettings(connect_timeout=10.0, public_ip=None)


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


def _whip_offer() -> str:
    return browser_offer(
        [
            Section("audio", formats=only(CHROME_AUDIO, "opus")),
            Section("video", formats=only(CHROME_VIDEO, "VP8")),
        ]
    )


def _whep_offer() -> str:
    return browser_offer(
        [
            Section("audio", direction="recvonly", formats=only(CHROME_AUDIO, "opus")),
            Section("video", direction="recvonly", formats=only(CHROME_VIDEO, "VP8")),
        ]
    )


class Rooms:
    """A worker's rooms (`Worker._open` and the RoomEvents), and weakrefs to all they made."""

    def __init__(self) -> None:
        self.rooms: dict[str, Room] = {}
        self.made: list[weakref.ref[Any]] = []
        self.closed = 0

    def open(self, kind: SessionKind, room_name: str, session_id: str) -> Session:
        room = self.rooms.get(room_name)
        if room is None:
            room = self.rooms[room_name] = Room(room_name, SETTINGS, self, InstantStart())
            self.made.append(weakref.ref(room))
        session = room.open_session(kind, session_id)
        self.made += [weakref.ref(session), weakref.ref(session.pc)]
        return session

    def session_connected(self, session: Session) -> None:
        pass

    def session_closed(self, session: Session, reason: str) -> None:
        self.closed += 1

    def room_closed(self, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]

    def codecs_changed(self, room: Room) -> None:
        pass

    def session_first_packet(self, session: Session) -> None:
        pass

    def alive(self) -> list[str]:
        gc.collect()
        return [type(obj).__name__ for ref in self.made if (obj := ref()) is not None]


async def _bare_cycle(rooms: Rooms, number: int) -> None:
    """POST a WHIP offer and a WHEP offer that never connect, then DELETE both."""
    name = f"room-{number}"
    publisher = rooms.open("publisher", name, f"pub-{number}")
    await publisher.open(_whip_offer())
    viewer = rooms.open("subscriber", name, f"view-{number}")
    await viewer.open(_whep_offer())
    await viewer.close("deleted")
    await publisher.close("deleted")


async def _connected_cycle(rooms: Rooms, number: int) -> None:
    """An aiortc publisher and viewer that connect and exchange media, then DELETEs."""
    name = f"live-{number}"
    client_publisher, client_viewer = new_pc(), new_pc()
    try:
        publisher = rooms.open("publisher", name, f"live-pub-{number}")
        answer = await publisher.open(await publisher_offer(client_publisher))
        await accept(client_publisher, answer)
        offer, counter = await viewer_offer(client_viewer)
        viewer = rooms.open("subscriber", name, f"live-view-{number}")
        await accept(client_viewer, await viewer.open(offer))
        await wait_for(lambda: counter.frames["video"] >= 3, timeout=15)
        await viewer.close("deleted")
        await publisher.close("deleted")
    finally:
        await client_viewer.close()
        await client_publisher.close()


async def _settle() -> None:
    """Let aiortc's cancelled tasks finish (they hold their transports until they do)."""
    for _ in range(5):
        await asyncio.sleep(0.05)


async def _run_cycles() -> tuple[list[str], int, int]:
    """(what is still alive, traced bytes after the warm-up, after the measured cycles)."""
    rooms = Rooms()
    # Traced from the start: a free list or dict that grows during the warm-up is then not
    # counted again when the measured cycles reuse it.
    tracemalloc.start(1)
    try:
        for number in range(CONNECTED_CYCLES):
            await _connected_cycle(rooms, number)
        for number in range(WARMUP_CYCLES):
            await _bare_cycle(rooms, number)
        await _settle()
        alive = rooms.alive()
        assert not rooms.rooms
        expected = 2 * (CONNECTED_CYCLES + WARMUP_CYCLES)
        assert rooms.closed == expected, "every session reports its close once"
        rooms.made.clear()
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for number in range(WARMUP_CYCLES, WARMUP_CYCLES + MEASURED_CYCLES):
            await _bare_cycle(rooms, number)
        await _settle()
        alive += rooms.alive()
        rooms.made.clear()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return alive, before, after


def test_closed_sessions_are_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", _loopback_only)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        alive, before, after = runner.run(_run_cycles())
    assert not alive, f"still alive after close and gc: {sorted(set(alive))} ({len(alive)})"
    growth = after - before
    assert growth < GROWTH_BOUND, (
        f"traced memory grew by {growth / 1024:.0f} KiB over {MEASURED_CYCLES} cycles "
        f"({growth / MEASURED_CYCLES:.0f} B a cycle)"
    )
