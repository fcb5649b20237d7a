"""The ZeroMQ request channel over real sockets (ipc:// in a temp dir, and tcp://)."""

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from ipc import codec
from ipc import messages as m
from ipc.channel import (
    Channel,
    ChannelClosed,
    PeerGone,
    RemoteFailure,
    RequestTimeout,
    dealer_channel,
    router_channel,
)

REPO = Path(__file__).resolve().parents[2]

# What the worker notifies right after each answer: several, to check their own order too.
STATES: tuple[m.SessionStateName, ...] = ("connected", "closed", "connected")


@pytest.fixture
def endpoint(tmp_path: Path) -> str:
    return f"ipc://{tmp_path}/gateway.sock"


async def _pair(endpoint: str) -> tuple[Channel, Channel]:
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


async def test_a_notification_sent_after_a_response_is_handled_after_the_requester_resumed(
    endpoint: str,
) -> None:
    """mediasoup's rule (its issue #510): a worker that answers a request and then notifies
    about what it created must not have the notification handled before the code awaiting the
    answer ran, or the gateway sees a SessionState for a session it does not know yet.

    The worker here is a raw DEALER that writes the response and three notifications back to
    back, so the gateway's reader usually finds all four frames queued at once: a channel
    that dispatched notifications as it read them would run the handler first, every round.
    """
    router = router_channel([endpoint])
    router.start()
    raw = zmq.asyncio.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.ROUTING_ID, b"w1")
    raw.connect(endpoint)
    known: set[str] = set()  # what the requesting code registered once answered
    seen: list[tuple[str, str, bool]] = []  # (session, state, known when handled)

    def on_notification(peer: bytes, body: m.Message) -> None:
        assert isinstance(body, m.SessionState)
        seen.append((body.session_id, body.state, body.session_id in known))

    router.on_notification = on_notification

    async def worker() -> None:
        while True:
            request = codec.decode(await raw.recv())
            assert isinstance(request.body, m.CloseSession)
            session_id = request.body.session_id
            frames = [m.Frame(m.PROTOCOL_VERSION, m.RESPONSE, request.id, m.Done())]
            for state in STATES:
                body = m.SessionState(session_id, "room", state)
                frames.append(m.Frame(m.PROTOCOL_VERSION, m.NOTIFICATION, 0, body))
            for frame in frames:
                await raw.send(codec.encode(frame))

    # The router learns the worker's routing id from its first frame.
    hello = m.SessionState("hello", "room", "connected")
    await raw.send(codec.encode(m.Frame(m.PROTOCOL_VERSION, m.NOTIFICATION, 0, hello)))
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.01)
    assert seen == [("hello", "connected", False)]
    seen.clear()
    serving = asyncio.ensure_future(worker())
    try:
        for i in range(20):
            answer = await router.request(m.CloseSession(f"s{i}"), peer=b"w1", timeout=5)
            assert answer == m.Done()
            known.add(f"s{i}")  # synchronously after the answer, as the gateway's code does
            await asyncio.sleep(0.005)
        for _ in range(100):
            if len(seen) == 60:
                break
            await asyncio.sleep(0.01)
    finally:
        serving.cancel()
        raw.close(linger=0)
        await router.close()
    assert seen == [(f"s{i}", state, True) for i in range(20) for state in STATES]


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


async def test_request_to_a_gateway_that_is_not_there_times_out(endpoint: str) -> None:
    """A DEALER with no connected peer waits in send: the timeout must cover it, or a worker
    whose gateway is gone never gives up (nor hears SIGTERM's stop between tries)."""
    dealer = dealer_channel(endpoint, b"w1")  # nothing listens on the endpoint
    dealer.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RequestTimeout):
        await dealer.request(m.CloseRoom("r"), timeout=0.3)
    assert loop.time() - started < 2.0
    await dealer.close()


async def test_worker_without_a_gateway_exits_after_gateway_timeout(tmp_path: Path) -> None:
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfu", "--connect", f"ipc://{tmp_path}/nobody.sock",
        "--gateway-timeout", "1", "--bind-addresses", "127.0.0.1",
        cwd=REPO,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(worker.communicate(), 20)
    except TimeoutError:
        worker.kill()
        await worker.wait()
        pytest.fail("a worker without a gateway did not exit after GATEWAY_TIMEOUT")
    assert worker.returncode == 1, stderr.decode()[-2000:]
    assert b"no gateway at" in stderr


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
    raw: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
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
    port = router._socket.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1]
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
