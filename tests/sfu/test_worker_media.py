"""One worker process, real aiortc peers over loopback UDP, the real IPC protocol."""

from __future__ import annotations

import asyncio
import os
import struct

import pylibsrtp
import pytest

from ipc import messages as m
from ipc.channel import RemoteFailure
from tests.sfu.conftest import WorkerHarness
from tests.sfu.media import accept, new_pc, publisher_offer, viewer_offer, wait_for


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


def _udp_sockets(pid: int) -> int:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as rows:
            next(rows)
            count += sum(1 for row in rows if row.split()[9] in inodes)
    return count


async def _open_publisher(worker: WorkerHarness, room: str = "r1", session: str = "pub"):  # type: ignore[no-untyped-def]
    pc = new_pc()
    offer = await publisher_offer(pc)
    answer = await worker.request(m.OpenSession("publisher", room, session, offer))
    assert isinstance(answer, m.SessionAnswer)
    return pc, answer


async def _open_viewer(worker: WorkerHarness, room: str, session: str):  # type: ignore[no-untyped-def]
    pc = new_pc()
    offer, counter = await viewer_offer(pc)
    answer = await worker.request(m.OpenSession("subscriber", room, session, offer))
    assert isinstance(answer, m.SessionAnswer)
    await accept(pc, answer.answer)
    return pc, counter


async def test_viewers_decode_what_the_worker_forwards_without_decoding(
    worker: WorkerHarness,
) -> None:
    publisher, answer = await _open_publisher(worker)
    await accept(publisher, answer.answer)
    viewers = [await _open_viewer(worker, "r1", f"v{i}") for i in range(2)]
    for _, counter in viewers:
        await wait_for(lambda c=counter: c.frames["video"] >= 30 and c.frames["audio"] >= 50)
        assert counter.sizes[0] == (320, 240)
    # aiortc starts a decoder thread per received track; the worker must not keep any.
    # (The first session also warms libuv's resolver pool, so compare from here on.)
    threads_before = _threads(worker.process.pid)
    second, second_answer = await _open_publisher(worker, room="r2", session="pub2")
    await accept(second, second_answer.answer)
    await wait_for(
        lambda: any(s.session_id == "pub2" and s.state == "connected" for s in worker.states)
    )
    await asyncio.sleep(1.0)
    assert _threads(worker.process.pid) <= threads_before
    await second.close()
    await wait_for(lambda: any(h.forwarded_packets_per_s > 0 for h in worker.heartbeats))
    for pc, _ in viewers:
        await pc.close()
    await publisher.close()


async def test_viewer_joining_before_media_gets_it_when_it_starts(worker: WorkerHarness) -> None:
    publisher, answer = await _open_publisher(worker)
    viewer, counter = await _open_viewer(worker, "r1", "early")
    await asyncio.sleep(0.5)
    assert counter.frames["video"] == 0
    await accept(publisher, answer.answer)  # only now does the publisher connect and send
    await wait_for(lambda: counter.frames["video"] >= 10 and counter.frames["audio"] >= 10)
    await viewer.close()
    await publisher.close()


async def test_second_publisher_and_unknown_room_are_refused(worker: WorkerHarness) -> None:
    publisher, _ = await _open_publisher(worker)
    with pytest.raises(RemoteFailure) as second:
        await _open_publisher(worker, session="pub2")
    assert second.value.code == "publisher_exists"
    pc = new_pc()
    offer, _ = await viewer_offer(pc)
    with pytest.raises(RemoteFailure) as unknown:
        await worker.request(m.OpenSession("subscriber", "no-such-room", "v", offer))
    assert unknown.value.code == "no_room"
    with pytest.raises(RemoteFailure) as bad:
        await worker.request(m.OpenSession("publisher", "r2", "p2", "v=0\r\nnonsense"))
    assert bad.value.code == "bad_offer"
    await pc.close()
    await publisher.close()


