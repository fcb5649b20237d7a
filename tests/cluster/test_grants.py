"""Credentials across a redirect (issue 13, follow-up): signed redirect grants.

Three nodes with ROOM_TOKENS and one NODE_TOKEN; node c also asks an auth hook (which then
decides there instead of its tokens). Clients drop `Authorization` on a redirect to another
host; the redirecting node, which checked the credential, puts a grant signed with
NODE_TOKEN into the 307's Location, and the target takes it instead (gateway/cluster/grant.py).
Also: the WHEP events URL of a session held elsewhere is answered 307 to the holder, and a
Chromium player page on c plays a room of b through the redirect (fetch across origins).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from playwright.sync_api import BrowserContext
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from gateway.cluster.grant import sign_grant
from tests.browser.pages import open_page, wait_decoding
from tests.cluster.conftest import NODES, Node, RedisServer, start_node
from tests.support.clients import PeerProcess

ROOM = "stage"
HOOKED = "hooked"  # a room whose POSTs to c are decided by c's auth hook
SCREEN = "screen"  # the Chromium player's room
PUBLISH = "stage-publish-token-0123456789"
PLAY = "stage-play-token-0123456789"
HOOK_ONLY = "known-to-the-hook-only-0123456789"  # no node's ROOM_TOKENS has it
NODE_TOKEN = "node-token-for-grants-0123456789"
UNKNOWN = "a-token-nobody-knows-0123456789"
ROOM_TOKENS = ";".join(
    (
        f"{ROOM}:{PUBLISH}:publish",
        f"{ROOM}:{PLAY}:play",
        f"{HOOKED}:{PUBLISH}:publish",
        f"{SCREEN}:{PUBLISH}:publish",
        f"{SCREEN}:{PLAY}:play",
    )
)
SDP = {"Content-Type": "application/sdp"}


class HookServer:
    """An auth hook on 127.0.0.1 that allows HOOK_ONLY, PUBLISH and PLAY (for any room and
    action), and records each call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        allowed = {hashlib.sha256(t.encode()).hexdigest() for t in (HOOK_ONLY, PUBLISH, PLAY)}
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                calls.append(body)
                self.send_response(200 if body.get("token_sha256") in allowed else 403)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/auth"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def hook() -> Iterator[HookServer]:
    server = HookServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, hook: HookServer
) -> Iterator[dict[str, Node]]:
    """Nodes a, b, c with ROOM_TOKENS and NODE_TOKEN; c asks the auth hook too."""
    log_dir = tmp_path_factory.mktemp("secured")
    base = {"ROOM_TOKENS": ROOM_TOKENS, "NODE_TOKEN": NODE_TOKEN}
    nodes: dict[str, Node] = {}
    try:
        for node_id in NODES:
            env = {**base, **({"AUTH_HOOK_URL": hook.url} if node_id == "c" else {})}
            nodes[node_id] = start_node(log_dir, redis_server, node_id, wait=False, env=env)
        for node in nodes.values():
            node.gateway.wait_ready()
        time.sleep(1.2)  # every node has read every other's record
        yield nodes
    finally:
        for node in nodes.values():
            node.gateway.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post(
    http: aiohttp.ClientSession,
    url: str,
    body: str,
    token: str | None = None,
    follow: bool = True,
) -> tuple[int, dict[str, str], str, list[str]]:
    """(status, headers, body, the Locations of the redirects it followed)."""
    headers = {**SDP, **(bearer(token) if token else {})}
    async with http.post(url, data=body, headers=headers, allow_redirects=follow) as response:
        return (
            response.status,
            dict(response.headers),
            await response.text(),
            [r.headers.get("Location", "") for r in response.history],
        )


async def delete(http: aiohttp.ClientSession, location: str) -> None:
    async with http.delete(location) as response:
        assert response.status == 200


async def home_on(redis_client: Redis, room: str, node_id: str) -> None:
    """Make `node_id` the room's home in the directory (as a claim by it would)."""
    await redis_client.set(f"live-sfu:room:{room}", node_id, px=60_000)


def grant_of(location: str) -> str:
    return parse_qs(urlsplit(location).query)["grant"][0]


