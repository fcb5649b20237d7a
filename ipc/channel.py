"""Request/response and notifications over one ZeroMQ socket.

The gateway binds a ROUTER and addresses each worker by its routing id; a worker connects a
DEALER. Either side may send requests and notifications. Semantics follow mediasoup's
Channel, plus what it lacks: every request has a timeout, `fail_peer()` fails the requests
pending on a peer that died, and `close()` fails everything still pending.

As in mediasoup (its issue #510), a notification is never handled before the code awaiting
an answer that arrived earlier from the same peer has resumed: a worker that answers an
OpenSession and then reports the session's state is heard in that order. A notification that
arrives while such an answer is on its way to its request() is held, and handled (in order)
once that request() has returned to its caller and the caller reached its next await.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import zmq
import zmq.asyncio

from ipc import codec
from ipc.messages import (
    NOTIFICATION,
    PROTOCOL_VERSION,
    REQUEST,
    RESPONSE,
    Failure,
    FailureCode,
    Frame,
    Message,
)

log = logging.getLogger(__name__)

RequestHandler = Callable[[bytes, Message], Awaitable[Message]]
NotificationHandler = Callable[[bytes, Message], None]


class IpcError(Exception):
    """Base of every channel error."""


class RequestTimeout(IpcError):
    pass


class PeerGone(IpcError):
    pass


class ChannelClosed(IpcError):
    pass


class RemoteFailure(IpcError):
    """The peer answered a request with a Failure message."""

    def __init__(self, code: FailureCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Channel:
    """One socket, one reader task, a map of pending requests."""

    def __init__(self, socket: zmq.asyncio.Socket, *, routed: bool) -> None:
        self._socket = socket
        self._routed = routed
        self._pending: dict[int, tuple[bytes, asyncio.Future[Message]]] = {}
        # Per peer: ids of requests answered whose request() has not resumed yet, and the
        # notifications held until it has.
        self._unresumed: dict[bytes, set[int]] = {}
        self._held: dict[bytes, deque[Message]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = False
        self.on_request: RequestHandler | None = None
        self.on_notification: NotificationHandler | None = None
        self.bad_messages = 0

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def request(self, body: Message, *, peer: bytes = b"", timeout: float) -> Message:
        """Send `body` and wait for the answer; a Failure answer raises RemoteFailure."""
        if self._closed:
            raise ChannelClosed("channel closed")
        self._next_id = self._next_id % 0x7FFFFFFF + 1
        request_id = self._next_id
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (peer, future)
        frame = Frame(PROTOCOL_VERSION, REQUEST, request_id, body)

        async def exchange() -> Message:
            # The send is inside the timeout too: a DEALER with no connected peer (a gateway
            # that is not there) waits in send until one connects, which may be never.
            await self._send(peer, frame)
            return await asyncio.shield(future)

        try:
            answer = await asyncio.wait_for(exchange(), timeout)
        except TimeoutError:
            raise RequestTimeout(
                f"no answer to {type(body).__name__} within {timeout:g} s"
            ) from None
        finally:
            self._pending.pop(request_id, None)
            self._resumed(peer, request_id)
        if isinstance(answer, Failure):
            raise RemoteFailure(answer.code, answer.message)
        return answer

    async def notify(self, body: Message, *, peer: bytes = b"") -> None:
        if self._closed:
            raise ChannelClosed("channel closed")
        await self._send(peer, Frame(PROTOCOL_VERSION, NOTIFICATION, 0, body))

    def fail_peer(self, peer: bytes, reason: str) -> None:
        """Fail every request pending on `peer` (it died or was declared dead)."""
        for request_id, (target, future) in list(self._pending.items()):
            if target == peer and not future.done():
                future.set_exception(PeerGone(reason))
                self._pending.pop(request_id, None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _peer, future in self._pending.values():
            if not future.done():
                future.set_exception(ChannelClosed("channel closed, request aborted"))
        self._pending.clear()
        self._unresumed.clear()
        self._held.clear()
        tasks = list(self._handlers)
        if self._reader is not None:
            tasks.append(self._reader)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._socket.close(linger=0)

    async def _send(self, peer: bytes, frame: Frame) -> None:
        payload = codec.encode(frame)
        try:
            if self._routed:
                await self._socket.send_multipart((peer, payload))
            else:
                await self._socket.send(payload)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise PeerGone(f"peer {peer!r} is not connected") from None
            raise IpcError(str(exc)) from exc

    async def _read_loop(self) -> None:
        while True:
            try:
                parts = await self._socket.recv_multipart()
            except zmq.ZMQError as exc:
                if self._closed or exc.errno == zmq.ENOTSOCK:
                    return
                log.warning("ipc receive failed: %s", exc)
                continue
            if self._routed:
                if len(parts) != 2:
                    self.bad_messages += 1
                    continue
                peer, data = parts
            else:
                if len(parts) != 1:
                    self.bad_messages += 1
                    continue
                peer, data = b"", parts[0]
            try:
                frame = codec.decode(data)
            except codec.BadMessage as exc:
                self.bad_messages += 1
                log.warning("dropped undecodable ipc frame from %r: %s", peer, exc)
                continue
            self._dispatch(peer, frame)

    def _dispatch(self, peer: bytes, frame: Frame) -> None:
        if frame.kind == RESPONSE:
            entry = self._pending.get(frame.id)
            if entry is None or entry[0] != peer:
                log.debug("dropped answer to unknown request %d from %r", frame.id, peer)
                return
            if not entry[1].done():
                entry[1].set_result(frame.body)
                self._unresumed.setdefault(peer, set()).add(frame.id)
        elif frame.kind == REQUEST:
            task = asyncio.get_running_loop().create_task(self._serve(peer, frame))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        elif frame.kind == NOTIFICATION:
            if peer in self._unresumed or peer in self._held:
                self._held.setdefault(peer, deque()).append(frame.body)
            else:
                self._notify(peer, frame.body)
        else:
            self.bad_messages += 1

    def _resumed(self, peer: bytes, request_id: int) -> None:
        """request() got past its await: notifications held for it may follow once its
        caller reaches its next await (call_soon runs after the caller's synchronous part)."""
        waiting = self._unresumed.get(peer)
        if waiting is None or request_id not in waiting:
            return
        waiting.discard(request_id)
        if not waiting:
            del self._unresumed[peer]
            if peer in self._held:
                asyncio.get_running_loop().call_soon(self._release, peer)

    def _release(self, peer: bytes) -> None:
        if self._closed or peer in self._unresumed:
            return  # another answer is on its way: released after its request() resumed
        for body in self._held.pop(peer, ()):
            self._notify(peer, body)

    def _notify(self, peer: bytes, body: Message) -> None:
        if self.on_notification is not None:
            try:
                self.on_notification(peer, body)
            except Exception:
                log.exception("notification handler failed")

    async def _serve(self, peer: bytes, frame: Frame) -> None:
        answer: Message
        if self.on_request is None:
            answer = Failure("internal", "this side does not serve requests")
        else:
            try:
                answer = await self.on_request(peer, frame.body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("request handler failed for %s", type(frame.body).__name__)
                answer = Failure("internal", f"{type(exc).__name__}: {exc}")
        try:
            await self._send(peer, Frame(PROTOCOL_VERSION, RESPONSE, frame.id, answer))
        except (PeerGone, IpcError) as exc:
            log.info("could not answer %r: %s", peer, exc)


def _configure(socket: zmq.asyncio.Socket) -> None:
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.MAXMSGSIZE, codec.MAX_MESSAGE_BYTES)


def router_channel(endpoints: list[str], context: zmq.asyncio.Context | None = None) -> Channel:
    """The gateway's side: a ROUTER bound to every endpoint (ipc:// and/or tcp://)."""
    ctx = context or zmq.asyncio.Context.instance()
    socket = ctx.socket(zmq.ROUTER)
    _configure(socket)
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # A worker that reconnects under the same id (after a gateway-side timeout) takes over.
    socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
    for endpoint in endpoints:
        socket.bind(endpoint)
    return Channel(socket, routed=True)


def dealer_channel(
    endpoint: str, identity: bytes, context: zmq.asyncio.Context | None = None
) -> Channel:
    """A worker's side: a DEALER connected to the gateway."""
    ctx = context or zmq.asyncio.Context.instance()
    socket = ctx.socket(zmq.DEALER)
    _configure(socket)
    socket.setsockopt(zmq.ROUTING_ID, identity)
    # Do not queue requests for a gateway that is not there; they would arrive stale.
    socket.setsockopt(zmq.IMMEDIATE, 1)
    socket.connect(endpoint)
    return Channel(socket, routed=False)
