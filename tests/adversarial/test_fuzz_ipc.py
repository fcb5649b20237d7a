"""Property-based fuzzing of the IPC protocol, from both ends.

(a) The gateway's ROUTER: raw ZeroMQ DEALERs connect to `ipc://<IPC_DIR>/gateway.sock` (the
    socket a local process can reach) and send random multipart messages, random msgpack,
    Frames with wrong versions, kinds and ids, Hellos that must be refused (bad tokens,
    `local-*` ids, huge ids), Heartbeats from workers nobody knows, and SessionState
    notifications about a real session that is not theirs. The gateway must answer every
    request with a response, register nobody, keep its real worker (same pid), leave the
    real session alone, and still publish afterwards.
(b) A real worker (`python -m sfu --connect ...`) against a ROUTER this test binds: it is
    welcomed as registry.py would welcome it, then gets fuzzed requests (OpenSession of
    publishers and subscribers with fuzzed offers and names, AddCandidates with junk, closes
    of unknown ids, requests it does not serve) and undecodable bytes. It must stay alive, keep
    heartbeating, answer every request with a response of an allowed type (a Failure with a
    known code; `internal` only where the protocol says so), leak no session, and still
    answer a valid publisher's OpenSession with a SessionAnswer afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from ipc import codec
from ipc import messages as m
from testkit.processes import GatewayProcess, start_gateway
from tests.adversarial.fuzz_sdp import (
    PUBLISH_OFFERS,
    REPO,
    VALID_PUBLISH,
    VALID_VIEW,
    VIEW_OFFERS,
    candidate_values,
    http_request,
    metric_sum,
    mid_values,
    offer_cases,
    process_children,
    shown,
    write_summary,
)

ADMIN_TOKEN = "fuzz-ipc-admin"
WORKER_TOKEN = "fuzz-ipc-worker-secret"
SDP = {"Content-Type": "application/sdp"}
COMMON = settings(
    deadline=None,
    derandomize=True,
    # No explain phase: its line tracing (sys.settrace on Python 3.11) multiplies the time of
    # every replay of a failing example against live processes.
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)
GATEWAY_EXAMPLES = 260
WORKER_EXAMPLES = 200
ANSWER_TIMEOUT_S = 10.0
# Routing ids of the fuzzing DEALERs (never a real worker's: ROUTER_HANDOVER would let one
# take over that worker's connection, which is the trusted IPC_DIR's business, not fuzzing).
SOCKET_IDS = (b"fuzz-a", b"local-9", b"\xff\xfe\x01", b"y" * 255)
# The requests a worker serves; anything else it answers with Failure("internal").
WORKER_SERVES = (m.OpenSession, m.AddCandidates, m.CloseSession, m.CloseRoom)
SUMMARY: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    """Set up first, torn down last: after both fuzz fixtures have filled SUMMARY."""
    yield
    for side, figures in SUMMARY.items():
        print(f"fuzz-ipc {side}: {figures['inputs']} inputs; sent {figures['sent']}; "
              f"answers {figures['answers']}; {figures['wall_s']} s")  # fmt: skip
        for kind, violation in figures.get("violations", {}).items():
            print(f"fuzz-ipc {side} VIOLATION {kind} x{violation['count']}: {violation['input']}")
    write_summary("ipc", SUMMARY)


# --- strategies -----------------------------------------------------------------------------

texts = st.one_of(
    st.text(max_size=24),
    st.sampled_from(["", "x" * 65, "z" * 9000, "local-0", "local-9", "\x00", "\ud7ff"]),
)
big_ints = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 2**31, 2**32, 2**63 - 1, 2**64 - 1, -(2**63)]),
)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.25))
msgpack_values = st.recursive(
    st.none() | st.booleans() | big_ints | floats | st.text(max_size=16) | st.binary(max_size=16),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=16,
)


def room_stats() -> st.SearchStrategy[m.RoomStats]:
    return st.builds(
        m.RoomStats,
        name=texts,
        publisher_state=st.sampled_from(["none", "connecting", "connected"]),
        tracks=st.lists(st.tuples(texts, texts), max_size=3),
        subscribers=big_ints,
        packets_in=big_ints,
        closed=st.booleans(),
    )


def heartbeats() -> st.SearchStrategy[m.Heartbeat]:
    return st.builds(
        m.Heartbeat,
        rooms=st.lists(texts, max_size=5),
        sessions=big_ints,
        forwarded_packets_per_s=floats,
        cpu=floats,
        rss_bytes=big_ints,
        loop_lag_s=floats,
        packets_in=big_ints,
        packets_out=big_ints,
        bytes_out=big_ints,
        dropped_packets=big_ints,
        room_stats=st.lists(room_stats(), max_size=4),
    )


def any_message(session_ids: list[str], rooms: list[str]) -> st.SearchStrategy[m.Message]:
    """Every message type, well-typed but with hostile values."""
    session_id = st.one_of(st.sampled_from(session_ids), texts)
    room = st.one_of(st.sampled_from(rooms), texts)
    return st.one_of(
        st.builds(
            m.Hello,
            # Mostly the sending socket's own routing id, so that the token, `local-*` and
            # pid checks are what refuses it (not the id mismatch).
            worker_id=st.one_of(st.sampled_from(["fuzz-a", "local-9"]), texts),
            pid=big_ints,
            protocol=st.one_of(st.just(m.PROTOCOL_VERSION), big_ints),
            version=texts,
            hostname=texts,
            token=st.sampled_from(["", "wrong", WORKER_TOKEN[:-1], WORKER_TOKEN + "\x00"]),
            local=st.booleans(),
        ),
        st.builds(m.Welcome, heartbeat_interval=floats),
        heartbeats(),
        st.just(m.HeartbeatAck()),
        st.just(m.Reregister()),
        st.builds(
            m.OpenSession,
            kind=st.sampled_from(["publisher", "subscriber"]),
            room=room,
            session_id=session_id,
            offer=texts,
        ),
        st.builds(m.SessionAnswer, answer=texts, ice_ufrag=texts, ice_pwd=texts),
        st.builds(
            m.AddCandidates,
            session_id=session_id,
            candidates=st.lists(st.one_of(candidate_values(), texts), max_size=4),
            mid=st.one_of(st.none(), mid_values()),
            end_of_candidates=st.booleans(),
        ),
        st.builds(m.CloseSession, session_id=session_id),
        st.builds(m.CloseRoom, room=room),
        st.just(m.Done()),
        st.builds(m.Failure, code=st.sampled_from(sorted(m.FAILURE_CODES)), message=texts),
        st.builds(
            m.SessionState,
            session_id=session_id,
            room=room,
            state=st.sampled_from(["closed", "connected"]),
            reason=texts,
        ),
    )


TAGS = [
    "hello", "welcome", "heartbeat", "heartbeat_ack", "reregister", "open_session",
    "session_answer", "add_candidates", "close_session", "close_room",
    "done", "failure", "session_state", "bogus", "",
]  # fmt: skip


@st.composite
def raw_payloads(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    """(category, message parts) that are not a well-typed Frame, or only nearly one."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return "random bytes", [draw(st.binary(max_size=300))]
    if choice == 1:
        return "multipart", draw(st.lists(st.binary(max_size=40), min_size=2, max_size=4))
    if choice == 2:
        return "random msgpack", [msgspec.msgpack.encode(draw(msgpack_values))]
    if choice == 3:
        # A Frame's array with wrong-typed members or an unknown/half-typed body.
        body: dict[str, Any] = {"t": draw(st.sampled_from(TAGS))}
        body.update(draw(st.dictionaries(st.sampled_from(
            ["worker_id", "pid", "protocol", "session_id", "room", "offer", "candidates",
             "rooms", "sessions", "code", "message", "state", "extra"]), msgpack_values,
            max_size=4)))  # fmt: skip
        frame = [
            draw(st.one_of(st.just(m.PROTOCOL_VERSION), msgpack_values)),
            draw(st.one_of(st.sampled_from([0, 1, 2]), msgpack_values)),
            draw(st.one_of(big_ints, msgpack_values)),
            draw(st.one_of(st.just(body), msgpack_values)),
        ]
        return "ill-typed frame", [msgspec.msgpack.encode(frame[: draw(st.integers(0, 5))])]
    if choice == 4:
        return "truncated frame", [draw(st.binary(min_size=1, max_size=8)) + b"\x94\x01\x00"]
    return "huge frame", [b"\x94\x01\x00\x01" + b"\xc0" * draw(st.integers(1, 200_000))]


