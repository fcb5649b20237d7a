"""The link between two local workers of a plane: a Unix SEQPACKET socket.

Why a Unix socket next to ZeroMQ: file descriptors (ring memfds, doorbell eventfds) can only
travel as SCM_RIGHTS ancillary data, which ZeroMQ cannot carry. SEQPACKET keeps message
boundaries and order, and tells each end at once when the other dies (EOF), which is how an
edge learns that its home is gone.

Addresses are in Linux's abstract namespace (`\\0<plane>/<worker id>`): nothing is created
in the file system, so nothing is left behind by a SIGKILLed worker. Abstract sockets have
no file permissions, so the listener accepts only peers of its own uid (SO_PEERCRED).

Control traffic only (follows, keyframe requests, a few per second at most): a send that
would block is queued and flushed when the socket is writable, never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import Callable, Sequence

from ipc.shm.messages import MAX_FDS, MAX_MESSAGE_BYTES, PlaneMessage, decode, encode

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # pid, uid, gid
MAX_PLANE_NAME = 64


def address(plane: str, worker_id: str) -> bytes:
    """The abstract-namespace address of a worker's listener."""
    return b"\0" + f"{plane}/{worker_id}".encode()


def check_plane_name(name: str) -> str:
    """ValueError unless `name` is 1-64 of A-Z a-z 0-9 . _ -."""
    if not 1 <= len(name) <= MAX_PLANE_NAME or not all(
        c.isascii() and (c.isalnum() or c in "._-") for c in name
    ):
        raise ValueError("a plane name is 1 to 64 of A-Z a-z 0-9 . _ -")
    return name


def _close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


_FDS_SPACE = socket.CMSG_LEN(MAX_FDS * 4)


def _receive(sock: socket.socket) -> tuple[bytes, list[int], int]:
    """One datagram and its descriptors, which are close-on-exec (socket.recv_fds cannot ask
    for that: it does not pass its flags on in Python 3.11)."""
    data, ancillary, flags, _addr = sock.recvmsg(
        MAX_MESSAGE_BYTES, _FDS_SPACE, socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += struct.unpack(f"{usable // 4}i", payload[:usable])
    return data, fds, flags


MessageHandler = Callable[["Link", PlaneMessage, list[int]], None]
CloseHandler = Callable[["Link"], None]


class Link:
    """One end of a link. Received fds belong to the message handler (it must close them)."""

    def __init__(
        self,
        sock: socket.socket,
        on_message: MessageHandler,
        on_close: CloseHandler,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.on_message = on_message
        self.on_close = on_close
        pid, uid, _gid = _UCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        self.peer_pid = pid
        self.peer_uid = uid
        self.peer_id = ""  # the peer's worker id, once it said so
        self.closed = False
        self._outbox: deque[tuple[bytes, list[int]]] = deque()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def send(self, message: PlaneMessage, fds: Sequence[int] = ()) -> None:
        """Send now, or queue (the fds duplicated) until the socket is writable."""
        if self.closed:
            return
        data = encode(message)
        if self._outbox:
            self._outbox.append((data, [os.dup(fd) for fd in fds]))
            return
        try:
            socket.send_fds(self.sock, [data], list(fds))
        except BlockingIOError:
            self._outbox.append((data, [os.dup(fd) for fd in fds]))
            self._loop.add_writer(self.sock.fileno(), self._writable)
        except OSError as exc:
            log.info("plane link to %s: send failed: %s", self.peer_id or self.peer_pid, exc)
            self.close()

    def _writable(self) -> None:
        while self._outbox:
            data, fds = self._outbox[0]
            try:
                socket.send_fds(self.sock, [data], fds)
            except BlockingIOError:
                return
            except OSError:
                self.close()
                return
            self._outbox.popleft()
            _close_fds(fds)
        self._loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        # Several messages may be waiting; take what is there without blocking.
        for _ in range(64):
            try:
                data, fds, flags = _receive(self.sock)
            except BlockingIOError:
                return
            except OSError as exc:
                log.info("plane link to %s: %s", self.peer_id or self.peer_pid, exc)
                self.close()
                return
            if not data:
                _close_fds(fds)
                self.close()  # EOF: the peer closed or died
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                _close_fds(fds)
                log.warning("plane link to %s: oversized message dropped", self.peer_pid)
                continue
            try:
                message = decode(data)
            except ValueError as exc:
                _close_fds(fds)
                log.warning("plane link to %s: %s", self.peer_id or self.peer_pid, exc)
                continue
            try:
                self.on_message(self, message, fds)
            except Exception:
                _close_fds(fds)
                log.exception("plane link: handling %s failed", type(message).__name__)
            if self.closed:
                return

    def close(self) -> None:
        """Idempotent; the close handler runs once, whoever closed."""
        if self.closed:
            return
        self.closed = True
        fileno = self.sock.fileno()
        if fileno >= 0:
            self._loop.remove_reader(fileno)
            self._loop.remove_writer(fileno)
        self.sock.close()
        for _data, fds in self._outbox:
            _close_fds(fds)
        self._outbox.clear()
        self.on_close(self)


class Listener:
    """A worker's listening socket on the plane; accepts links from its own uid only."""

    def __init__(
        self,
        plane: str,
        worker_id: str,
        on_message: MessageHandler,
        on_close: CloseHandler,
    ) -> None:
        self.address = address(check_plane_name(plane), worker_id)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(self.address)
            self.sock.listen(64)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self._on_message = on_message
        self._on_close = on_close
        self.links: set[Link] = set()
        self.refused = 0
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("plane listener: accept failed: %s", exc)
                return
            conn.set_inheritable(False)
            try:
                link = Link(conn, self._on_message, self._closed)
            except OSError:
                conn.close()
                continue
            if link.peer_uid != os.getuid():
                self.refused += 1
                log.warning(
                    "plane: refused a link from pid %d (uid %d)", link.peer_pid, link.peer_uid
                )
                link.close()
                continue
            self.links.add(link)

    def _closed(self, link: Link) -> None:
        self.links.discard(link)
        self._on_close(link)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()
        for link in list(self.links):
            link.close()


def connect(plane: str, worker_id: str, on_message: MessageHandler, on_close: CloseHandler) -> Link:
    """A link to the listener of `worker_id`; OSError (ECONNREFUSED) when it is not there.

    A Unix connect completes at once (or is refused), so it is done blocking."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(1.0)
        sock.connect(address(check_plane_name(plane), worker_id))
    except OSError:
        sock.close()
        raise
    return Link(sock, on_message, on_close)


class Doorbell:
    """An eventfd: the writer rings it at most once per loop turn, the reader's loop wakes."""

    def __init__(self, fd: int | None = None) -> None:
        """fd: an eventfd received from the reader; None: make one (the reader's side)."""
        self.fd = fd if fd is not None else os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def ring(self) -> None:
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:
            pass  # the counter is saturated: the reader will wake all the same

    def clear(self) -> None:
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
