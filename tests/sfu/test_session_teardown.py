"""A session whose opening failed is released whatever aiortc does while closing it.

Before the hardening, a WHIP offer with a second a=mid made aiortc raise in createAnswer and
then in RTCPeerConnection.close(); the half-open publisher stayed in its room. Offer
validation now refuses those offers before aiortc sees them, so no offer is known to make
close() raise any more: here it is made to raise by replacing it (the one thing mocked), on
a real session that gathered a real UDP socket.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import aioice.ice
import pytest

from sfu.room import Room, Unobserved
from sfu.session import Session, SessionSettings
from tests.interop.sdp_offers import CHROME_AUDIO, CHROME_VIDEO, Section, browser_offer, only


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    yield


def _sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count


class Events(Unobserved):
    def __init__(self) -> None:
        self.closed: list[str] = []

    def session_closed(self, session: Session, reason: str) -> None:
        self.closed.append(reason)


async def test_abort_frees_the_ports_even_when_close_raises() -> None:
    events = Events()
    room = Room("r", SessionSettings(connect_timeout=10.0, public_ip=None), events)
    before = _sockets()
    session = room.open_session("publisher", "s1")
    offer = browser_offer(
        [
            Section("audio", formats=only(CHROME_AUDIO, "opus")),
            Section("video", formats=only(CHROME_VIDEO, "VP8")),
        ]
    )
    answer = await session.open(offer)
    assert "a=candidate:" in answer
    assert _sockets() > before  # the session holds its UDP socket

    async def close_that_raises() -> None:
        raise AttributeError("'NoneType' object has no attribute 'transport'")

    session.pc.close = close_that_raises  # type: ignore[method-assign]  # aiortc failing
    await session.abort()
    assert session.closed
    assert _sockets() == before
    assert events.closed == []  # abort does not report: the gateway was never told of it
    await session.close("deleted")  # idempotent, and reports nothing after an abort
    assert events.closed == []