def frames(session_ids: list[str], rooms: list[str]) -> st.SearchStrategy[m.Frame]:
    return st.builds(
        m.Frame,
        v=st.one_of(
            st.just(m.PROTOCOL_VERSION),
            st.just(m.PROTOCOL_VERSION),
            st.integers(-(2**63), 2**63 - 1),
        ),  # fmt: skip
        kind=st.one_of(
            st.sampled_from([m.REQUEST, m.REQUEST, m.NOTIFICATION, m.RESPONSE]),
            st.integers(-5, 300),
        ),  # fmt: skip
        id=st.one_of(st.integers(1, 2**31), big_ints),
        body=any_message(session_ids, rooms),
    )


def sendables(session_ids: list[str], rooms: list[str]) -> st.SearchStrategy[tuple[str, Any]]:
    """('frame', Frame) or (category, raw parts)."""
    return st.one_of(
        frames(session_ids, rooms).map(lambda f: ("frame", f)),
        frames(session_ids, rooms).map(lambda f: ("frame", f)),
        raw_payloads(),
    )


def expects_answer(parts: list[bytes]) -> m.Frame | None:
    """The request a message carries, if the codec accepts it: it must be answered."""
    if len(parts) != 1:
        return None
    try:
        frame = codec.decode(parts[0])
    except codec.BadMessage:
        return None
    return frame if frame.kind == m.REQUEST else None


