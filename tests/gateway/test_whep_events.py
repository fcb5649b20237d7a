"""The WHEP server-sent events extension, on real gateways with aiortc peers in this process."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from testkit.client import new_pc, publisher_offer, viewer_offer
from testkit.processes import GatewayProcess

EXTENSION = "urn:ietf:params:whep:ext:core:server-sent-events"
SDP = {"Content-Type": "application/sdp"}
JSON = {"Content-Type": "application/json"}

pytestmark = pytest.mark.timeout(60)


class Sse:
    """The events of one open text/event-stream response, parsed as they come."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.events: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        name, data = "message", ""
        try:
            async for raw in self.response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line[len("event: ") :]
                elif line.startswith("data: "):
                    data = line[len("data: ") :]
                elif not line and data:
                    self.events.put_nowait((name, json.loads(data)))
                    name, data = "message", ""
        except aiohttp.ClientPayloadError:
            pass
        finally:
            self.events.put_nowait(None)  # the end of the stream

    async def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]] | None:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def until(self, name: str, timeout: float = 10.0, **data: Any) -> list[str]:
        """Read until event `name` (with `data`, if given); the names seen before it."""
        seen: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                assert event is not None, f"the stream ended before {name} (saw {seen})"
                if event[0] == name and all(event[1].get(k) == v for k, v in data.items()):
                    return seen
                seen.append(event[0])

    async def ended(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while await self.events.get() is not None:
                pass


@pytest.fixture
async def pcs() -> AsyncIterator[list[RTCPeerConnection]]:
    created: list[RTCPeerConnection] = []
    yield created
    for pc in created:
        await pc.close()


async def wait_connected(pc: RTCPeerConnection, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while pc.connectionState != "connected":  # noqa: ASYNC110 (aiortc: no event)
            await asyncio.sleep(0.05)


async def open_session(
    http: aiohttp.ClientSession,
    base: str,
    kind: str,
    room: str,
    pcs: list[RTCPeerConnection],
    connect: bool = True,
) -> tuple[str, aiohttp.ClientResponse]:
    """A WHIP or WHEP session from an aiortc peer; its Location and the 201."""
    pc = new_pc()
    pcs.append(pc)
    if kind == "whip":
        offer, path = await publisher_offer(pc), f"/api/whip/publish/{room}"
    else:
        offer, path = await viewer_offer(pc), f"/api/whep/play/{room}"
    async with http.post(base + path, data=offer, headers=SDP) as response:
        assert response.status == 201, await response.text()
        answer = await response.text()
    if connect:
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await wait_connected(pc)
    return response.headers["Location"], response


def events_link(response: aiohttp.ClientResponse) -> tuple[str, list[str]]:
    links = [link for link in response.headers.getall("Link", []) if EXTENSION in link]
    assert len(links) == 1, response.headers.getall("Link", [])
    url, *params = (part.strip() for part in links[0].split(";"))
    attributes = dict(param.split("=", 1) for param in params)
    assert attributes["rel"] == f'"{EXTENSION}"'
    return url.strip("<>"), attributes["events"].strip('"').split(",")


async def create_stream(http: aiohttp.ClientSession, base: str, url: str, events: Any) -> str:
    async with http.post(base + url, data=json.dumps(events), headers=JSON) as response:
        assert response.status == 201, await response.text()
        return response.headers["Location"]


async def error_of(
    http: aiohttp.ClientSession, url: str, body: bytes, ctype: str
) -> tuple[int, str]:
    async with http.post(url, data=body, headers={"Content-Type": ctype}) as response:
        return response.status, (await response.json())["code"]


async def test_events_from_link_to_end(
    gateway_factory: Callable[..., GatewayProcess],
    http: aiohttp.ClientSession,
    pcs: list[RTCPeerConnection],
) -> None:
    base = gateway_factory(workers=1).url
    publisher, whip_201 = await open_session(http, base, "whip", "ev", pcs)
    assert not any(EXTENSION in link for link in whip_201.headers.getall("Link", []))
    viewer, whep_201 = await open_session(http, base, "whep", "ev", pcs)
    url, offered = events_link(whep_201)
    assert url == viewer + "/events"
    assert sorted(offered) == ["active", "inactive", "reconnect", "viewercount"]

    # Refusals name the problem and create nothing.
    assert await error_of(http, base + url, b'["active","layers"]', "application/json") == (
        400,
        "unsupported_event",
    )
    assert await error_of(http, base + url, b"[active", "application/json") == (400, "bad_json")
    assert await error_of(http, base + url, b'{"a": 1}', "application/json") == (
        400,
        "bad_event_list",
    )
    assert await error_of(http, base + url, b'["active"]', "text/plain") == (
        415,
        "unsupported_media_type",
    )
    assert await error_of(
        http, base + url, b'["active"' + b"," * 4000 + b"]", "application/json"
    ) == (
        413,
        "body_too_large",
    )
    async with http.post(base + "/api/whep/session/nope/events", json=["active"]) as response:
        assert response.status == 404

    location = await create_stream(http, base, url, ["active", "inactive", "viewercount"])
    assert location.startswith(url + "/")
    async with http.get(base + location) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        sse = Sse(response)
        # The publisher is connected: `active` first, with the current viewer count.
        assert await sse.next() == ("active", {})
        assert await sse.next() == ("viewercount", {"viewercount": 1})
        second, _ = await open_session(http, base, "whep", "ev", pcs)
        await sse.until("viewercount", viewercount=2)
        async with http.delete(base + second) as deleted:
            assert deleted.status == 200
        await sse.until("viewercount", viewercount=1)
        async with http.delete(base + publisher) as deleted:
            assert deleted.status == 200
        assert "active" not in await sse.until("inactive")
        async with http.get(base + location) as busy:  # one reader at a time
            assert busy.status == 409
        async with http.delete(base + location) as deleted:
            assert deleted.status == 200
        await sse.ended()
    async with http.get(base + location) as response:
        assert response.status == 404

    # Broadcast Box style: a GET on the events URL itself streams every offered event; the
    # stream ends with its session.
    async with http.get(base + url) as response:
        assert response.status == 200
        sse = Sse(response)
        assert await sse.next() == ("viewercount", {"viewercount": 1})  # no initial inactive
        async with http.delete(base + viewer) as deleted:
            assert deleted.status == 200
        await sse.ended()
    async with http.post(base + url, json=["active"]) as response:
        assert response.status == 404


async def test_stream_limit_per_session(
    gateway_factory: Callable[..., GatewayProcess],
    http: aiohttp.ClientSession,
    pcs: list[RTCPeerConnection],
) -> None:
    base = gateway_factory(workers=1).url
    await open_session(http, base, "whip", "lim", pcs, connect=False)
    _, whep_201 = await open_session(http, base, "whep", "lim", pcs, connect=False)
    url, _ = events_link(whep_201)
    locations = [await create_stream(http, base, url, ["viewercount"]) for _ in range(4)]
    assert len(set(locations)) == 4
    async with http.post(base + url, json=["viewercount"]) as response:
        assert response.status == 429
        assert (await response.json())["code"] == "too_many_event_streams"
    async with http.delete(base + locations[0]) as response:
        assert response.status == 200
    await create_stream(http, base, url, ["viewercount"])


async def test_drain_sends_reconnect(
    gateway_factory: Callable[..., GatewayProcess],
    http: aiohttp.ClientSession,
    pcs: list[RTCPeerConnection],
) -> None:
    gateway = gateway_factory(workers=1, env={"DRAIN_TIMEOUT": "10"})
    base = gateway.url
    publisher, _ = await open_session(http, base, "whip", "dr", pcs, connect=False)
    viewer, whep_201 = await open_session(http, base, "whep", "dr", pcs, connect=False)
    url, _ = events_link(whep_201)
    location = await create_stream(http, base, url, ["reconnect"])
    async with http.get(base + location) as response:
        sse = Sse(response)
        await asyncio.sleep(0.2)
        assert sse.events.empty()  # nothing asked for has happened yet
        gateway.process.send_signal(signal.SIGTERM)
        assert await sse.next() == ("reconnect", {"url": "/api/whep/play/dr"})
        # The session lives on through the drain; the client leaves when it wants to.
        async with http.get(base + viewer) as alive:
            assert alive.status == 204
        for session in (viewer, publisher):
            async with http.delete(base + session) as deleted:
                assert deleted.status == 200
        await sse.ended()
    assert await asyncio.to_thread(gateway.process.wait, 10) == 0