async def test_hostile_packets_are_dropped_and_the_publisher_survives(
    worker: WorkerHarness,
) -> None:
    publisher, answer = await _open_publisher(worker)
    await accept(publisher, answer.answer)
    viewer, counter = await _open_viewer(worker, "r1", "v")
    await wait_for(lambda: counter.frames["video"] >= 10)
    dtls = publisher.getTransceivers()[0].sender.transport
    delivered = set()
    for round_ in range(20):
        # Each hostile RTP packet has its own SSRC and sequence number: SRTP's replay
        # protection would otherwise discard repeats before they reach the forwarder.
        def header(seq: int, ssrc: int, first: int = 0x90, pt: int = 97) -> bytes:
            return struct.pack("!BBHII", first, pt, seq, 1, ssrc)

        hostile = [
            # abs-send-time (id 3 in aiortc's offer) with a 1-byte body: struct.error
            header(round_, 0x1000) + b"\xbe\xde\x00\x01" + b"\x30\x00\x00\x00" + b"payload",
            header(round_, 0x2000) + b"\xbe\xde\x00\x07" + b"\x00" * 4,  # overlong ext
            header(round_, 0x3000, first=0x8F) + b"\x00" * 8,  # 15 CSRCs announced
            header(round_, 0x4000, first=0x80, pt=55) + b"unknown payload type",
            bytes([0x81, 205, 0x00, 0x09]) + b"\x00" * 8,  # RTCP longer than sent
            bytes([0x80, 206, 0x00, 0x01]) + b"\x00" * 4,  # RTCP PSFB shorter than its header
        ]
        for index, packet in enumerate(hostile):
            try:
                await dtls._send_rtp(packet)
            except pylibsrtp.Error:
                continue  # libsrtp refuses to protect it, so it cannot reach the worker
            delivered.add(index)
    assert {0, 3, 4, 5} <= delivered
    # Unencrypted garbage straight onto the media socket, too.
    pair = dtls.transport._connection._nominated[1]
    for size in (1, 12, 200, 1400):
        pair.protocol.transport.sendto(bytes([0x80]) + os.urandom(size), pair.remote_addr)
    frames_after_attack = counter.frames["video"]
    await wait_for(lambda: counter.frames["video"] >= frames_after_attack + 30)
    await wait_for(lambda: worker.heartbeats[-1].dropped_packets >= 20 * len(delivered), 5)
    assert not any(s.state == "closed" for s in worker.states)
    assert worker.process.poll() is None
    heartbeats = len(worker.heartbeats)
    await wait_for(lambda: len(worker.heartbeats) > heartbeats + 2)
    await viewer.close()
    await publisher.close()


async def test_unconnected_session_is_reaped_at_its_deadline(worker: WorkerHarness) -> None:
    pc = new_pc()
    offer = await publisher_offer(pc)
    await worker.request(m.OpenSession("publisher", "r1", "never", offer))
    # The offer is answered but the client never connects; the deadline here is 5 s.
    await wait_for(
        lambda: any(s.session_id == "never" and s.state == "closed" for s in worker.states), 10
    )
    closed = next(s for s in worker.states if s.session_id == "never")
    assert "not connected within 5 s" in closed.reason
    await pc.close()


async def test_close_session_releases_sockets(worker: WorkerHarness) -> None:
    pid = worker.process.pid
    baseline = _udp_sockets(pid)
    publisher, answer = await _open_publisher(worker)
    await accept(publisher, answer.answer)
    viewer, counter = await _open_viewer(worker, "r1", "v")
    await wait_for(lambda: counter.frames["video"] >= 5)
    assert _udp_sockets(pid) >= baseline + 2
    assert await worker.request(m.CloseSession("v")) == m.Done()
    assert await worker.request(m.CloseSession("pub")) == m.Done()
    await wait_for(lambda: _udp_sockets(pid) == baseline, 5)
    with pytest.raises(RemoteFailure):
        await worker.request(m.CloseSession("pub"))
    await viewer.close()
    await publisher.close()