def encode(kind: str, value: Any) -> list[bytes]:
    return [codec.encode(value)] if kind == "frame" else list(value)


def describe_body(body: m.Message) -> str:
    if isinstance(body, m.Failure) and body.code == "internal":
        return f"Failure(internal: {body.message[:40]})"
    if isinstance(body, m.Failure):
        return f"Failure({body.code})"
    return type(body).__name__


# --- (a) the gateway's ROUTER ---------------------------------------------------------------


@dataclass
class GatewayUnderFuzz:
    gateway: GatewayProcess
    ipc_dir: str
    context: zmq.Context[zmq.Socket[bytes]]
    sockets: dict[bytes, zmq.Socket[bytes]]
    worker_pid: int
    victim_location: str
    victim_id: str
    victim_room: str
    sent: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def dealer(self, identity: bytes) -> zmq.Socket[bytes]:
        socket = self.sockets.get(identity)
        if socket is None:
            socket = self.context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.ROUTING_ID, identity)
            socket.connect(f"ipc://{self.ipc_dir}/gateway.sock")
            self.sockets[identity] = socket
        return socket


def _wait(what: str, check: Any, within: float, log: Any) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {within:g} s\n{log()}")
        time.sleep(0.1)


def _workers(gateway: GatewayProcess) -> list[dict[str, Any]]:
    reply = http_request(
        gateway.port, "GET", "/api/admin/workers", headers={"X-Auth-Token": ADMIN_TOKEN}
    )
    assert reply.status == 200, reply
    result: list[dict[str, Any]] = reply.json()
    return result