async def test_a_redirected_publisher_and_a_play_only_viewer_get_in_with_the_grant(
    secured: dict[str, Node],
    http: aiohttp.ClientSession,
    redis_client: Redis,
    offers: dict[str, str],
    peers: Callable[..., PeerProcess],
) -> None:
    a, b = secured["a"], secured["b"]
    await home_on(redis_client, ROOM, "b")
    endpoint = f"{a.url}/api/whip/publish/{ROOM}"
    # A checks the credential, then answers 307 to b with a grant for exactly this.
    status, headers, _, _ = await post(http, endpoint, offers["publisher"], PUBLISH, False)
    assert status == 307, status
    location = headers["Location"]
    assert location.startswith(f"{b.url}/api/whip/publish/{ROOM}?node=b&grant="), location
    grants = [grant_of(location)]
    # What a client that drops Authorization got before grants: 401 at b.
    status, _, body, _ = await post(http, location.split("&grant=")[0], offers["publisher"])
    assert status == 401 and json.loads(body)["code"] == "unauthorized", body
    # A play-only token may not publish: refused on a, never redirected.
    status, _, body, hops = await post(http, endpoint, offers["publisher"], PLAY, False)
    assert (status, hops) == (403, []), body

    publisher = peers("publish", a.url, ROOM, "--token", PUBLISH, "--seconds", "5")
    viewer = peers(
        "view",
        a.url,
        ROOM,
        "--token",
        PLAY,
        "--seconds",
        "4",
        "--min-video-frames",
        "20",
        "--stop-when-satisfied",
    )
    # Meanwhile the events URL: a viewer's session is on b, its events URL asked of a.
    status, headers, _, hops = await post(
        http, f"{a.url}/api/whep/play/{ROOM}", offers["viewer"], PLAY
    )
    deadline = time.monotonic() + 10
    while status == 404 and time.monotonic() < deadline:  # the publisher is on its way
        await asyncio.sleep(0.2)
        status, headers, _, hops = await post(
            http, f"{a.url}/api/whep/play/{ROOM}", offers["viewer"], PLAY
        )
    assert status == 201 and len(hops) == 1, status
    grants.append(grant_of(hops[0]))
    session = headers["Location"]
    assert session.startswith(f"{b.url}/api/whep/session/b."), session
    try:
        await events_are_redirected(http, secured, urlsplit(session).path)
    finally:
        await delete(http, session)

    published = await asyncio.to_thread(publisher.result, 60)
    watched = await asyncio.to_thread(viewer.result, 60)
    assert published["ok"], published
    assert published["location"].startswith(f"{b.url}/api/whip/session/b."), published
    assert watched["ok"] and watched["video_frames"] >= 20, watched
    assert watched["location"].startswith(f"{b.url}/api/whep/session/b."), watched
    # No grant in any log; the access log shows the parameter's name only.
    for node in secured.values():
        text = node.gateway.log()
        assert all(grant[:40] not in text for grant in grants if grant)
    assert "grant=REDACTED" in b.gateway.log()


async def events_are_redirected(
    http: aiohttp.ClientSession, nodes: dict[str, Node], path: str
) -> None:
    """The events URL (…/events) and an event stream's URL of a session held on b, asked of
    a: 307 to b like PATCH/DELETE; with the hop marker, 404."""
    a, b = nodes["a"], nodes["b"]
    async with http.get(a.url + path + "/events", allow_redirects=False) as response:
        assert response.status == 307
        assert response.headers["Location"] == f"{b.url}{path}/events?node=b"
    async with http.post(
        a.url + path + "/events",
        data=json.dumps(["active", "viewercount"]),
        headers={"Content-Type": "application/json"},
    ) as response:
        assert response.status == 201 and len(response.history) == 1
        stream = response.headers["Location"]  # relative: resolved against b
        assert str(response.url).startswith(b.url)
    async with http.get(a.url + stream, allow_redirects=False) as response:
        assert response.status == 307
        assert response.headers["Location"] == f"{b.url}{stream}?node=b"
    async with http.get(b.url + stream) as response:
        assert response.status == 200
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
        # `active` first if the publisher is connected yet, else `viewercount`.
        assert first.startswith((b"event: active", b"event: viewercount")), first
    async with http.delete(a.url + stream) as response:  # followed: 200 from b
        assert response.status == 200 and len(response.history) == 1
    async with http.get(a.url + path + "/events?node=a", allow_redirects=False) as response:
        assert response.status == 404  # the hop marker: never redirected again


