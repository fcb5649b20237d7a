"""ICE restart (RFC 9725 §4.3) with a real aiortc viewer that moves to a new socket.

The viewer runs on the test's loop (its ICE is restarted from here: testkit/ice_restart.py);
the publisher is a client process; the gateway and worker are real processes. After the
restart the viewer's old socket is closed, so every packet counted afterwards came over the
new pair, through the same DTLS session (no new handshake: aiortc could not do one).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiortc import MediaStreamTrack, RTCSessionDescription

from sfu.sdp import ice_credentials
from testkit import client
from testkit.ice_restart import restart_ice
from testkit.processes import GatewayProcess
from tests.support.clients import spawn_peer


async def _inbound_video_packets(pc: Any) -> int:
    stats = await client.rtp_stats(pc, "inbound-rtp")
    return int(stats.get("video", {}).get("packetsReceived", 0))


@pytest.mark.parametrize("mux", [False, True], ids=["per-session-socket", "udp-mux"])
async def test_viewer_restarts_ice_on_a_new_socket_and_media_continues(
    gateway_factory: Callable[..., GatewayProcess], mux: bool
) -> None:
    env = {"BIND_ADDRESSES": "127.0.0.1"}
    mux_port = free_udp_port()
    if mux:
        env["UDP_MUX_PORT"] = str(mux_port)
    gateway = gateway_factory(workers=1, env=env)
    publisher = spawn_peer("publish", gateway.url, "restart", "--seconds", "7")
    client.allow_loopback_candidates()
    pc = client.new_pc()
    tracks: list[asyncio.Task[Any]] = []

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def drain() -> None:
            while True:
                await track.recv()

        tracks.append(asyncio.ensure_future(drain()))

    try:
        async with aiohttp.ClientSession() as http:
            session = await client.post_offer(
                http,
                client.endpoint(gateway.url, "whep", "restart"),
                await client.viewer_offer(pc),
                None,
                retry_404_for=10,
            )
            await pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
            assert (f" {mux_port} typ host" in session.answer) == mux, session.answer
            assert await client.wait_connected(pc, 10)
            await asyncio.sleep(1.5)
            before = await _inbound_video_packets(pc)
            assert before > 0

            started = time.monotonic()
            result = await restart_ice(pc, http, session.location)
            restart_ms = (time.monotonic() - started) * 1000
            assert result.status == 200, result.fragment
            assert result.etag and result.etag != session.etag
            assert result.new_port != result.old_port
            assert "a=ice-ufrag:" in result.fragment and "a=end-of-candidates" in result.fragment
            assert (f" {mux_port} typ host" in result.fragment) == mux, result.fragment
            assert result.server_ufrag != ice_credentials(session.answer)[0]

            at_restart = await _inbound_video_packets(pc)
            await asyncio.sleep(2.0)
            after = await _inbound_video_packets(pc)
            assert pc.connectionState == "connected"
            # About 60 video packets a second at 640x360: two seconds bring many.
            assert after - at_restart > 50, (before, at_restart, after, restart_ms)

            # The old ETag is stale now; trickle needs the new one.
            frag = {"Content-Type": "application/trickle-ice-sdpfrag"}
            async with http.patch(
                session.location,
                data="a=end-of-candidates\r\n",
                headers={**frag, "If-Match": session.etag or ""},
            ) as response:
                assert response.status == 412
            async with http.patch(
                session.location,
                data="a=end-of-candidates\r\n",
                headers={**frag, "If-Match": result.etag},
            ) as response:
                assert response.status == 204
            await client.delete_session(http, session.location, None)
    finally:
        await pc.close()
        for task in tracks:
            task.cancel()
        await asyncio.gather(*tracks, return_exceptions=True)
    assert publisher.result(timeout=60)["ok"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