@pytest.fixture(scope="module")
def ipc_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="fzipc-", dir="/tmp")
    assert len(path) < 90
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def gateway_fuzz(
    tmp_path_factory: pytest.TempPathFactory, ipc_dir: str
) -> Iterator[GatewayUnderFuzz]:
    gateway_dir = os.path.join(ipc_dir, "gw")
    gateway = start_gateway(
        tmp_path_factory.mktemp("fuzz-ipc-gateway"),
        workers=1,
        args=[
            *("--ipc-dir", gateway_dir),
            *("--admin-token", ADMIN_TOKEN),
            *("--worker-token", WORKER_TOKEN),
            *("--rate-limit-rps", "0"),
            *("--session-connect-timeout", "120"),
            *("--bind-addresses", "127.0.0.1"),
        ],
    )
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    state: GatewayUnderFuzz | None = None
    try:
        _wait("local-0 registered", lambda: len(_workers(gateway)) == 1, 20, gateway.log)
        (worker,) = _workers(gateway)
        room = "fz-victim"
        victim = http_request(gateway.port, "POST", "/api/whip/publish/" + room,
                              VALID_PUBLISH.encode(), SDP)  # fmt: skip
        assert victim.status == 201, victim
        location = victim.headers["location"]
        state = GatewayUnderFuzz(
            gateway=gateway,
            ipc_dir=gateway_dir,
            context=context,
            sockets={},
            worker_pid=int(worker["pid"]),
            victim_location=location,
            victim_id=location.rsplit("/", 1)[1],
            victim_room=room,
        )
        yield state
        SUMMARY["gateway"] = {
            "inputs": sum(state.sent.values()),
            "sent": dict(sorted(state.sent.items())),
            "answers": dict(sorted(state.answers.items())),
            "wall_s": round((state.finished or time.monotonic()) - state.started, 1),
        }
    finally:
        if state is not None:
            for socket in state.sockets.values():
                socket.close(0)
        context.term()
        gateway.stop()


def _collect(socket: zmq.Socket[bytes], until_id: int, timeout: float) -> list[m.Frame] | None:
    """Frames received on `socket` up to the response to `until_id`; None on timeout."""
    received: list[m.Frame] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not socket.poll(int(left * 1000)):
            return None
        parts = socket.recv_multipart()
        frame = codec.decode(parts[-1])  # the gateway never sends garbage: it must decode
        received.append(frame)
        if frame.kind == m.RESPONSE and frame.id == until_id:
            return received


def _check_gateway_state(fz: GatewayUnderFuzz, what: str) -> None:
    workers = _workers(fz.gateway)
    ids = [(w["id"], w["pid"]) for w in workers]
    assert ids == [("local-0", fz.worker_pid)], f"workers are {ids} after {what}"
    assert process_children(fz.gateway.process.pid) == {fz.worker_pid}, what
    alive = http_request(fz.gateway.port, "GET", fz.victim_location)
    assert alive.status == 204, f"the real session is gone ({alive.label()}) after {what}"
    scraped = http_request(fz.gateway.port, "GET", "/metrics")
    assert scraped.status == 200, f"/metrics answers {scraped.label()} after {what}"
    metrics = scraped.body.decode()
    connected = metric_sum(metrics, 'live_sessions{kind="publisher",state="connected"}')
    assert connected == 0, f"a forged SessionState marked the real session connected: {what}"


PING_ID = 2_000_000_000


@settings(COMMON, max_examples=GATEWAY_EXAMPLES)
@given(data=st.data())
def test_fuzzed_frames_to_the_gateway(gateway_fuzz: GatewayUnderFuzz, data: st.DataObject) -> None:
    fz = gateway_fuzz
    identity = data.draw(st.sampled_from(SOCKET_IDS), label="socket routing id")
    socket = fz.dealer(identity)
    messages = data.draw(
        st.lists(sendables([fz.victim_id, "x"], [fz.victim_room, "y"]), min_size=1, max_size=4),
        label="messages",
    )
    requests: list[m.Frame] = []
    used_ids = {PING_ID}
    for kind, value in messages:
        if kind == "frame" and value.kind == m.REQUEST:
            if value.id in used_ids:  # one answer per id: make repeated ids unique
                unused = next(i for i in range(1, 1 << 16) if i not in used_ids)
                value = msgspec.structs.replace(value, id=unused)
            used_ids.add(value.id)
        parts = encode(kind, value)
        note(f"send {kind}: {shown(parts, 800)}")
        socket.send_multipart(parts)
        fz.sent[kind if kind != "frame" else f"frame {type(value.body).__name__}"] += 1
        request = expects_answer(parts)
        if request is not None and request.v == m.PROTOCOL_VERSION:
            requests.append(request)
    # A Heartbeat from this unknown peer as a ping: its Reregister comes after every answer
    # to what was sent before it on this connection.
    ping = m.Frame(m.PROTOCOL_VERSION, m.REQUEST, PING_ID, m.Heartbeat([], 0, 0.0, 0.0))
    socket.send(codec.encode(ping))
    received = _collect(socket, PING_ID, ANSWER_TIMEOUT_S)
    assert received is not None, f"no answer to a Heartbeat ping after {shown(messages)}"
    assert isinstance(received[-1].body, m.Reregister), received[-1]
    answers = {f.id: f for f in received[:-1] if f.kind == m.RESPONSE}
    for frame in received[:-1]:
        fz.answers[describe_body(frame.body)] += 1
    for request in requests:
        if request.id == PING_ID:
            continue
        answer = answers.get(request.id)
        assert answer is not None, f"no answer to request {request}"
        body = answer.body
        assert not isinstance(body, m.Welcome), f"registered a fuzzed worker: {request}"
        if isinstance(request.body, m.Hello):
            assert isinstance(body, m.Failure) and body.code == "refused", (request, body)
        elif isinstance(request.body, m.Heartbeat):
            assert isinstance(body, m.Reregister), (request, body)
        else:
            assert isinstance(body, m.Failure) and body.code in m.FAILURE_CODES, (request, body)
    _check_gateway_state(fz, f"messages {shown(messages)}")


