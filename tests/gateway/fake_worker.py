"""A media-less worker that speaks the real IPC protocol, for gateway tests.

Runs as its own process over a real ZeroMQ socket, so the gateway sees exactly what a real
worker would send. An offer line `a=x-fail:<code>` makes it answer Failure(<code>);
`a=x-delay:<seconds>` makes it answer late. Exit code 3 when the gateway refuses it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys

from ipc import messages as m
from ipc.channel import IpcError, RemoteFailure, dealer_channel

ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\n"
    "a=ice-ufrag:srv1\r\na=ice-pwd:serverpasswordserverpass\r\na=recvonly\r\n"
)


def _directive(offer: str, name: str) -> str | None:
    for line in offer.splitlines():
        if line.startswith(f"a=x-{name}:"):
            return line.split(":", 1)[1].strip()
    return None


class FakeWorker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.channel = dealer_channel(args.connect, args.worker_id.encode())
        self.sessions: dict[str, str] = {}  # session id -> room
        self.interval = 0.25

    async def on_request(self, _peer: bytes, body: m.Message) -> m.Message:
        if isinstance(body, m.OpenPublisher | m.OpenSubscriber):
            delay = _directive(body.offer, "delay")
            if delay:
                await asyncio.sleep(float(delay))
            code = _directive(body.offer, "fail")
            if code:
                return m.Failure(code, f"fake worker told to fail with {code}")
            self.sessions[body.session_id] = body.room
            asyncio.get_running_loop().call_later(0.05, self._connected, body)
            return m.SessionAnswer(ANSWER, "srv1", "serverpasswordserverpass")
        if isinstance(body, m.AddCandidates):
            if body.session_id not in self.sessions:
                return m.Failure("unknown_session", "no such session")
            print(
                f"candidates {body.session_id[:8]} {len(body.candidates)} {body.mid} "
                f"{body.end_of_candidates}",
                flush=True,
            )
            return m.Done()
        if isinstance(body, m.CloseSession):
            if self.sessions.pop(body.session_id, None) is None:
                return m.Failure("unknown_session", "no such session")
            print(f"closed {body.session_id[:8]}", flush=True)
            return m.Done()
        if isinstance(body, m.CloseRoom):
            for session_id in [s for s, room in self.sessions.items() if room == body.room]:
                del self.sessions[session_id]
            print(f"closed room {body.room}", flush=True)
            return m.Done()
        return m.Failure("internal", f"unexpected {type(body).__name__}")

    def _connected(self, body: m.OpenPublisher | m.OpenSubscriber) -> None:
        if body.session_id in self.sessions:
            asyncio.ensure_future(
                self.channel.notify(m.SessionState(body.session_id, body.room, "connected"))
            )

    async def hello(self) -> int:
        hello = m.Hello(
            worker_id=self.args.worker_id,
            pid=os.getpid(),
            protocol=self.args.protocol,
            version="fake",
            hostname=socket.gethostname(),
            token=self.args.token,
            local=False,
        )
        try:
            welcome = await self.channel.request(hello, timeout=5)
        except RemoteFailure as exc:
            print(f"refused: {exc.message}", flush=True)
            return 3
        assert isinstance(welcome, m.Welcome)
        self.interval = welcome.heartbeat_interval
        print("registered", flush=True)
        return 0

    async def run(self) -> int:
        self.channel.on_request = self.on_request
        self.channel.start()
        code = await self.hello()
        if code:
            return code
        while True:
            await asyncio.sleep(self.interval)
            rooms = sorted(set(self.sessions.values()))
            try:
                answer = await self.channel.request(
                    m.Heartbeat(rooms, len(self.sessions), 0.0, 0.01), timeout=5
                )
            except IpcError:
                continue
            if isinstance(answer, m.Reregister):
                print("reregister", flush=True)
                self.sessions.clear()
                code = await self.hello()
                if code:
                    return code


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connect", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--protocol", type=int, default=m.PROTOCOL_VERSION)
    args = parser.parse_args()
    return asyncio.run(FakeWorker(args).run())


if __name__ == "__main__":
    sys.exit(main())
