"""Three nodes sharing a room directory in Redis (issue 13, first part): 307 redirects to the
node that holds a room or a session, one owner per room, expiry of a killed node, Redis
stopped and restarted, a node that stops gives its rooms up.

The tests share one module cluster (tests/cluster/conftest.py) and run in file order; the
destructive ones (Redis stopped, a node killed, a node stopped) come last.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import statistics
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from redis.asyncio import Redis

from testkit.processes import pick_free_port, run_gateway_cli
from tests.cluster.conftest import ADMIN, Node, RedisServer, start_node
from tests.support.clients import PeerProcess

SDP = {"Content-Type": "application/sdp"}


def node_of(url: str, cluster: dict[str, Node]) -> str:
    """The id of the node whose base URL `url` starts with."""
    for node_id, node in cluster.items():
        if url.startswith(node.url + "/"):
            return node_id
    raise AssertionError(f"{url} is on no node")


async def metric(http: aiohttp.ClientSession, node: Node, name: str, labels: str = "") -> float:
    async with http.get(node.url + "/metrics") as response:
        text = await response.text()
    pattern = re.escape(name) + (r"\{" + labels + r"[^}]*\}" if labels else r"(?:\{[^}]*\})?")
    match = re.search(rf"^{pattern} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def rooms(http: aiohttp.ClientSession, node: Node) -> dict[str, str]:
    """/api/rooms on `node`: room -> its node."""
    async with http.get(node.url + "/api/rooms") as response:
        assert response.status == 200
        return {room["name"]: room["node"] for room in await response.json()}


async def home_of(http: aiohttp.ClientSession, node: Node, room: str, within: float = 8) -> str:
    """The room's node as `node`'s /api/rooms lists it, once it does (a room of another node
    appears after that node's next heartbeat, then this one's)."""
    deadline = time.monotonic() + within
    while (home := (await rooms(http, node)).get(room)) is None:
        assert time.monotonic() < deadline, f"{room} not listed on {node.node_id}"
        await asyncio.sleep(0.1)
    return home


async def post(
    http: aiohttp.ClientSession, url: str, offer: str, follow: bool = True
) -> tuple[int, dict[str, str], str, list[str]]:
    """(status, headers, body, the URLs it was redirected through)."""
    async with http.post(url, data=offer, headers=SDP, allow_redirects=follow) as response:
        body = await response.text()
        hops = [str(r.url) for r in response.history]
        return response.status, dict(response.headers), body, hops


async def delete(http: aiohttp.ClientSession, location: str) -> int:
    async with http.delete(location) as response:
        return response.status


def test_redis_url_without_node_url_exits_2_with_one_line() -> None:
    result = run_gateway_cli("--workers", "0", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sfu-gateway: REDIS_URL is set but NODE_URL is not (the public base URL of this node)"
    ]
    hidden = run_gateway_cli("--workers", "0", env={"REDIS_URL": "ftp://user:pw@x"})
    assert hidden.returncode == 2 and "pw" not in hidden.stderr


async def test_whip_redirected_to_the_home_node_and_a_viewer_on_a_third_node(
    cluster: dict[str, Node],
    http: aiohttp.ClientSession,
    offers: dict[str, str],
    peers: Callable[..., PeerProcess],
) -> None:
    a = cluster["a"]
    # A session on a: the least loaded node for the next room is another one (b, by id).
    status, headers, _, hops = await post(
        http, a.url + "/api/whip/publish/busy", offers["publisher"]
    )
    assert status == 201 and not hops, (status, a.gateway.log(3000))
    busy = headers["Location"]
    assert busy.startswith(a.url + "/api/whip/session/a.")  # absolute, on the node, its id
    try:
        publisher = peers("publish", a.url, "show", "--seconds", "9")
        home = await home_of(http, a, "show")
        assert home in ("b", "c")
        third = next(n for n in cluster if n not in ("a", home))
        viewer = peers(
            "view", cluster[third].url, "show", "--seconds", "5", "--min-video-frames", "30"
        )
        watched = await asyncio.to_thread(viewer.result, 60)
        published = await asyncio.to_thread(publisher.result, 60)
    finally:
        assert await delete(http, busy) == 200
    assert published["ok"], published
    assert node_of(published["location"], cluster) == home  # 307 from a, 201 from the home
    assert watched["ok"], watched
    assert node_of(watched["location"], cluster) == home  # 307 from the third node
    assert watched["video_frames"] >= 30
    assert await metric(http, a, "live_redirects_total", 'kind="whip"') >= 1
    assert await metric(http, cluster[third], "live_redirects_total", 'kind="whep"') >= 1
    assert await metric(http, a, "live_node_info", 'node="a"') == 1
    assert await metric(http, a, "live_redis_up") == 1


async def test_racing_whips_for_a_new_room_end_with_one_owner(
    cluster: dict[str, Node],
    http: aiohttp.ClientSession,
    offers: dict[str, str],
    redis_client: Redis,
) -> None:
    a, b = cluster["a"], cluster["b"]
    for attempt in range(4):
        room = f"race{attempt}"
        replies = await asyncio.gather(
            post(http, f"{a.url}/api/whip/publish/{room}", offers["publisher"], follow=False),
            post(http, f"{b.url}/api/whip/publish/{room}", offers["publisher"], follow=False),
        )
        owner = await redis_client.get(f"live-sfu:room:{room}")
        assert owner in cluster
        for status, headers, _, _ in replies:
            assert status in (201, 307, 409), replies
            if status == 307:  # to the owner, with the hop marker, never to itself
                assert headers["Location"].startswith(cluster[owner].url + "/")
                assert headers["Location"].endswith(f"?node={owner}")
        # Following the redirects: the owner has exactly one publisher, the other gets 409.
        final = []
        for reply in replies:
            status, headers, _, _ = reply
            if status == 307:
                reply = await post(http, headers["Location"], offers["publisher"])
            final.append(reply)
        assert sorted(status for status, *_ in final) == [201, 409], (replies, final)
        created = [headers["Location"] for status, headers, _, _ in final if status == 201]
        assert node_of(created[0], cluster) == owner
        assert await delete(http, created[0]) == 200


async def test_a_redirect_loop_is_impossible(
    cluster: dict[str, Node], http: aiohttp.ClientSession, offers: dict[str, str]
) -> None:
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    status, headers, _, _ = await post(
        http, b.url + "/api/whip/publish/loop?node=b", offers["publisher"]
    )
    assert status == 201  # the hop marker for b: b claims the room for itself
    session = headers["Location"]
    try:
        # The owner never redirects to itself: a second publisher is its own 409.
        status, _, _, hops = await post(http, b.url + "/api/whip/publish/loop", offers["publisher"])
        assert (status, hops) == (409, [])
        # A request that was already redirected is never redirected again: 503, not a 307.
        for node in (a, c):
            for kind, path in (("publisher", "whip/publish"), ("viewer", "whep/play")):
                for marker in ("?node=" + node.node_id, "?node=b", "?x=1&node="):
                    status, headers, body, hops = await post(
                        http, f"{node.url}/api/{path}/loop{marker}", offers[kind], follow=False
                    )
                    assert status == 503 and not hops, (node.node_id, kind, marker, status, body)
                    assert json.loads(body)["code"] == "room_moved"
                    assert "Retry-After" in headers
        # Without the marker: exactly one hop, to the owner, then served there.
        status, headers, _, hops = await post(http, c.url + "/api/whep/play/loop", offers["viewer"])
        assert status == 201 and len(hops) == 1, (status, hops)
        assert hops[0].startswith(c.url) and headers["Location"].startswith(b.url + "/")
        viewer_session = headers["Location"]
        # Session resources: another node answers 307 to the holder, once.
        path = urlsplit(viewer_session).path
        async with http.delete(a.url + path + "?node=a", allow_redirects=False) as response:
            assert response.status == 404  # the marker: never redirected again
        async with http.delete(a.url + path, allow_redirects=False) as response:
            assert response.status == 307
            assert response.headers["Location"] == f"{b.url}{path}?node=b"
        async with http.delete(a.url + path) as response:
            assert response.status == 200 and len(response.history) == 1
    finally:
        assert await delete(http, session) == 200


async def test_redirect_overhead(
    cluster: dict[str, Node], http: aiohttp.ClientSession, offers: dict[str, str]
) -> None:
    """POST → 307 → 201 against POST → 201 on the home itself (WHEP, the same room), and the
    307 alone; printed for bench/README.md and the closing note. The first round (new
    connections, the scripts' first load into Redis) is reported apart as "cold"."""
    b, c = cluster["b"], cluster["c"]
    status, headers, _, _ = await post(
        http, b.url + "/api/whip/publish/overhead?node=b", offers["publisher"]
    )
    assert status == 201
    publisher = headers["Location"]
    samples: dict[str, list[float]] = {"direct": [], "redirected": [], "307 only": []}
    try:
        for _ in range(51):
            for name, url, follow in (
                ("direct", b.url, True),
                ("redirected", c.url, True),
                ("307 only", c.url, False),
            ):
                started = time.perf_counter()
                status, headers, _, _ = await post(
                    http, url + "/api/whep/play/overhead", offers["viewer"], follow
                )
                samples[name].append((time.perf_counter() - started) * 1000)
                assert status == (201 if follow else 307)
                if follow:
                    assert await delete(http, headers["Location"]) == 200
    finally:
        assert await delete(http, publisher) == 200
    figures = {
        name: {
            "p50_ms": round(statistics.median(values[1:]), 2),
            "p99_ms": round(statistics.quantiles(values[1:], n=100)[98], 2),
            "cold_ms": round(values[0], 2),
        }
        for name, values in samples.items()
    }
    print("\nredirect overhead (WHEP POST, 50 each):", json.dumps(figures))
    assert figures["307 only"]["p50_ms"] < 20


async def test_api_rooms_and_admin_nodes_list_the_cluster(
    cluster: dict[str, Node], http: aiohttp.ClientSession, offers: dict[str, str]
) -> None:
    c = cluster["c"]
    status, headers, _, _ = await post(
        http, cluster["b"].url + "/api/whip/publish/listed?node=b", offers["publisher"]
    )
    assert status == 201
    try:
        deadline = time.monotonic() + 5
        while (await rooms(http, c)).get("listed") != "b":
            assert time.monotonic() < deadline, await rooms(http, c)
            await asyncio.sleep(0.2)
        async with http.get(c.url + "/api/admin/nodes") as response:
            assert response.status in (401, 403)
        auth = {"Authorization": f"Bearer {ADMIN}"}
        async with http.get(c.url + "/api/admin/nodes", headers=auth) as response:
            assert response.status == 200
            nodes: list[dict[str, Any]] = await response.json()
        by_id = {node["id"]: node for node in nodes}
        assert set(by_id) == set(cluster)
        assert by_id["c"]["self"] and not by_id["b"]["self"]
        assert by_id["b"]["url"] == cluster["b"].url and "listed" in by_id["b"]["roomNames"]
        assert by_id["b"]["workers"] == 1 and by_id["b"]["sessions"] >= 1
    finally:
        assert await delete(http, headers["Location"]) == 200


async def test_redis_stopped_then_restarted(
    cluster: dict[str, Node],
    http: aiohttp.ClientSession,
    offers: dict[str, str],
    redis_server: RedisServer,
    peers: Callable[..., PeerProcess],
) -> None:
    a = cluster["a"]
    publisher = peers("publish", a.url, "steady", "--seconds", "11")
    home = cluster[await home_of(http, a, "steady")]
    viewer = peers("view", home.url, "steady", "--seconds", "8", "--min-video-frames", "120")
    await asyncio.sleep(2)
    redis_server.stop()
    try:
        deadline = time.monotonic() + 4  # the next heartbeat fails
        while True:
            async with http.get(home.url + "/readyz") as response:
                if response.status == 503:
                    assert "Redis" in (await response.json())["error"]
                    break
            assert time.monotonic() < deadline, "/readyz stayed 200 without Redis"
            await asyncio.sleep(0.1)
        for node in cluster.values():
            status, headers, body, _ = await post(
                http, node.url + "/api/whip/publish/newroom", offers["publisher"], follow=False
            )
            assert status == 503 and headers["Retry-After"], body
            assert json.loads(body)["code"] == "cluster_unavailable"
        assert await metric(http, home, "live_redis_up") == 0
        # The room held by `home` goes on: its packets keep flowing, and it takes a viewer.
        before = await metric(http, home, "live_rtp_sent_packets_total", 'room="steady"')
        await asyncio.sleep(1.5)
        after = await metric(http, home, "live_rtp_sent_packets_total", 'room="steady"')
        assert after > before + 50, (before, after)
        status, headers, _, _ = await post(
            http, home.url + "/api/whep/play/steady", offers["viewer"]
        )
        assert status == 201
        assert await delete(http, headers["Location"]) == 200
    finally:
        redis_server.start()
    deadline = time.monotonic() + 5
    while True:  # the nodes reconnect by themselves
        status, headers, _, _ = await post(
            http, a.url + "/api/whip/publish/newroom", offers["publisher"]
        )
        if status == 201 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert status == 201, status
    assert await delete(http, headers["Location"]) == 200
    async with http.get(home.url + "/readyz") as response:
        assert response.status == 200
    watched = await asyncio.to_thread(viewer.result, 60)
    assert watched["ok"] and watched["video_frames"] >= 120, watched
    assert (await asyncio.to_thread(publisher.result, 60))["ok"]


async def test_killed_node_vanishes_within_the_ttl_and_a_stopped_one_at_once(
    cluster: dict[str, Node],
    http: aiohttp.ClientSession,
    offers: dict[str, str],
    redis_client: Redis,
) -> None:
    a, b, c = cluster["a"], cluster["b"], cluster["c"]
    status, _, _, _ = await post(
        http, b.url + "/api/whip/publish/doomed?node=b", offers["publisher"]
    )
    assert status == 201
    assert await home_of(http, a, "doomed") == "b"
    b.kill()
    killed = time.monotonic()
    deadline = killed + 4 + 3  # NODE_TTL and ROOM_TTL, and a heartbeat of a (and slack)
    while await redis_client.exists("live-sfu:node:b", "live-sfu:room:doomed"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    while "doomed" in await rooms(http, a):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    vanished = time.monotonic() - killed
    print(f"\nkilled node's record and rooms gone after {vanished:.1f} s (TTL 4 s)")
    status, headers, _, _ = await post(
        http, a.url + "/api/whip/publish/doomed", offers["publisher"]
    )
    assert status == 201, status
    assert node_of(headers["Location"], cluster) in ("a", "c")  # re-homed on a live node
    assert await redis_client.get("live-sfu:room:doomed") in ("a", "c")
    rehomed = headers["Location"]
    # A node that drains (SIGTERM, DRAIN_TIMEOUT) takes no new room: its record says so at
    # once, and a new room posted to it is redirected. When it stops, it gives its rooms and
    # its record up at once (not after the TTLs).
    status, headers, _, _ = await post(
        http, c.url + "/api/whip/publish/leaving?node=c", offers["publisher"]
    )
    assert status == 201
    leaving = headers["Location"]
    assert await redis_client.get("live-sfu:room:leaving") == "c"
    os.kill(c.gateway.process.pid, signal.SIGTERM)  # the gateway only: its worker stays
    deadline = time.monotonic() + 3
    while not json.loads(await redis_client.get("live-sfu:node:c") or "{}").get("draining"):
        assert time.monotonic() < deadline, "c's record does not say draining"
        await asyncio.sleep(0.05)
    status, headers, _, hops = await post(
        http, c.url + "/api/whip/publish/elsewhere", offers["publisher"]
    )
    assert status == 201 and len(hops) == 1 and node_of(headers["Location"], cluster) == "a"
    assert await delete(http, headers["Location"]) == 200
    assert await delete(http, leaving) == 200  # c's last session: its drain ends
    await asyncio.to_thread(c.gateway.process.wait, 15)
    assert not await redis_client.exists("live-sfu:node:c", "live-sfu:room:leaving")
    assert "c" not in await redis_client.smembers("live-sfu:nodes")
    assert await delete(http, rehomed) == 200


def test_redis_credentials_from_files_are_used_and_never_shown(tmp_path: Path) -> None:
    """A Redis with a password: REDIS_URL_FILE and REDIS_PASSWORD_FILE (systemd credentials);
    the node registers (AUTH worked) and neither its log nor its answers show the password."""
    password = "redis-pw-" + secrets.token_hex(8)
    server = RedisServer(pick_free_port(), tmp_path, password=password)
    server.start()
    try:
        (tmp_path / "redis_url").write_text(server.url + "\n")
        (tmp_path / "redis_password").write_text(password + "\n")
        env = {
            "REDIS_URL_FILE": str(tmp_path / "redis_url"),
            "REDIS_PASSWORD_FILE": str(tmp_path / "redis_password"),
        }
        node = start_node(tmp_path, server, "c", env={**env, "REDIS_URL": ""})
        try:
            answers = [
                urllib.request.urlopen(node.url + path).read().decode()
                for path in ("/metrics", "/api/rooms", "/readyz")
            ]
        finally:
            node.gateway.stop()
        for text in (node.gateway.log(), *answers):
            assert password not in text
        assert "node c at" in node.gateway.log()
    finally:
        server.stop()
