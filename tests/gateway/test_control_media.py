"""The control API and /metrics against real media: aiortc publisher and viewer processes
(testkit/client.py) through a real gateway and worker.

/metrics is parsed with prometheus-client's own parser and compared with the packet counts
the peers report from their own getStats().
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit.client import new_pc, publisher_offer
from testkit.processes import GatewayProcess, start_gateway, worker_pids

TOKEN = "media-token"
ADMIN = {"Authorization": "Bearer admin-token"}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {"AUTH_TOKEN": TOKEN, "ADMIN_TOKEN": "admin-token"}
    args = ["--bind-addresses", "127.0.0.1"]
    process = start_gateway(tmp_path_factory.mktemp("media"), workers=1, args=args, env=env)
    yield process
    process.stop()


async def scrape(http: aiohttp.ClientSession, gateway: GatewayProcess) -> Samples:
    async with http.get(gateway.url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def get_json(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> Any:
    async with http.get(url, **kwargs) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def wait_for(
    check: Callable[[], Any], what: str, within: float = 30.0, interval: float = 0.2
) -> Any:
    """Poll the async `check` until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


def room_of(rooms: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in rooms if r["name"] == name), None)


async def test_rooms_and_metrics_follow_real_traffic_and_survive_a_worker_restart(
    gateway: GatewayProcess, http: aiohttp.ClientSession, peers: Callable[..., Any]
) -> None:
    room = "metrics-room"
    publisher = peers("publish", gateway.url, room, "--seconds", "8", "--token", TOKEN)

    async def publisher_connected() -> dict[str, Any] | None:
        found = room_of(await get_json(http, gateway.url + "/api/rooms"), room)
        # Tracks come with the worker's next heartbeat (every 0.25 s).
        ready = found and found["publisherState"] == "connected" and found["tracks"]
        return found if ready else None

    listed = await wait_for(publisher_connected, "the publisher to connect")
    assert listed["hasPublisher"] is True and listed["worker"] == "local-0"
    assert listed["tracks"] == 2
    # Each track also carries its figures (issue 17: tests/gateway/test_room_stats.py).
    assert [(t["kind"], t["codec"]) for t in listed["media"]] == [
        ("audio", "opus"),
        ("video", "VP8"),
    ]

    viewer = peers("view", gateway.url, room, "--seconds", "3", "--token", TOKEN)

    async def one_subscriber() -> bool:
        found = room_of(await get_json(http, gateway.url + "/api/rooms"), room)
        samples = await scrape(http, gateway)
        return bool(found and found["subscribers"] == 1) and (
            value(samples, "live_subscribers", room=room) == 1
        )

    await wait_for(one_subscriber, "the viewer in /api/rooms and live_subscribers")
    samples = await scrape(http, gateway)
    assert value(samples, "live_rooms") == 1
    assert value(samples, "live_sessions", kind="subscriber", state="connected") <= 1
    workers = await get_json(http, gateway.url + "/api/admin/workers", headers=ADMIN)
    assert [w["id"] for w in workers] == ["local-0"]
    assert workers[0]["rooms"] == [room] and workers[0]["sessions"] == 2
    assert workers[0]["uptimeSeconds"] > 0 and workers[0]["load"]["rssBytes"] > 0

    watched = viewer.result(timeout=60)
    published = publisher.result(timeout=60)
    assert watched["ok"] and published["ok"], (watched, published)
    sent = sum(published["packets_sent"].values())
    received = sum(kind["packetsReceived"] for kind in watched["rtp"].values())

    async def room_gone_and_counted() -> Samples | None:
        now = await scrape(http, gateway)
        gone = (
            value(now, "live_rooms") == 0
            and value(now, "live_worker_sessions", worker="local-0") == 0
        )
        return now if gone else None

    # The worker reports a closed room's last counters once, in its next heartbeat.
    samples = await wait_for(room_gone_and_counted, "the room to close")
    packets_in = value(samples, "live_rtp_packets_total", room=room)
    bytes_in = value(samples, "live_rtp_bytes_total", room=room)
    packets_out = value(samples, "live_rtp_sent_packets_total", room=room)
    # Ingress is what the publisher sent (its stats were read just before it stopped).
    assert 0.95 * sent <= packets_in <= sent + 50, (packets_in, sent)
    assert bytes_in >= packets_in * 12  # RTP headers at least
    # One viewer: what was forwarded is what it received, give or take packets in flight.
    assert 0.95 * packets_out <= received <= packets_out, (received, packets_out)
    worker_in = value(samples, "live_worker_received_packets_total", worker="local-0")
    worker_out = value(samples, "live_worker_forwarded_packets_total", worker="local-0")
    assert worker_in >= packets_in and worker_out >= packets_out
    assert value(samples, "live_subscribers", room=room) == 0

    # A worker restart: the respawned worker counts from zero, the exported totals do not.
    (pid,) = worker_pids(gateway)
    os.kill(pid, signal.SIGKILL)

    async def new_worker_registered() -> bool:
        try:
            workers = await get_json(http, gateway.url + "/api/admin/workers", headers=ADMIN)
        except AssertionError:
            return False
        return bool(workers) and workers[0]["pid"] != pid

    await wait_for(new_worker_registered, "a respawned worker", within=60)
    await wait_for(lambda: http_ok(http, gateway.url + "/readyz"), "readiness")
    after = await scrape(http, gateway)
    assert value(after, "live_worker_received_packets_total", worker="local-0") >= worker_in
    assert value(after, "live_worker_forwarded_packets_total", worker="local-0") >= worker_out
    assert value(after, "live_rtp_packets_total", room=room) == packets_in