def test_gateway_survives_the_barrage(gateway_fuzz: GatewayUnderFuzz) -> None:
    fz = gateway_fuzz
    port = fz.gateway.port
    # An oversized message (over codec.MAX_MESSAGE_BYTES) only costs its sender its connection.
    socket = fz.dealer(b"fuzz-a")
    socket.send(b"\x94\x01\x00\x01" + b"\xc0" * (codec.MAX_MESSAGE_BYTES + 16))
    time.sleep(0.5)
    assert http_request(port, "GET", "/healthz").status == 200
    assert http_request(port, "GET", "/readyz").status == 200
    _check_gateway_state(fz, "the whole barrage")
    log = fz.gateway.log(10_000_000)
    assert "declared dead" not in log and "Traceback" not in log, log[-6000:]
    # A real publish still works, and the real session can be deleted.
    reply = http_request(port, "POST", "/api/whip/publish/fz-after", VALID_PUBLISH.encode(), SDP)
    assert reply.status == 201, (reply, fz.gateway.log())
    assert http_request(port, "DELETE", reply.headers["location"]).status == 200
    assert http_request(port, "DELETE", fz.victim_location).status == 200
    fz.finished = time.monotonic()


# --- (b) a real worker against a fake gateway ------------------------------------------------


class FakeGateway:
    """A ROUTER that welcomes one worker the way gateway/placement/registry.py does, answers its
    heartbeats, and sends it whatever the test wants; single-threaded, driven by pump()."""

    def __init__(self, endpoint: str) -> None:
        self.context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.bind(endpoint)
        self.peer: bytes | None = None
        self.hellos = 0
        self.heartbeats: list[tuple[float, m.Heartbeat]] = []
        self.responses: dict[int, m.Frame] = {}
        self.notifications: list[m.Message] = []
        self.undecodable = 0
        self.next_id = 1_000_000

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if not self.socket.poll(max(int(left * 1000), 0)):
                if left <= 0:
                    return
                continue
            self._handle(self.socket.recv_multipart())

    def _handle(self, parts: list[bytes]) -> None:
        peer, data = parts[0], parts[-1]
        try:
            frame = codec.decode(data)
        except codec.BadMessage:
            self.undecodable += 1
            return
        if frame.kind == m.REQUEST and isinstance(frame.body, m.Hello):
            self.peer = peer
            self.hellos += 1
            self._send(m.Frame(m.PROTOCOL_VERSION, m.RESPONSE, frame.id, m.Welcome(0.25)))
        elif frame.kind == m.REQUEST and isinstance(frame.body, m.Heartbeat):
            self.heartbeats.append((time.monotonic(), frame.body))
            self._send(m.Frame(m.PROTOCOL_VERSION, m.RESPONSE, frame.id, m.HeartbeatAck()))
        elif frame.kind == m.RESPONSE:
            self.responses[frame.id] = frame
        elif frame.kind == m.NOTIFICATION:
            self.notifications.append(frame.body)

    def _send(self, frame: m.Frame) -> None:
        self.send_parts([codec.encode(frame)])

    def send_parts(self, parts: list[bytes]) -> None:
        assert self.peer is not None
        self.socket.send_multipart([self.peer, *parts])

    def request(self, body: m.Message, timeout: float = ANSWER_TIMEOUT_S) -> m.Message | None:
        self.next_id += 1
        request_id = self.next_id
        self._send(m.Frame(m.PROTOCOL_VERSION, m.REQUEST, request_id, body))
        return self.wait(request_id, timeout)

    def wait(self, request_id: int, timeout: float) -> m.Message | None:
        deadline = time.monotonic() + timeout
        while request_id not in self.responses and time.monotonic() < deadline:
            self.pump(0.01)
        frame = self.responses.pop(request_id, None)
        return None if frame is None else frame.body


