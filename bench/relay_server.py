"""Baseline only: what a Python user gets from aiortc's stock MediaRelay.

A one-process WHIP/WHEP server on the same paths as sfu-gateway. Each published track is
decoded once and re-encoded for every viewer (MediaRelay hands decoded frames to one
encoder per subscribing peer connection). bench/load.py starts it, publishes to it with a
real encoder (testkit/client.py) and measures this process's CPU per viewer.

    python -m bench.relay_server --port 8090
"""

from __future__ import annotations

import argparse
import asyncio
import secrets

import uvloop
from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole, MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from sfu import aiortc_adapter as adapter


class RelayServer:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.tracks: dict[str, dict[str, MediaStreamTrack]] = {}
        self.sessions: dict[str, RTCPeerConnection] = {}
        self.blackholes: list[MediaBlackhole] = []

    async def whip(self, request: web.Request) -> web.Response:
        room = request.match_info["room"]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        tracks = self.tracks.setdefault(room, {})

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            tracks[track.kind] = track
            # Keep the source drained while nobody watches, as a live relay must; otherwise
            # aiortc queues decoded frames and the first viewer gets stale ones.
            blackhole = MediaBlackhole()
            blackhole.addTrack(self.relay.subscribe(track))
            self.blackholes.append(blackhole)
            asyncio.ensure_future(blackhole.start())

        await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
        return await self._created(pc)

    async def whep(self, request: web.Request) -> web.Response:
        tracks = self.tracks.get(request.match_info["room"])
        if not tracks:
            raise web.HTTPNotFound(text="no such room")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
        for track in tracks.values():
            pc.addTrack(self.relay.subscribe(track))
        return await self._created(pc)

    async def _created(self, pc: RTCPeerConnection) -> web.Response:
        await pc.setLocalDescription(await pc.createAnswer())
        session = secrets.token_urlsafe(12)
        self.sessions[session] = pc
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": f"/api/session/{session}"},
        )

    async def delete(self, request: web.Request) -> web.Response:
        pc = self.sessions.pop(request.match_info["session"], None)
        if pc is None:
            raise web.HTTPNotFound()
        await pc.close()
        return web.Response(status=200)

    async def room(self, request: web.Request) -> web.Response:
        tracks = self.tracks.get(request.match_info["room"], {})
        return web.json_response(sorted(tracks))

    async def close(self, app: web.Application) -> None:
        for blackhole in self.blackholes:
            await blackhole.stop()
        for pc in self.sessions.values():
            await pc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    adapter.restrict_host_addresses(["127.0.0.1"])
    server = RelayServer()
    app = web.Application()
    app.router.add_post("/api/whip/publish/{room}", server.whip)
    app.router.add_post("/api/whep/play/{room}", server.whep)
    app.router.add_delete("/api/session/{session}", server.delete)
    app.router.add_get("/rooms/{room}", server.room)
    app.on_shutdown.append(server.close)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