async def http_ok(http: aiohttp.ClientSession, url: str) -> bool:
    async with http.get(url) as response:
        return response.status == 200


async def test_admin_closes_a_room_with_its_publisher_and_viewers(
    gateway: GatewayProcess, http: aiohttp.ClientSession, peers: Callable[..., Any]
) -> None:
    await wait_for(lambda: http_ok(http, gateway.url + "/readyz"), "readiness")
    room = "closing-room"
    publisher = peers("publish", gateway.url, room, "--seconds", "30", "--token", TOKEN)
    viewer = peers("view", gateway.url, room, "--seconds", "30", "--token", TOKEN)

    async def both_connected() -> bool:
        found = room_of(await get_json(http, gateway.url + "/api/rooms"), room)
        return bool(found and found["publisherState"] == "connected" and found["subscribers"])

    await wait_for(both_connected, "publisher and viewer", within=45)
    url = f"{gateway.url}/api/admin/rooms/{room}/close"
    async with http.post(url) as response:
        assert response.status == 401
    async with http.post(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 403  # a room token is no admin token
    async with http.post(url, headers=ADMIN) as response:
        assert response.status == 200, await response.text()
        assert await response.json() == {"closed": room, "sessions": 2}
    assert room_of(await get_json(http, gateway.url + "/api/rooms"), room) is None

    async def worker_emptied() -> bool:
        samples = await scrape(http, gateway)
        return value(samples, "live_worker_sessions", worker="local-0") == 0

    await wait_for(worker_emptied, "the worker to close both sessions")
    async with http.post(url, headers=ADMIN) as response:
        assert response.status == 404
        assert (await response.json())["code"] == "no_room"
    publisher.kill()
    viewer.kill()


async def test_session_urls_are_authorised_by_the_session_itself(
    gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    """The Location URL is the capability: no token needed, and none can replace it."""
    await wait_for(lambda: http_ok(http, gateway.url + "/readyz"), "readiness")
    pc = new_pc()
    try:
        offer = await publisher_offer(pc)
        url = gateway.url + "/api/whip/publish/session-room"
        headers = {"Content-Type": "application/sdp"}
        async with http.post(url, data=offer, headers=headers) as response:
            assert response.status == 401
        headers["Authorization"] = f"Bearer {TOKEN}"
        async with http.post(url, data=offer, headers=headers) as response:
            assert response.status == 201, await response.text()
            location = response.headers["Location"]
            etag = response.headers["ETag"]
        patch = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": etag}
        async with http.patch(
            gateway.url + location, data="a=end-of-candidates\r\n", headers=patch
        ) as response:
            assert response.status == 204
        # A valid token does not open another session's URL: a guessed id is just unknown.
        guessed = location[:-4] + "AAAA"
        async with http.delete(gateway.url + guessed, headers=ADMIN) as response:
            assert response.status == 404
        async with http.delete(gateway.url + location) as response:
            assert response.status == 200
    finally:
        await pc.close()


def test_workers_do_not_inherit_the_gateways_secrets(gateway: GatewayProcess) -> None:
    (pid,) = worker_pids(gateway)
    with open(f"/proc/{pid}/environ", "rb") as environ:
        names = {entry.split(b"=", 1)[0] for entry in environ.read().split(b"\0") if entry}
    assert b"PYTHONPATH" in names  # the environment was read, and passed on
    assert b"AUTH_TOKEN" not in names and b"ADMIN_TOKEN" not in names