@dataclass
class WorkerUnderFuzz:
    fake: FakeGateway
    process: subprocess.Popen[bytes]
    log_path: Path
    live_publisher: str
    counter: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    open_sessions: set[str] = field(default_factory=set)
    rooms_used: set[str] = field(default_factory=set)
    violations: dict[str, dict[str, Any]] = field(default_factory=dict)

    def violated(self, kind: str, request: m.Message, seen: str) -> None:
        """Keep the smallest request seen per kind of violation, for the summary."""
        text = repr(request)
        known = self.violations.setdefault(kind, {"count": 0, "input_chars": 1 << 62})
        known["count"] += 1
        if len(text) < known["input_chars"]:
            known.update(input_chars=len(text), input=shown(text, 3000), seen=seen[:1500])

    started: float = field(default_factory=time.monotonic)

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"


@pytest.fixture(scope="module")
def worker_fuzz(
    tmp_path_factory: pytest.TempPathFactory, ipc_dir: str
) -> Iterator[WorkerUnderFuzz]:
    log_path = tmp_path_factory.mktemp("fuzz-ipc-worker") / "worker.log"
    endpoint = f"ipc://{ipc_dir}/fake.sock"
    fake = FakeGateway(endpoint)
    command = [
        sys.executable, "-m", "sfu",
        *("--connect", endpoint),
        *("--worker-id", "w1"),
        *("--bind-addresses", "127.0.0.1"),
        *("--session-connect-timeout", "120"),
        *("--gateway-timeout", "10"),
    ]  # fmt: skip
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    state: WorkerUnderFuzz | None = None
    try:
        deadline = time.monotonic() + 20
        while not fake.heartbeats and time.monotonic() < deadline and process.poll() is None:
            fake.pump(0.1)
        assert fake.heartbeats, log_path.read_text(errors="replace")
        live = "live-publisher"
        answer = fake.request(m.OpenSession("publisher", "live", live, VALID_PUBLISH))
        assert isinstance(answer, m.SessionAnswer), answer
        state = WorkerUnderFuzz(fake, process, log_path, live, rooms_used={"live"})
        yield state
        SUMMARY["worker"] = {
            "inputs": sum(state.sent.values()),
            "sent": dict(sorted(state.sent.items())),
            "answers": dict(sorted(state.answers.items())),
            "violations": state.violations,
            "wall_s": round(time.monotonic() - state.started, 1),
        }
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                fake.pump(0.05)  # keep answering while it closes its sessions
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        fake.close()


def allowed_worker_answer(request: m.Message, answer: m.Message) -> bool:
    if not isinstance(request, WORKER_SERVES):
        return isinstance(answer, m.Failure) and answer.code == "internal"
    if isinstance(answer, m.Failure):
        if answer.code not in m.FAILURE_CODES:
            return False
        if answer.code == "internal":
            # Only for the one thing a gateway never does: reuse a session id.
            return "already in use" in answer.message
        return True
    if isinstance(request, m.OpenSession):
        return isinstance(answer, m.SessionAnswer)
    return isinstance(answer, m.Done)


