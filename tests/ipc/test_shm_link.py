"""The plane's link (ipc/shm/link.py) over real AF_UNIX SEQPACKET sockets on a running loop.

Every test starts from, and must end with, no memfd, eventfd or socket of its own left open
in /proc/self/fd.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import select
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from ipc.shm import messages as m
from ipc.shm.link import (
    MAX_PLANE_NAME,
    Doorbell,
    Link,
    Listener,
    address,
    check_plane_name,
    connect,
)
from ipc.shm.ring import RingReader, RingWriter

REPO = Path(__file__).parents[2]


def plane_fds() -> set[tuple[int, str]]:
    """This process's open memfds of live-sfu, eventfds and sockets."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the directory's own fd, gone already
        if "memfd:live-sfu" in target or target == "anon_inode:[eventfd]":
            found.add((int(name), target))
        elif target.startswith("socket:"):
            found.add((int(name), target))
    return found


@pytest.fixture
def no_leaks() -> Iterator[None]:
    """Fails the test if it leaves a memfd, an eventfd or a socket open."""
    before = plane_fds()
    yield
    left = plane_fds() - before
    assert not left, f"left open: {sorted(left)}"


@pytest.fixture
def plane() -> str:
    return f"test-{os.getpid()}-{secrets.token_hex(4)}"


class End:
    """One end's handlers: keeps what arrived and which links closed."""

    def __init__(self, keep_fds: bool = True) -> None:
        self.messages: list[m.PlaneMessage] = []
        self.fds: list[list[int]] = []
        self.closed: list[Link] = []
        self.keep_fds = keep_fds

    def on_message(self, link: Link, message: m.PlaneMessage, fds: list[int]) -> None:
        self.messages.append(message)
        if self.keep_fds:
            self.fds.append(fds)
        else:
            for fd in fds:
                os.close(fd)

    def on_close(self, link: Link) -> None:
        self.closed.append(link)

    def close_fds(self) -> None:
        for fds in self.fds:
            for fd in fds:
                os.close(fd)
        self.fds.clear()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.002)


async def linked(plane: str, home: End, edge: End) -> tuple[Listener, Link, Link]:
    """A listener for `home`, an edge connected to it: (listener, home's link, edge's link)."""
    listener = Listener(plane, "home", home.on_message, home.on_close)
    edge_link = connect(plane, "home", edge.on_message, edge.on_close)
    await until(lambda: len(listener.links) == 1)
    (home_link,) = listener.links
    return listener, home_link, edge_link


