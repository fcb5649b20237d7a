"""Fixtures for the cluster tests: a real redis-server, and three real gateways ("nodes")
sharing it, each on its own loopback address as separate hosts would be.

redis-server is Debian's (scripts/test.sh installs it), started on a private port with a
temporary directory and no persistence, and stopped at the end; tests stop and restart it.
Each node is a full `python -m gateway` with one worker (testkit.processes.start_gateway),
its HTTP and media on 127.0.0.2, .3 or .4, so its candidates and its URL differ from the
others'. Short TTLs keep the expiry tests short.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from testkit.client import new_pc, publisher_offer, viewer_offer
from testkit.processes import GatewayProcess, pick_free_port, start_gateway, wait_sync

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
NODES = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}
NODE_TTL = "4"  # heartbeats every second
ROOM_TTL = "4"
ADMIN = "cluster-admin-token-0123456789"
# Sessions the tests open without media stay until they are deleted.
CONNECT_TIMEOUT = "60"
# A stopping node waits for its sessions (the drain test ends its last one itself).
DRAIN_TIMEOUT = "20"


@dataclass
class RedisServer:
    """A redis-server on 127.0.0.1:`port`, data in `directory`, no persistence."""

    port: int
    directory: Path
    password: str = ""  # requirepass
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                *(["--requirepass", self.password] if self.password else []),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_sync(self._answers, 10, "redis-server to answer PING", self._log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                # Without the password Redis answers -NOAUTH: up all the same.
                return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def _log(self) -> str:
        return (self.directory / "redis.log").read_text(errors="replace")[-3000:]


@dataclass
class Node:
    node_id: str
    gateway: GatewayProcess

    @property
    def url(self) -> str:
        return self.gateway.url

    def kill(self) -> None:
        """SIGKILL the gateway and its worker at once (a host that dies)."""
        try:
            os.killpg(self.gateway.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.gateway.process.wait(10)


def start_node(
    log_dir: Path,
    redis: RedisServer,
    node_id: str,
    wait: bool = True,
    env: dict[str, str] | None = None,
) -> Node:
    address = NODES[node_id]
    port = pick_free_port(address)
    url = f"http://{address}:{port}"
    gateway = start_gateway(
        log_dir,
        workers=1,
        args=["--http-addr", f"{address}:{port}", "--bind-addresses", address],
        env={
            "REDIS_URL": redis.url,
            "NODE_ID": node_id,
            "NODE_URL": url,
            "NODE_TTL": NODE_TTL,
            "ROOM_TTL": ROOM_TTL,
            "ADMIN_TOKEN": ADMIN,
            "SESSION_CONNECT_TIMEOUT": CONNECT_TIMEOUT,
            "DRAIN_TIMEOUT": DRAIN_TIMEOUT,
            **(env or {}),
        },
        wait=None,
    )
    gateway.port, gateway.url = port, url
    node = Node(node_id, gateway)
    if wait:
        try:
            gateway.wait_ready()
        except BaseException:
            gateway.stop()
            raise
    return node


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(pick_free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[dict[str, Node]]:
    """Nodes a, b and c sharing `redis_server` (started together, then waited for)."""
    log_dir = tmp_path_factory.mktemp("nodes")
    nodes: dict[str, Node] = {}
    try:
        for node_id in NODES:
            nodes[node_id] = start_node(log_dir, redis_server, node_id, wait=False)
        for node in nodes.values():
            node.gateway.wait_ready()
        # Every node has read every other's record (one heartbeat after the last start).
        time.sleep(1.2)
        yield nodes
    finally:
        for node in nodes.values():
            node.gateway.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def offers() -> dict[str, str]:
    """One real aiortc publisher offer and one viewer offer (HTTP-level tests reuse them)."""

    async def make() -> dict[str, str]:
        publisher, viewer = new_pc(), new_pc()
        try:
            return {
                "publisher": await publisher_offer(publisher),
                "viewer": await viewer_offer(viewer),
            }
        finally:
            await publisher.close()
            await viewer.close()

    return asyncio.run(make())