@st.composite
def worker_requests(draw: st.DrawFn, fz: WorkerUnderFuzz) -> tuple[str, m.Message]:
    """(what, request): mostly what a gateway sends, with hostile contents."""
    choice = draw(st.sampled_from(["open_pub"] * 3 + ["open_sub"] * 2 + ["candidates"] * 3
                                  + ["close_session", "close_room", "not_served"]))  # fmt: skip
    room = draw(st.one_of(st.sampled_from(["fresh"] * 3 + ["live"]), texts))
    room = fz.fresh("room-") if room == "fresh" else room
    session_id = draw(st.one_of(st.sampled_from(["fresh"] * 4 + ["in use"]), texts))
    session_id = {"fresh": fz.fresh("s-"), "in use": fz.live_publisher}.get(session_id, session_id)
    if choice in ("open_pub", "open_sub"):
        offers = PUBLISH_OFFERS if choice == "open_pub" else VIEW_OFFERS
        offer = draw(
            st.one_of(
                offer_cases(offers).map(lambda c: c.render(offers).decode("utf-8", "replace")),
                st.just(VALID_PUBLISH if choice == "open_pub" else VALID_VIEW),
                texts,
            )
        )
        kind: m.SessionKind = "publisher" if choice == "open_pub" else "subscriber"
        return choice, m.OpenSession(kind=kind, room=room, session_id=session_id, offer=offer)
    if choice == "candidates":
        # Not the live publisher's id: a candidate that closes a session would close it for
        # every later example (the fresh target session of the example is the usual one).
        return choice, m.AddCandidates(
            session_id=draw(st.one_of(st.just(fz.fresh("s-")), texts)),
            candidates=draw(st.lists(st.one_of(candidate_values(), texts), max_size=4)),
            mid=draw(st.one_of(st.none(), mid_values())),
            end_of_candidates=draw(st.booleans()),
        )
    if choice == "close_session":
        return choice, m.CloseSession(draw(texts))
    if choice == "close_room":
        return choice, m.CloseRoom(draw(texts))
    message = draw(any_message([fz.live_publisher], ["live"]))
    assume_not_served = not isinstance(message, WORKER_SERVES)
    return ("not_served" if assume_not_served else type(message).__name__), message


def room_of(request: m.Message) -> str:
    return str(getattr(request, "room", ""))


def _close(fz: WorkerUnderFuzz, session_id: str, why: str) -> None:
    answer = fz.fake.request(m.CloseSession(session_id))
    assert isinstance(answer, m.Done), f"CloseSession of {session_id!r} ({why}): {answer}"
    fz.open_sessions.discard(session_id)


@settings(COMMON, max_examples=WORKER_EXAMPLES)
@given(data=st.data())
def test_fuzzed_requests_to_a_worker(worker_fuzz: WorkerUnderFuzz, data: st.DataObject) -> None:
    try:
        _worker_example(worker_fuzz, data)
    finally:
        # Whatever happened, the sessions this example opened do not outlive it (a failing
        # example must not make the next ones, or the leak check, fail in its place).
        for session_id in list(worker_fuzz.open_sessions):
            worker_fuzz.fake.request(m.CloseSession(session_id))
            worker_fuzz.open_sessions.discard(session_id)