def readable(fd: int, timeout: float = 0.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


# --- messages and fds both ways -------------------------------------------------------------


async def test_messages_rings_and_a_doorbell_travel_both_ways(plane: str, no_leaks: None) -> None:
    home, edge = End(), End()
    listener, home_link, edge_link = await linked(plane, home, edge)
    assert home_link.peer_pid == edge_link.peer_pid == os.getpid()
    assert home_link.peer_uid == edge_link.peer_uid == os.getuid()
    video = RingWriter("video", 16)
    audio = RingWriter("audio", 8)
    doorbell = Doorbell()
    try:
        # edge -> home: Join with the edge's doorbell, then a Follow.
        edge_link.send(m.Join("edge-1"), [doorbell.fd])
        edge_link.send(m.Follow(7, "room"))
        await until(lambda: len(home.messages) == 2)
        assert home.messages == [m.Join("edge-1"), m.Follow(7, "room")]
        (bell_fd,) = home.fds[0]
        assert home.fds[1] == []
        assert bell_fd != doorbell.fd  # a new descriptor of the same eventfd

        # home -> edge: the rings, memfds in `tracks` order.
        codec = m.CodecDescription("video", "video/VP8", 90000, 96, rtcp_feedback=[("nack", None)])
        tracks = [
            m.TrackRing("video", video.ring_id, video.slots, video.stride),
            m.TrackRing("audio", audio.ring_id, audio.slots, audio.stride),
        ]
        answer = m.Rings(7, "room", [codec], tracks)
        home_link.send(answer, [video.fd, audio.fd])
        await until(lambda: len(edge.messages) == 1)
        assert edge.messages == [answer]
        readers = [RingReader(fd, t.ring_id) for fd, t in zip(edge.fds[0], tracks, strict=True)]
        edge.close_fds()  # the mappings outlive the fds
        assert [r.kind for r in readers] == ["video", "audio"]

        # The home writes and rings; the edge's loop wakes and drains.
        loop = asyncio.get_running_loop()
        woke = loop.create_future()

        def wake() -> None:
            if not woke.done():
                woke.set_result(True)

        loop.add_reader(doorbell.fd, wake)
        video.write(1, 3000, 1, 0, 0, b"frame")
        audio.write(2, 960, 2, 0, 50, b"opus")
        assert not readable(doorbell.fd)
        Doorbell(bell_fd).ring()
        await asyncio.wait_for(woke, 5)
        loop.remove_reader(doorbell.fd)
        doorbell.clear()
        assert not readable(doorbell.fd)
        got: list[tuple[int, int, int, int, int, bytes]] = []
        for reader in readers:
            reader.drain(lambda *record: got.append(record))
        assert got == [(1, 3000, 1, 0, 0, b"frame"), (2, 960, 2, 0, 50, b"opus")]
        for reader in readers:
            reader.close()

        # edge -> home again, after the home answered.
        edge_link.send(m.KeyframeRequest("room", "video"))
        await until(lambda: len(home.messages) == 3)
        assert home.messages[2] == m.KeyframeRequest("room", "video")
        home.close_fds()  # bell_fd among them
    finally:
        edge_link.close()
        listener.close()
        doorbell.close()
        video.close()
        audio.close()


async def test_received_fds_are_close_on_exec(plane: str, no_leaks: None) -> None:
    """Every fd of the plane is made close-on-exec (MFD_CLOEXEC, EFD_CLOEXEC, SOCK_CLOEXEC,
    set_inheritable(False) on accept); those received by SCM_RIGHTS must be too, or a child
    the worker ever starts keeps rings alive. (Fails today: recv_fds is called without
    socket.MSG_CMSG_CLOEXEC, so received fds are inheritable.)"""
    home, edge = End(), End()
    listener, home_link, edge_link = await linked(plane, home, edge)
    doorbell = Doorbell()
    try:
        assert not os.get_inheritable(doorbell.fd)
        assert not os.get_inheritable(home_link.sock.fileno())
        edge_link.send(m.Join("edge-1"), [doorbell.fd])
        await until(lambda: len(home.fds) == 1)
        (received,) = home.fds[0]
        assert not os.get_inheritable(received)
    finally:
        home.close_fds()
        edge_link.close()
        listener.close()
        doorbell.close()


# --- EOF ------------------------------------------------------------------------------------


async def test_closing_one_end_closes_the_other_once(plane: str, no_leaks: None) -> None:
    home, edge = End(), End()
    listener, home_link, edge_link = await linked(plane, home, edge)
    edge_link.close()
    assert edge.closed == [edge_link] and edge_link.closed
    await until(lambda: bool(home.closed))
    assert home.closed == [home_link] and home_link.closed
    assert listener.links == set()
    edge_link.close()
    home_link.close()
    edge_link.send(m.Unfollow("room"))  # a closed link ignores sends
    await asyncio.sleep(0.05)
    assert edge.closed == [edge_link] and home.closed == [home_link]

    # The other way round: the home closes, the edge sees EOF.
    edge_link = connect(plane, "home", edge.on_message, edge.on_close)
    await until(lambda: len(listener.links) == 1)
    listener.close()
    assert len(home.closed) == 2
    await until(lambda: len(edge.closed) == 2)
    assert edge.closed[1] is edge_link
    assert edge.messages == home.messages == []


async def test_a_sigkilled_peer_closes_the_link(plane: str, no_leaks: None) -> None:
    home = End()
    listener = Listener(plane, "home", home.on_message, home.on_close)
    script = textwrap.dedent(
        """
        import socket, sys, time
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(bytes.fromhex(sys.argv[1]))
        print("connected", flush=True)
        time.sleep(60)
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, address(plane, "home").hex(), stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 10) == b"connected\n"
        await until(lambda: len(listener.links) == 1)
        (link,) = listener.links
        assert link.peer_pid == proc.pid
        proc.kill()
        assert await proc.wait() == -9
        await until(lambda: bool(home.closed))
        assert home.closed == [link] and link.closed
        assert listener.links == set()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        listener.close()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
async def test_a_peer_of_another_uid_is_refused(plane: str, no_leaks: None) -> None:
    home = End()
    listener = Listener(plane, "home", home.on_message, home.on_close)
    script = textwrap.dedent(
        """
        import os, socket, sys
        os.setgid(65534)
        os.setuid(65534)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(10)
        sock.connect(bytes.fromhex(sys.argv[1]))
        try:
            sock.send(bytes.fromhex(sys.argv[2]))
            print("closed" if sock.recv(100) == b"" else "data", flush=True)
        except (BrokenPipeError, ConnectionResetError):  # closed before or after our message
            print("closed", flush=True)
        """
    )
    hello = m.encode(m.Join("intruder")).hex()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, address(plane, "home").hex(), hello, stdout=subprocess.PIPE
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0
        assert out == b"closed\n"
        assert listener.refused == 1
        assert listener.links == set()
        assert home.messages == []
    finally:
        listener.close()


# --- addresses ------------------------------------------------------------------------------


def unix_socket_names() -> set[str]:
    """The bound names in /proc/net/unix (abstract ones start with @)."""
    lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    return {line.split()[-1] for line in lines if len(line.split()) == 8}


def files_named_like(plane: str) -> list[str]:
    """Files whose name holds `plane` at the top of /tmp, the cwd and the repository (where a
    relative or /tmp path bind would have put the socket)."""
    found = []
    for root in (Path("/tmp"), Path.cwd(), REPO):
        found += [str(path) for path in root.iterdir() if plane in path.name]
    return found


async def test_the_abstract_address_leaves_nothing_in_the_file_system(
    plane: str, no_leaks: None
) -> None:
    home = End()
    listener = Listener(plane, "home", home.on_message, home.on_close)
    try:
        assert address(plane, "home") == b"\0" + f"{plane}/home".encode()
        assert f"@{plane}/home" in unix_socket_names()
        assert files_named_like(plane) == []
        with pytest.raises(OSError):  # the name is taken while the listener lives
            Listener(plane, "home", home.on_message, home.on_close)
    finally:
        listener.close()
    listener.close()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        connect(plane, "home", home.on_message, home.on_close)
    again = Listener(plane, "home", home.on_message, home.on_close)
    edge = End()
    link = connect(plane, "home", edge.on_message, edge.on_close)
    await until(lambda: len(again.links) == 1)
    link.close()
    again.close()


@pytest.mark.parametrize(
    "name",
    ["", "a" * (MAX_PLANE_NAME + 1), "a/b", "a b", "plane\n", "é", "x\0y", "../up", "\u0661"],
)
def test_bad_plane_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="plane name"):
        check_plane_name(name)


def test_good_plane_names_are_kept() -> None:
    for name in ("a", "live-sfu_1.prod", "A" * MAX_PLANE_NAME):
        assert check_plane_name(name) == name


async def test_listener_and_connect_check_the_plane_name(no_leaks: None) -> None:
    end = End()
    with pytest.raises(ValueError):
        Listener("bad/name", "home", end.on_message, end.on_close)
    with pytest.raises(ValueError):
        connect("bad name", "home", end.on_message, end.on_close)


# --- hostile datagrams ----------------------------------------------------------------------


async def test_malformed_datagrams_are_dropped_and_their_fds_closed(
    plane: str, no_leaks: None
) -> None:
    home = End(keep_fds=False)

    def on_message(link: Link, message: m.PlaneMessage, fds: list[int]) -> None:
        if isinstance(message, m.Unfollow) and message.room == "boom":
            raise RuntimeError("a handler that fails")  # the link closes its fds
        home.on_message(link, message, fds)

    listener = Listener(plane, "home", on_message, home.on_close)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        raw.connect(address(plane, "home"))
        await until(lambda: len(listener.links) == 1)
        (link,) = listener.links
        before = plane_fds()
        ring = RingWriter("video", 8)
        bells = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(9)]
        valid = m.encode(m.Join("edge"))
        hostile: list[tuple[bytes, list[int]]] = [
            (b"\xff\x00not msgpack", [ring.fd]),
            (msgspec.msgpack.encode({"t": "nope", "room": "r"}), [bells[0]]),
            (msgspec.msgpack.encode({"t": "unfollow", "room": "r", "extra": 1}), [bells[1]]),
            (msgspec.msgpack.encode({"t": "unfollow", "room": 5}), [ring.fd, bells[2]]),
            (valid[:-1], [bells[3]]),  # truncated
            (valid + b"\x00" * (m.MAX_MESSAGE_BYTES + 10), [ring.fd]),  # oversized: MSG_TRUNC
            (valid, bells),  # nine fds where eight fit: MSG_CTRUNC
            (m.encode(m.Unfollow("boom")), [ring.fd, bells[4]]),  # the handler raises
        ]
        for data, fds in hostile:
            socket.send_fds(raw, [data], fds)
        socket.send_fds(raw, [m.encode(m.Unfollow("after"))], [bells[5]])
        await until(lambda: len(home.messages) == 1)
        assert home.messages == [m.Unfollow("after")]
        assert not link.closed and listener.links == {link} and home.closed == []
        # The sender's own fds closed, nothing the link received is left open.
        ring.close()
        for fd in bells:
            os.close(fd)
        assert plane_fds() == before
        # Still serving.
        raw.send(m.encode(m.Unfollow("still")))
        await until(lambda: len(home.messages) == 2)
        assert home.messages[1] == m.Unfollow("still")
    finally:
        raw.close()
        listener.close()


# --- a full socket --------------------------------------------------------------------------


def fill(link: Link, fds: list[int], limit: int = 5000) -> int:
    """Send (each message with `fds`) until the link starts queueing: nothing reads the other
    end meanwhile, as long as the caller does not yield to the loop."""
    for count in range(limit):
        link.send(m.KeyframeRequest(str(count), "video"), fds)
        if link._outbox:
            return count + 1
    raise AssertionError("the socket never filled")


async def test_sends_to_a_full_socket_are_queued_in_order_and_all_arrive(
    plane: str, no_leaks: None
) -> None:
    home, edge = End(), End()
    listener, home_link, edge_link = await linked(plane, home, edge)
    ring = RingWriter("audio", 4)
    ring.write(9, 960, 0, 0, 0, b"queued")
    try:
        # All synchronous: the home's loop callback cannot read in between. Every message
        # carries the doorbell, the first one queued included.
        bell = Doorbell()
        sent = fill(edge_link, [bell.fd])
        assert sent > 10
        edge_link.send(m.Join("queued behind"), [bell.fd])
        bell.close()  # the queue holds its own copies
        edge_link.send(m.Rings(1, "room", [], []), [ring.fd])
        for extra in range(50):
            edge_link.send(m.KeyframeRequest(f"extra {extra}", "audio"))
        assert len(edge_link._outbox) == 53
        await until(lambda: len(home.messages) == sent + 52)
        expected: list[m.PlaneMessage] = [m.KeyframeRequest(str(i), "video") for i in range(sent)]
        expected += [m.Join("queued behind"), m.Rings(1, "room", [], [])]
        expected += [m.KeyframeRequest(f"extra {extra}", "audio") for extra in range(50)]
        assert home.messages == expected
        assert not edge_link._outbox and not home_link.closed and not edge_link.closed
        assert [len(fds) for fds in home.fds] == [1] * (sent + 2) + [0] * 50
        # One eventfd behind every copy: rung through the queued ones, read through the first.
        bells = [fds[0] for fds in home.fds[: sent + 1]]
        for fd in bells[-2:]:
            os.eventfd_write(fd, 3)
        assert os.eventfd_read(bells[0]) == 6
        ring_fd = home.fds[sent + 1][0]
        reader = RingReader(ring_fd, ring.ring_id)
        assert reader.record(0) == (9, 960, 0, 0, 0, b"queued")
        reader.close()
        home.close_fds()
        # Flushed: sends go straight out again.
        edge_link.send(m.Unfollow("room"))
        assert not edge_link._outbox
        await until(lambda: len(home.messages) == sent + 53)
    finally:
        edge_link.close()
        listener.close()
        ring.close()
    assert home.closed == [home_link]


async def test_closing_a_link_with_a_queue_closes_the_queued_fds(
    plane: str, no_leaks: None
) -> None:
    home, edge = End(), End()
    listener, _home_link, edge_link = await linked(plane, home, edge)
    try:
        fill(edge_link, [])
        for _ in range(3):
            bell = Doorbell()
            edge_link.send(m.Join("queued"), [bell.fd])
            bell.close()
        assert len(edge_link._outbox) == 4
        edge_link.close()
        assert not edge_link._outbox
        await until(lambda: bool(home.closed))
    finally:
        edge_link.close()
        listener.close()
        home.close_fds()
