"""One regression test per defect of the hardening review (issue 10), on real processes.

Each test failed on the code before the fix: a bad offer that locked its room, offers that
could never work answered 503, one address filling the pending-session table, 201 for a
session with no UDP port, a 5 s stall killing a worker, SIGTERM cutting a request in
flight, IPC directories left behind by a SIGKILLed gateway, and JWTs with a string `exp`.
Log redaction and forged lines are in test_secrets_and_logs.py, worker memory in
tests/sfu/test_session_memory.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import jwt
import pytest

from gateway.config import load_config
from gateway.http.auth import Authenticator, InvalidToken
from testkit.processes import GatewayProcess, worker_pids
from tests.interop.sdp_offers import CHROME_AUDIO, CHROME_VIDEO, Section, browser_offer, only
from tests.support.clients import PeerProcess

SDP = {"Content-Type": "application/sdp"}
# With these a gateway runs on its defaults against floods (the harness turns them off).
FLOOD_DEFAULTS = {"RATE_LIMIT_RPS": "", "MAX_PENDING_SESSIONS_PER_IP": ""}


def publisher_offer(*video_extra: str) -> str:
    return browser_offer(
        [
            Section("audio", formats=only(CHROME_AUDIO, "opus")),
            Section("video", formats=only(CHROME_VIDEO, "VP8"), extra=list(video_extra)),
        ]
    )


async def post(
    http: aiohttp.ClientSession, url: str, offer: str
) -> tuple[int, dict[str, str], str]:
    async with http.post(url, data=offer, headers=SDP) as response:
        return response.status, dict(response.headers), await response.text()


def error_code(body: str) -> str:
    return str(json.loads(body)["code"])


# --- 1 and 2: offers aiortc cannot answer --------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "named"),
    [
        (publisher_offer("a=mid:9"), "a=mid lines"),  # defect 1: a second a=mid
        (publisher_offer().replace("a=mid:1", "a=mid:" + "m" * 300), "a=mid must be"),
        (publisher_offer().replace("a=mid:1", "a=mid:0"), "repeats a=mid"),
        (publisher_offer().replace("BUNDLE 0 1", "BUNDLE 0 1 7"), "BUNDLE group names"),
        (publisher_offer().replace("a=mid:1\r\n", ""), "no a=mid"),
        (publisher_offer("a=recvonly"), "direction attributes"),
    ],
)
async def test_an_offer_aiortc_cannot_answer_is_400_and_leaves_the_room_free(
    gateway_factory: Callable[..., GatewayProcess], offer: str, named: str
) -> None:
    gateway = gateway_factory(workers=1)
    url = gateway.url + "/api/whip/publish/squat"
    pids = worker_pids(gateway)
    async with aiohttp.ClientSession() as http:
        status, headers, body = await post(http, url, offer)
        assert status == 400, body
        assert error_code(body) == "bad_offer" and named in json.loads(body)["error"], body
        assert "Retry-After" not in headers  # retrying cannot help
        # The room is not squatted: a good publisher gets it.
        status, headers, body = await post(http, url, publisher_offer())
        assert status == 201, body
        async with http.delete(gateway.url + headers["Location"]) as response:
            assert response.status == 200
    assert worker_pids(gateway) == pids
    assert "Traceback" not in gateway.log(tail=100_000)


# --- 4: one address cannot shut everyone out ----------------------------------------------


async def test_one_address_cannot_fill_the_pending_sessions_with_the_defaults(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(workers=1, env=FLOOD_DEFAULTS)
    flooder = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0))
    other = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    statuses: list[int] = []
    async with aiohttp.ClientSession(connector=flooder) as http:
        status, headers, body = await post(
            http, gateway.url + "/api/whip/publish/live", publisher_offer()
        )
        assert status == 201, body
        viewer_offer = publisher_offer().replace("a=sendonly", "a=recvonly")
        for _ in range(30):
            status, headers, body = await post(
                http, gateway.url + "/api/whep/play/live", viewer_offer
            )
            statuses.append(status)
        refused = statuses.index(429)
        # MAX_PENDING_SESSIONS_PER_IP=20 counts the publisher too: 19 viewers got in.
        assert statuses[:refused] == [201] * 19 and set(statuses[refused:]) == {429}, statuses
        assert error_code(body) == "too_many_pending_sessions_from_client"
        assert headers["Retry-After"] == "2"
    async with aiohttp.ClientSession(connector=other) as http:
        status, _headers, body = await post(http, gateway.url + "/api/whep/play/live", viewer_offer)
        assert status == 201, body  # another address is not shut out


async def test_the_default_rate_limit_stops_a_flood_from_one_address_only(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    gateway = gateway_factory(workers=1, env=FLOOD_DEFAULTS)
    statuses: list[int] = []
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=("127.0.0.1", 0))
    ) as http:
        for _ in range(60):
            async with http.get(gateway.url + "/api/rooms") as response:
                statuses.append(response.status)
    assert statuses.count(200) >= 40 and statuses[-1] == 429, statuses  # burst 40, 20/s
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    ) as http:
        async with http.get(gateway.url + "/api/rooms") as response:
            assert response.status == 200


# --- 5: no 201 without a UDP port ------------------------------------------------------------


async def test_a_worker_out_of_udp_ports_answers_503_before_any_answer(
    gateway_factory: Callable[..., GatewayProcess], peers: Callable[..., PeerProcess]
) -> None:
    low = 20000 + os.getpid() % 20000
    # 4 ports on one address: room for 4 sessions.
    gateway = gateway_factory(
        workers=1,
        args=["--udp-ports", f"{low}-{low + 3}", "--bind-addresses", "127.0.0.1"],
    )
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", low + 3))  # another program holds one port of the range
    locations: list[str] = []
    async with aiohttp.ClientSession() as http:

        async def publish(room: str) -> tuple[int, dict[str, str], str]:
            return await post(http, gateway.url + f"/api/whip/publish/{room}", publisher_offer())

        await asyncio.sleep(0.6)  # a heartbeat has told the gateway the worker's capacity
        for index in range(3):
            status, headers, body = await publish(f"r{index}")
            assert status == 201, body
            assert "a=candidate:" in body  # an answer the client can connect to
            locations.append(headers["Location"])
        # The worker finds the range full when it binds: 503 instead of a dead answer.
        status, headers, body = await publish("r3")
        assert status == 503 and error_code(body) == "overloaded", body
        assert headers["Retry-After"] == "2"
        squatter.close()
        status, headers, body = await publish("r3")
        assert status == 201, body
        locations.append(headers["Location"])
        # Four sessions: the gateway knows the worker is full and does not even ask it.
        status, headers, body = await publish("r9")
        assert status == 503 and error_code(body) == "worker_full", body
        assert headers["Retry-After"] == "2"
        # A port given back is a port for the next publisher, which really connects.
        async with http.delete(gateway.url + locations.pop()) as response:
            assert response.status == 200
    result = peers("publish", gateway.url, "r9", "--seconds", "1").result(timeout=40)
    assert result["ok"] and result["connected"], result


# --- 6: a stall is not a death ----------------------------------------------------------------


async def test_a_five_second_stall_keeps_the_room_and_its_viewers(
    gateway_factory: Callable[..., GatewayProcess], peers: Callable[..., PeerProcess]
) -> None:
    gateway = gateway_factory(workers=1, args=["--bind-addresses", "127.0.0.1"])
    (worker,) = worker_pids(gateway)
    publisher = peers("publish", gateway.url, "stall", "--seconds", "16", "--fps", "15")
    viewer = peers("view", gateway.url, "stall", "--seconds", "12")
    await asyncio.sleep(3.0)
    os.kill(worker, signal.SIGSTOP)
    try:
        await asyncio.sleep(5.0)
    finally:
        os.kill(worker, signal.SIGCONT)
    seen = viewer.result(timeout=40)
    assert seen["connected"], seen
    # At 15 fps, frames before the stall are at most ~40: more means playback went on after.
    assert seen["video_frames"] > 60, seen
    assert worker_pids(gateway) == {worker}
    log = gateway.log(tail=100_000)
    assert "unresponsive" in log and "declared dead" not in log, log
    assert publisher.result(timeout=40)["connected"]


# --- 7: SIGTERM answers the requests in flight --------------------------------------------------


def _start_post(port: int, body: bytes, sent: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST /api/whip/publish/drain HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    connection.sendall(head + body[:sent])
    return connection


def _response(connection: socket.socket) -> tuple[int, dict[str, str]]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += connection.recv(65536)
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("finish_body", [True, False])
def test_sigterm_answers_a_request_whose_body_is_still_arriving(
    gateway_factory: Callable[..., GatewayProcess], finish_body: bool
) -> None:
    gateway = gateway_factory(workers=1)
    body = publisher_offer().encode()
    connection = _start_post(gateway.port, body, len(body) // 2)
    time.sleep(0.3)  # the handler is reading the body
    gateway.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    if finish_body:
        connection.sendall(body[len(body) // 2 :])
    started = time.monotonic()
    status, answer = _response(connection)
    assert status == 503 and answer["code"] == "shutting_down", answer
    if not finish_body:
        assert time.monotonic() - started < 5.0  # the drain grace, not the 15 s body timeout
    assert gateway.process.wait(15) == 0


# --- 8: no IPC directory left behind -------------------------------------------------------------


def test_a_new_gateway_removes_the_ipc_directory_of_a_killed_one(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    tmp = Path(tempfile.gettempdir())
    killed = gateway_factory(workers=1)
    own = [p for p in tmp.glob(f"sfu-gw-{killed.process.pid}-*") if p.is_dir()]
    assert len(own) == 1 and (own[0] / "gateway.sock").exists()
    killed.process.send_signal(signal.SIGKILL)
    killed.process.wait(10)
    # A live process's directory (this test's pid) must survive the sweep.
    alive = Path(tempfile.mkdtemp(prefix=f"sfu-gw-{os.getpid()}-"))
    try:
        gateway_factory(workers=1)
        assert not own[0].exists()
        assert alive.exists()
    finally:
        alive.rmdir()


# --- 10: NumericDate claims ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": "4102444800"},
        {"exp": 4102444800, "nbf": "0"},
        {"exp": 4102444800, "iat": "1"},
        {"exp": True},
    ],
)
def test_a_jwt_with_a_non_numeric_date_is_refused(claims: dict[str, object]) -> None:
    secret = "s" * 32
    authenticator = Authenticator(load_config(["--jwt-secret", secret], environ={}))
    token = jwt.encode({"room": "r", **claims}, secret, algorithm="HS256")
    # True is 1 to PyJWT: refused as expired before our type check; refused either way.
    with pytest.raises(InvalidToken, match="NumericDate|expired"):
        authenticator.verify_jwt(token)
    good = jwt.encode({"room": "r", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    assert authenticator.verify_jwt(good).room == "r"


def test_worker_pids_helper_sees_the_real_tree(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    """worker_pids must find the worker, or the 'no restart' checks above prove nothing."""
    gateway = gateway_factory(workers=1)
    (pid,) = worker_pids(gateway)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"sfu" in cmdline
    assert subprocess.run(["kill", "-0", str(pid)], check=False).returncode == 0