def _worker_example(fz: WorkerUnderFuzz, data: st.DataObject) -> None:
    fake = fz.fake
    # Optional garbage first: undecodable bytes, multipart, stray responses/notifications.
    for kind, value in data.draw(st.lists(raw_payloads(), max_size=2), label="garbage"):
        fake.send_parts(list(value) or [b""])
        fz.sent[kind] += 1
    # A fresh real session for AddCandidates to work on, half of the time.
    target = None
    if data.draw(st.booleans(), label="fresh target session"):
        target = fz.fresh("t-")
        answer = fake.request(m.OpenSession("publisher", fz.fresh("troom-"), target, VALID_PUBLISH))
        assert isinstance(answer, m.SessionAnswer), (answer, fz.log())
        fz.open_sessions.add(target)
    what, request = data.draw(worker_requests(fz), label="request")
    if target is not None and isinstance(request, m.AddCandidates):
        request = m.AddCandidates(
            target, request.candidates, request.mid, request.end_of_candidates
        )
    note(f"request: {shown(repr(request), 3000)}")
    fz.sent[what] += 1
    answer = fake.request(request)
    assert fz.process.poll() is None, f"worker exited after {request!r}\n{fz.log()}"
    assert answer is not None, f"no answer within {ANSWER_TIMEOUT_S} s to {request!r}\n{fz.log()}"
    fz.answers[describe_body(answer)] += 1
    if not allowed_worker_answer(request, answer):
        message = getattr(answer, "message", "")
        fz.violated(f"{type(request).__name__} -> {describe_body(answer)} {message[:60]}",
                    request, repr(answer))  # fmt: skip
    assert allowed_worker_answer(request, answer), (
        f"answered {answer!r}\nto {shown(repr(request), 3000)}"
    )
    if isinstance(answer, m.SessionAnswer) and isinstance(request, m.OpenSession):
        fz.open_sessions.add(request.session_id)
        _close(fz, request.session_id, "answered fuzzed open")
    first_use = room_of(request) not in fz.rooms_used
    fz.rooms_used.add(room_of(request))
    if isinstance(request, m.OpenSession) and first_use:
        # The room takes a valid publisher now (no half-open session left behind).
        probe = fz.fresh("probe-")
        again = fake.request(m.OpenSession("publisher", request.room, probe, VALID_PUBLISH))
        fz.open_sessions.add(probe)
        if not isinstance(again, m.SessionAnswer):
            fz.violated(f"room unusable after {type(request).__name__}", request, repr(again))
        assert isinstance(again, m.SessionAnswer), (
            f"after {shown(repr(request), 3000)}\n(answered {answer!r}) a valid "
            f"publisher's OpenSession in the same room gets {again!r}"
        )
        _close(fz, probe, "probe")
    if target is not None:
        closed = fake.request(m.CloseSession(target))
        fz.open_sessions.discard(target)
        if not isinstance(closed, m.Done):
            fz.violated("session gone after AddCandidates", request, repr(closed))
        assert isinstance(closed, m.Done), (
            f"the session is gone after {shown(repr(request), 3000)} (answered {answer!r}):"
            f" CloseSession gets {closed!r}"
        )
    for session_id in list(fz.open_sessions):
        _close(fz, session_id, "left open by the example")
    # Still heartbeating: one within the last second.
    last = fz.fake.heartbeats[-1][0]
    assert time.monotonic() - last < 1.5, f"no heartbeat for {time.monotonic() - last:.1f} s"


def test_worker_survives_the_barrage(worker_fuzz: WorkerUnderFuzz) -> None:
    fz = worker_fuzz
    fake = fz.fake
    before = len(fake.heartbeats)
    fake.pump(1.2)
    assert fz.process.poll() is None, fz.log()
    assert len(fake.heartbeats) - before >= 3, "heartbeats stopped"
    assert fake.hellos == 1, "the worker registered again"
    answer = fake.request(m.OpenSession("publisher", "after", "after-1", VALID_PUBLISH))
    assert isinstance(answer, m.SessionAnswer), answer
    # A room of its own: the barrage may legitimately have closed "live" (CloseRoom and
    # CloseSession are among the requests it sends).
    viewer = fake.request(m.OpenSession("subscriber", "after", "after-viewer", VALID_VIEW))
    assert isinstance(viewer, m.SessionAnswer), viewer
    for session_id in ("after-1", "after-viewer"):
        _close(fz, session_id, "after the barrage")
    live = fake.request(m.CloseSession(fz.live_publisher))
    assert isinstance(live, m.Done) or (
        isinstance(live, m.Failure) and live.code == "unknown_session"
    ), live
    # Nothing leaked on the worker: its heartbeats count no session and no room.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        fake.pump(0.3)
        if fake.heartbeats[-1][1].sessions == 0 and not fake.heartbeats[-1][1].rooms:
            break
    last = fake.heartbeats[-1][1]
    assert last.sessions == 0 and not last.rooms, f"leaked: {last.sessions} {last.rooms}"
    assert "Traceback" not in fz.log(10_000_000), fz.log()
    fz.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while fz.process.poll() is None and time.monotonic() < deadline:
        fake.pump(0.05)
    assert fz.process.returncode == 0, fz.log()
