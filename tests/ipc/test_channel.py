"""The ZeroMQ request channel over real sockets (ipc:// in a temp dir, and tcp://)."""

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import zmq

from ipc import codec
from ipc import messages as m
from ipc.channel import (
    ChannelClosed,
    PeerGone,
    RemoteFailure,
    RequestTimeout,
    dealer_channel,
    router_channel,
)


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/gateway.sock"


async def _pair(endpoint: str):  # type: ignore[no-untyped-def]
    router = router_channel([endpoint])
    router.start()
    dealer = dealer_channel(endpoint, b"w1")
    dealer.start()
    return router, dealer


async def test_requests_flow_both_ways(endpoint: str) -> None:
    router, dealer = await _pair(endpoint)

    async def gateway_side(peer: bytes, body: m.Message) -> m.Message:
        assert peer == b"w1" and isinstance(body, m.Hello)
        return m.Welcome(heartbeat_interval=0.25)

    async def worker_side(peer: bytes, body: m.Message) -> m.Message:
        if isinstance(body, m.CloseSession) and body.session_id == "gone":
            return m.Failure("unknown_session", "no such session")
        return m.Done()

    router.on_request = gateway_side
    dealer.on_request = worker_side
    hello = m.Hello("w1", 1, m.PROTOCOL_VERSION, "0", "host")
    assert await dealer.request(hello, timeout=5) == m.Welcome(0.25)
    assert await router.request(m.CloseSession("s"), peer=b"w1", timeout=5) == m.Done()
    with pytest.raises(RemoteFailure) as failure:
        await router.request(m.CloseSession("gone"), peer=b"w1", timeout=5)
    assert failure.value.code == "unknown_session"
    await dealer.close()
    await router.close()


async def test_notifications_arrive_after_earlier_responses(endpoint: str) -> None:
    router, dealer = await _pair(endpoint)
    seen: list[m.Message] = []
    router.on_notification = lambda peer, body: seen.append(body)

    async def serve(peer: bytes, body: m.Message) -> m.Message:
        return m.Welcome(1.0)

    router.on_request = serve
    await dealer.request(m.Hello("w1", 1, 1, "0", "h"), timeout=5)
    for i in range(20):
        await dealer.notify(m.SessionState(f"s{i}", "room", "connected"))
    for _ in range(100):
        if len(seen) == 20:
            break
        await asyncio.sleep(0.01)
    assert [s.session_id for s in seen] == [f"s{i}" for i in range(20)]  # type: ignore[union-attr]
    await dealer.close()
    await router.close()


async def test_request_times_out_when_nobody_answers(endpoint: str) -> None:
    router, dealer = await _pair(endpoint)

    async def hang(peer: bytes, body: m.Message) -> m.Message:
        await asyncio.sleep(30)
        return m.Done()

    dealer.on_request = hang
    await dealer.notify(m.SessionState("x", "r", "connected"))  # makes the peer known
    await asyncio.sleep(0.1)
    with pytest.raises(RequestTimeout):
        await router.request(m.CloseRoom("r"), peer=b"w1", timeout=0.2)
    await dealer.close()
    await router.close()


async def test_unknown_peer_is_reported_at_once(endpoint: str) -> None:
    router = router_channel([endpoint])
    router.start()
    with pytest.raises(PeerGone):
        await router.request(m.CloseRoom("r"), peer=b"nobody", timeout=5)
    await router.close()


async def test_fail_peer_and_close_fail_pending_requests(endpoint: str) -> None:
    router, dealer = await _pair(endpoint)

    async def hang(peer: bytes, body: m.Message) -> m.Message:
        await asyncio.sleep(30)
        return m.Done()

    dealer.on_request = hang
    await dealer.notify(m.SessionState("x", "r", "connected"))
    await asyncio.sleep(0.1)
    pending = asyncio.ensure_future(router.request(m.CloseRoom("r"), peer=b"w1", timeout=10))
    await asyncio.sleep(0.1)
    router.fail_peer(b"w1", "worker died")
    with pytest.raises(PeerGone, match="worker died"):
        await pending
    pending = asyncio.ensure_future(router.request(m.CloseRoom("r"), peer=b"w1", timeout=10))
    await asyncio.sleep(0.1)
    await router.close()
    with pytest.raises(ChannelClosed):
        await pending
    await dealer.close()


async def test_garbage_frames_are_counted_and_dropped(endpoint: str) -> None:
    router = router_channel([endpoint])
    router.start()
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.ROUTING_ID, b"evil")
    raw.connect(endpoint)
    raw.send(b"\xff\x00not msgpack")
    raw.send(codec.encode(m.Frame(1, 0, 1, m.Done()))[:-1])
    for _ in range(100):
        if router.bad_messages >= 2:
            break
        await asyncio.sleep(0.01)
    assert router.bad_messages == 2
    # The channel still serves real peers afterwards.
    dealer = dealer_channel(endpoint, b"w1")
    dealer.start()

    async def serve(peer: bytes, body: m.Message) -> m.Message:
        return m.Welcome(1.0)

    router.on_request = serve
    assert await dealer.request(m.Hello("w1", 1, 1, "0", "h"), timeout=5) == m.Welcome(1.0)
    raw.close(linger=0)
    await dealer.close()
    await router.close()


async def test_worker_in_another_process_over_tcp(tmp_path: Path) -> None:
    router = router_channel(["tcp://127.0.0.1:0"])
    port = router._socket.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1]
    router.start()
    got: asyncio.Queue[m.Message] = asyncio.Queue()

    async def serve(peer: bytes, body: m.Message) -> m.Message:
        await got.put(body)
        return m.Welcome(0.5)

    router.on_request = serve
    script = textwrap.dedent(
        f"""
        import asyncio
        from ipc import messages as m
        from ipc.channel import dealer_channel
        async def main():
            ch = dealer_channel("tcp://127.0.0.1:{port}", b"remote")
            ch.start()
            answer = await ch.request(m.Hello("remote", 1, 1, "0", "h"), timeout=5)
            print(answer.heartbeat_interval)
            await ch.close()
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    assert out.strip() == b"0.5"
    hello = got.get_nowait()
    assert isinstance(hello, m.Hello) and hello.worker_id == "remote"
    await router.close()