async def test_forged_expired_and_misdirected_grants_are_refused(
    secured: dict[str, Node], http: aiohttp.ClientSession
) -> None:
    b = secured["b"]
    now = time.time()

    def grant(room: str = ROOM, right: str = "publish", node: str = "b", at: float = now) -> str:
        return sign_grant(NODE_TOKEN, room, right, node, now=at)  # type: ignore[arg-type]

    valid = grant()
    payload, signature = valid.split(".")
    forged = grant(room=HOOKED).split(".")[0] + "." + signature
    cases = {
        "invalid_grant": [
            forged,
            payload + "." + signature[::-1],
            sign_grant("another-node-token-0123456789", ROOM, "publish", "b"),
        ],
        "grant_expired": [grant(at=now - 120)],
        "grant_other_node": [grant(node="c")],
        "grant_other_room": [grant(room=HOOKED)],
        "grant_other_right": [grant(right="play")],
    }
    for code, presented in cases.items():
        for value in presented:
            url = f"{b.url}/api/whip/publish/{ROOM}?node=b&grant={value}"
            status, headers, body, _ = await post(http, url, "v=0\r\n")
            assert status == 401, (code, status, body)
            assert json.loads(body)["code"] == code, body
            assert headers["WWW-Authenticate"].startswith("Bearer")
    # A valid grant is taken once: the first POST passes the credential check (then its
    # offer is refused), the same grant again is 401.
    status, _, body, _ = await post(http, f"{b.url}/api/whip/publish/{ROOM}?grant={valid}", "x")
    assert status == 400 and json.loads(body)["code"] == "bad_offer", body
    status, _, body, _ = await post(http, f"{b.url}/api/whip/publish/{ROOM}?grant={valid}", "x")
    assert status == 401 and json.loads(body)["code"] == "grant_used", body
    assert grant_count(b, "grant_used") == 1 and grant_count(b, "invalid_grant") == 3
    message = json.loads(
        (await post(http, f"{b.url}/api/whip/publish/{ROOM}?grant=" + grant(node="c"), "x"))[2]
    )["error"]
    assert "'c'" in message and "'b'" in message  # it names the node it was for


async def test_the_auth_hook_decides_on_the_first_node_and_the_grant_stands_for_it(
    secured: dict[str, Node],
    http: aiohttp.ClientSession,
    redis_client: Redis,
    offers: dict[str, str],
    hook: HookServer,
) -> None:
    b, c = secured["b"], secured["c"]
    await home_on(redis_client, HOOKED, "b")
    # b does not know the token: without a grant it refuses it.
    status, _, body, _ = await post(
        http, f"{b.url}/api/whip/publish/{HOOKED}?node=b", offers["publisher"], HOOK_ONLY
    )
    assert status == 401, body
    hook.calls.clear()
    status, headers, body, hops = await post(
        http, f"{c.url}/api/whip/publish/{HOOKED}", offers["publisher"], HOOK_ONLY
    )
    assert status == 201 and len(hops) == 1, (status, body)
    assert headers["Location"].startswith(f"{b.url}/api/whip/session/b.")
    assert [(call["action"], call["room"]) for call in hook.calls] == [("publish", HOOKED)]
    await delete(http, headers["Location"])
    # The hook refuses another token on c: no redirect, no grant.
    status, _, _, hops = await post(
        http, f"{c.url}/api/whip/publish/{HOOKED}", offers["publisher"], UNKNOWN, False
    )
    assert (status, hops) == (403, [])


def grant_count(node: Node, result: str) -> float:
    """live_redirect_grants_total{result} on `node`."""
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = rf'^live_redirect_grants_total\{{result="{result}"\}} ([0-9.e+-]+)$'
    match = re.search(pattern, text, re.M)
    assert match is not None, text[-2000:]
    return float(match.group(1))


def b_rooms(node: Node) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"{node.url}/api/rooms", timeout=5) as response:
        return {room["name"]: room for room in json.load(response)}


@pytest.mark.browser
def test_a_chromium_player_on_c_plays_a_room_of_b_through_the_redirect(
    secured: dict[str, Node],
    redis_server: RedisServer,
    browser_context: BrowserContext,
    peers: Callable[..., PeerProcess],
    hook: HookServer,
) -> None:
    """play.html served by c POSTs to c; fetch follows the 307 to b (another origin: CORS
    there, Authorization dropped, the grant instead) and plays b's room."""
    a, b, c = secured["a"], secured["b"], secured["c"]
    directory = SyncRedis.from_url(redis_server.url, decode_responses=True)
    try:
        directory.set(f"live-sfu:room:{SCREEN}", "b", px=60_000)
    finally:
        directory.close()
    accepted_before = grant_count(b, "accepted")
    publisher = peers("publish", a.url, SCREEN, "--token", PUBLISH, "--seconds", "6")
    deadline = time.monotonic() + 10
    while not b_rooms(b).get(SCREEN, {}).get("hasPublisher"):  # play.html does not retry
        assert time.monotonic() < deadline, b_rooms(b)
        time.sleep(0.1)
    console: list[str] = []
    player = open_page(
        browser_context, f"{c.url}/web/play.html?room={SCREEN}&token={PLAY}", console
    )
    wait_decoding(player, more_frames=10)
    assert ("play", SCREEN) in [(call["action"], call["room"]) for call in hook.calls]
    assert b_rooms(b)[SCREEN]["node"] == "b"
    # b took two grants: the aiortc publisher's (via a) and the page's (via c), which fetch
    # carried across origins (Chromium drops Authorization there; b judges the grant alone).
    assert grant_count(b, "accepted") == accepted_before + 2
    player.close()
    assert publisher.result(60)["ok"]
    assert not [line for line in console if ": error: " in line], console
