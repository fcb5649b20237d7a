"""The worker's ICE mux (sfu/aiortc_adapter/mux.py) with real aiortc peers over real sockets.

The server side runs on its own uvloop in a thread, as in a worker (the mux's seam is per
loop); the clients are ordinary aiortc peers on the test's loop, each with its own socket.
Hostile datagrams and ICE-TCP frames come from raw sockets.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import aioice.ice
import pytest
import uvloop
from aioice import stun
from aiortc import RTCPeerConnection, RTCSessionDescription

from sfu.aiortc_adapter.mux import IceMux

T = TypeVar("T")
HOST = "127.0.0.1"


class ServerLoop:
    """A worker-like loop in a thread: a mux, and answering peers that echo data channels."""

    def __init__(self, tcp: bool) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.mux = IceMux([HOST], udp_port=0, tcp_port=0 if tcp else None)
        self.bindings = self.call(lambda: self.mux.start(self.loop))
        self.peers: list[RTCPeerConnection] = []

    def call(self, factory: Callable[[], Awaitable[T]]) -> T:
        async def run() -> T:
            return await factory()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=20)

    async def answer(self, offer_sdp: str) -> str:
        async def create() -> str:
            pc = RTCPeerConnection()
            self.peers.append(pc)

            @pc.on("datachannel")
            def on_channel(channel: Any) -> None:
                channel.on("message", channel.send)

            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            return pc.localDescription.sdp

        future = asyncio.run_coroutine_threadsafe(create(), self.loop)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        async def close_all() -> None:
            for pc in self.peers:
                await pc.close()
            await asyncio.sleep(0.05)
            self.mux.close()

        self.call(close_all)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def port(self, protocol: str) -> int:
        return next(b.port for b in self.bindings if b.protocol == protocol)


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerLoop]:
    # Server and clients gather on loopback only (the patch is process-wide; undone after).
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [HOST])
    srv = ServerLoop(tcp=True)
    yield srv
    srv.close()


async def connect_echo_client(server: ServerLoop) -> tuple[RTCPeerConnection, Any, str, str]:
    """A client connected through the mux; returns (pc, channel, server answer, client offer)."""
    pc = RTCPeerConnection()
    channel = pc.createDataChannel("echo")
    opened = asyncio.Event()
    channel.on("open", opened.set)
    await pc.setLocalDescription(await pc.createOffer())
    answer = await server.answer(pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await asyncio.wait_for(opened.wait(), 10)
    return pc, channel, answer, pc.localDescription.sdp


async def echo(channel: Any, text: str) -> str:
    got: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_message(message: Any) -> None:
        if not got.done():
            got.set_result(message)

    channel.on("message", on_message)
    try:
        channel.send(text)
        return await asyncio.wait_for(got, 5)
    finally:
        channel.remove_listener("message", on_message)


def ice_credentials(sdp: str) -> tuple[str, str]:
    ufrag = re.search(r"a=ice-ufrag:(\S+)", sdp)
    pwd = re.search(r"a=ice-pwd:(\S+)", sdp)
    assert ufrag and pwd
    return ufrag.group(1), pwd.group(1)


def binding_request(server_sdp: str, client_sdp: str, password: str | None = None) -> bytes:
    server_ufrag, server_pwd = ice_credentials(server_sdp)
    client_ufrag, _ = ice_credentials(client_sdp)
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{server_ufrag}:{client_ufrag}"
    request.attributes["PRIORITY"] = 1853824767
    request.attributes["ICE-CONTROLLING"] = 1
    request.add_message_integrity((password or server_pwd).encode())
    request.add_fingerprint()
    return bytes(request)


def udp_exchange(port: int, payload: bytes, wait: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(wait)
        sock.sendto(payload, (HOST, port))
        try:
            return sock.recv(2048)
        except TimeoutError:
            return None


def candidates(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


async def test_sessions_share_one_udp_port_and_each_gets_its_own_data(server: ServerLoop) -> None:
    port = server.port("udp")
    clients = [await connect_echo_client(server) for _ in range(3)]
    for index, (_pc, channel, answer, _offer) in enumerate(clients):
        udp = [c for c in candidates(answer) if " udp " in c.lower()]
        assert udp and all(f" {port} typ host" in c for c in udp), udp
        assert await echo(channel, f"hello {index}") == f"hello {index}"
    assert server.mux.route_count >= 3
    for pc, *_ in clients:
        await pc.close()
    # The server side notices the closed peers only by consent failure; close it ourselves.
    server.call(lambda: asyncio.gather(*(pc.close() for pc in server.peers)))
    await asyncio.sleep(0.1)
    assert server.mux.route_count == 0
    assert not any(mux.sessions.by_ufrag for mux in server.mux._udp.values())


async def test_hostile_datagrams_are_counted_and_live_sessions_carry_on(server: ServerLoop) -> None:
    pc, channel, answer, offer = await connect_echo_client(server)
    port = server.port("udp")
    before = server.mux.counters()
    junk = [os.urandom(size) for size in (1, 19, 20, 200, 1200)]
    rtp_like = bytes([0x80, 96]) + os.urandom(150)
    unknown = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    unknown.attributes["USERNAME"] = "nobody:x"
    unknown.add_message_integrity(b"whatever")
    wrong_password = binding_request(answer, offer, password="not-the-password-at-all")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for payload in [*junk, rtp_like, bytes(unknown), wrong_password] * 20:
            sock.sendto(payload, (HOST, port))
    await asyncio.sleep(0.3)
    after = server.mux.counters()
    assert after["unknown_username"] - before["unknown_username"] == 20
    assert after["bad_integrity"] - before["bad_integrity"] == 20
    assert after["unknown_address"] - before["unknown_address"] >= 20 * 3  # rtp + junk
    assert await echo(channel, "still here") == "still here"
    await pc.close()


async def test_a_new_address_is_routed_only_after_an_authenticated_request(
    server: ServerLoop,
) -> None:
    pc, channel, answer, offer = await connect_echo_client(server)
    port = server.port("udp")
    loop = asyncio.get_running_loop()
    # A forged request (wrong password) from a new address gets nothing back ...
    forged = binding_request(answer, offer, password="0123456789012345678901")
    assert await loop.run_in_executor(None, udp_exchange, port, forged) is None
    # ... and the session's real credentials from a new address (a NAT rebinding) are
    # answered: the mux routed the address to the session, and aioice replied.
    reply = await loop.run_in_executor(None, udp_exchange, port, binding_request(answer, offer))
    assert reply is not None
    response = stun.parse_message(reply)
    assert response.message_class == stun.Class.RESPONSE
    assert await echo(channel, "after rebinding") == "after rebinding"
    await pc.close()


async def test_answer_offers_a_passive_tcp_candidate_after_the_udp_ones(server: ServerLoop) -> None:
    pc, _channel, answer, _offer = await connect_echo_client(server)
    lines = candidates(answer)
    tcp = [i for i, c in enumerate(lines) if " tcp " in c.lower()]
    udp = [i for i, c in enumerate(lines) if " udp " in c.lower()]
    assert tcp and udp and max(udp) < min(tcp), lines
    tcp_line = lines[tcp[0]]
    assert f" {server.port('tcp')} typ host tcptype passive" in tcp_line
    tcp_priority = int(tcp_line.split()[3])
    assert all(int(lines[i].split()[3]) > tcp_priority for i in udp)
    await pc.close()


def tcp_exchange(port: int, frames: list[bytes], wait: float = 2.0) -> bytes:
    with socket.create_connection((HOST, port), timeout=wait) as sock:
        for frame in frames:
            sock.sendall(len(frame).to_bytes(2, "big") + frame)
        try:
            return sock.recv(4096)
        except TimeoutError:
            return b"timeout"


async def test_ice_tcp_answers_an_authenticated_request_and_refuses_the_rest(
    server: ServerLoop,
) -> None:
    pc, _channel, answer, offer = await connect_echo_client(server)
    port = server.port("tcp")
    loop = asyncio.get_running_loop()
    reply = await loop.run_in_executor(None, tcp_exchange, port, [binding_request(answer, offer)])
    length = int.from_bytes(reply[:2], "big")
    assert len(reply) >= 2 + length > 2, reply
    assert stun.parse_message(reply[2 : 2 + length]).message_class == stun.Class.RESPONSE
    refused = server.mux.counters()["tcp_refused"]
    # Garbage first: the connection is closed at once (recv returns b"").
    assert await loop.run_in_executor(None, tcp_exchange, port, [os.urandom(64)]) == b""
    forged = binding_request(answer, offer, password="0123456789012345678901")
    assert await loop.run_in_executor(None, tcp_exchange, port, [forged]) == b""
    assert server.mux.counters()["tcp_refused"] == refused + 2
    await pc.close()


async def test_binding_a_port_in_use_names_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        port = taken.getsockname()[1]
        mux = IceMux([HOST], udp_port=port, tcp_port=None)
        with pytest.raises(OSError, match=f"cannot bind UDP {HOST}:{port}"):
            await mux.start(asyncio.get_running_loop())


async def test_a_tcp_peer_that_does_not_read_loses_packets_instead_of_stalling(
    server: ServerLoop,
) -> None:
    pc, channel, answer, offer = await connect_echo_client(server)
    port = server.port("tcp")
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
    stalled.settimeout(2)
    stalled.connect((HOST, port))
    try:
        request = binding_request(answer, offer)
        stalled.sendall(len(request).to_bytes(2, "big") + request)
        stalled.recv(2)  # the response has started: the connection is the session's now

        async def flood() -> tuple[int, float]:
            # The TCP protocol the mux appended to the session's ICE connection (a data
            # channel peer: its one transport is the SCTP association's).
            sctp = server.peers[0].sctp
            assert sctp is not None
            ice = sctp.transport.transport._connection
            tcp = [p for p in ice._protocols if p.local_candidate.transport == "tcp"]
            assert len(tcp) == 1
            peer = tcp[0].transport.get_extra_info("peername")
            started = time.monotonic()
            for _ in range(3000):  # 3.6 MB at once: far beyond the kernel's and our queues
                tcp[0].transport.sendto(b"\x80" * 1200, peer)
            return server.mux.counters()["tcp_send_dropped"], time.monotonic() - started

        dropped, spent = server.call(flood)
        # 256 KiB in our queue and about as much in the kernel's: some 400 datagrams.
        assert dropped > 2000, dropped
        assert spent < 1.0, spent  # the sender never waited on the slow peer
        assert await echo(channel, "others unaffected") == "others unaffected"
    finally:
        stalled.close()
        await pc.close()