def _candidates(sdp: str) -> list[tuple[str, int]]:
    found = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            found.append((parts[4], int(parts[5])))
    return found


@pytest.mark.parametrize(
    "worker_args",
    [["--udp-ports", "42100-42109", "--public-ip", "203.0.113.9"]],
    indirect=True,
)
async def test_port_range_and_announced_address(worker: WorkerHarness) -> None:
    pc = new_pc()
    offer = await publisher_offer(pc)
    answer = await worker.request(m.OpenSession("publisher", "r1", "p", offer))
    assert isinstance(answer, m.SessionAnswer)
    candidates = _candidates(answer.answer)
    assert candidates
    assert all(42100 <= port <= 42109 for _ip, port in candidates)
    # The public address first (ffmpeg takes the first), the host's own after it (a client
    # on the same LAN still reaches it).
    assert candidates[0][0] == "203.0.113.9"
    assert {ip for ip, _port in candidates} == {"203.0.113.9", "127.0.0.1"}
    await pc.close()


@pytest.mark.parametrize("replace_with", ["mdns", "nothing"])
async def test_offer_without_usable_candidates_connects_peer_reflexively(
    worker: WorkerHarness, replace_with: str
) -> None:
    """Browsers hide host addresses behind mDNS names; OBS and ffmpeg send no candidates."""
    publisher = new_pc()
    offer = await publisher_offer(publisher)

    def hide(line: str) -> str:
        if not line.startswith("a=candidate:"):
            return line
        if replace_with == "nothing":
            return ""
        parts = line.split(" ")
        parts[4] = "0f6e5d4c-3b2a-4190-8877-665544332211.local"
        return " ".join(parts)

    hidden = "\r\n".join(h for h in (hide(line) for line in offer.splitlines()) if h)
    assert "a=end-of-candidates" in hidden
    answer = await worker.request(m.OpenSession("publisher", "r1", "pub", hidden + "\r\n"))
    assert isinstance(answer, m.SessionAnswer)
    await accept(publisher, answer.answer)
    await wait_for(
        lambda: any(s.session_id == "pub" and s.state == "connected" for s in worker.states)
    )
    await publisher.close()


async def test_viewers_receive_truthful_sender_reports(worker: WorkerHarness) -> None:
    publisher, answer = await _open_publisher(worker)
    await accept(publisher, answer.answer)
    viewer, counter = await _open_viewer(worker, "r1", "v")
    await wait_for(lambda: counter.frames["video"] >= 60)

    async def reported() -> dict[str, int]:
        stats = await viewer.getStats()
        return {s.kind: s.packetsSent for s in stats.values() if s.type == "remote-outbound-rtp"}

    sent: dict[str, int] = {}
    for _ in range(60):
        sent = await reported()
        if sent.get("video", 0) > 0 and sent.get("audio", 0) > 0:
            break
        await asyncio.sleep(0.1)
    received = {
        s.kind: s.packetsReceived
        for s in (await viewer.getStats()).values()
        if s.type == "inbound-rtp"
    }
    for kind in ("video", "audio"):
        # A sender report describes what was forwarded up to its send time: never more
        # than the viewer has received by now plus what is in flight.
        assert 0 < sent[kind] <= received[kind] + 50, (kind, sent, received)
    await viewer.close()
    await publisher.close()


async def test_publisher_gets_receiver_reports(worker: WorkerHarness) -> None:
    publisher, answer = await _open_publisher(worker)
    await accept(publisher, answer.answer)

    async def reported_kinds() -> set[str]:
        stats = await publisher.getStats()
        return {s.kind for s in stats.values() if s.type == "remote-inbound-rtp"}

    kinds: set[str] = set()
    for _ in range(60):  # aiortc sends a receiver report every 0.5-1.5 s
        kinds = await reported_kinds()
        if kinds == {"audio", "video"}:
            break
        await asyncio.sleep(0.1)
    assert kinds == {"audio", "video"}
    await publisher.close()
