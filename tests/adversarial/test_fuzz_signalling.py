"""Property-based fuzzing of WHIP/WHEP offers and trickle PATCHes against a real gateway.

One `python -m gateway` with two real local workers (module scope) and one real aiortc
publisher (testkit/client.py) in a live room. Hypothesis mutates offers as real clients
write them (tests/adversarial/fuzz_sdp.py) and sends them as WHIP and WHEP POSTs, sends random
bodies, and sends random trickle fragments to real sessions. Every example checks:

* the answer: below 500, or 503 with Retry-After and an availability code (never `internal`);
  every non-2xx body is JSON {"error", "code"}; a 201 is a real answer with Location/ETag;
* the room: right after the example, a valid offer still gets 201 in the same room (a
  failed offer must not leave a half-open session that answers 409 forever);
* the workers: the gateway's worker processes are the same ones (none crashed or restarted).

The last test proves the whole thing still works after the barrage (media flows to a real
viewer) and that every session drains to zero, on the gateway and on the workers. The
inputs tried and the statuses seen per endpoint go to bench/results/fuzz-summary.json.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

from testkit.processes import GatewayProcess, start_gateway
from tests.adversarial.fuzz_sdp import (
    AVAILABILITY_CODES,
    PUBLISH_OFFERS,
    UFRAG,
    VALID_PUBLISH,
    VALID_VIEW,
    VIEW_OFFERS,
    FragmentCase,
    OfferCase,
    Reply,
    fragment_cases,
    http_request,
    metric_sum,
    offer_cases,
    process_children,
    random_bodies,
    shown,
    write_summary,
)
from tests.support.clients import PeerProcess, spawn_peer

ADMIN_TOKEN = "fuzz-admin-token"
SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
WHIP, WHEP = "/api/whip/publish/", "/api/whep/play/"
LIVE_ROOM = "fz-live"
CONNECT_TIMEOUT_S = 3.0
COMMON = settings(
    deadline=None,
    derandomize=True,  # the same inputs on every run: a failure reproduces
    # No explain phase: its line tracing (sys.settrace on Python 3.11) multiplies the time of
    # every replay of a failing example against live processes.
    phases=(Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink),
    database=None,  # and nothing is written into the checkout
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)
WHIP_EXAMPLES = 260
WHEP_EXAMPLES = 160
RANDOM_EXAMPLES = 100
TRICKLE_EXAMPLES = 150


@dataclass
class Fuzz:
    gateway: GatewayProcess
    publisher: PeerProcess
    workers: frozenset[int]
    rooms: list[str] = field(default_factory=list)
    statuses: dict[str, Counter[str]] = field(default_factory=dict)
    inputs: Counter[str] = field(default_factory=Counter)
    violations: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def port(self) -> int:
        return self.gateway.port

    def request(self, method: str, path: str, body: bytes | None = None, **headers: str) -> Reply:
        return http_request(self.port, method, path, body, dict(headers))

    def new_room(self, prefix: str) -> str:
        room = f"{prefix}-{len(self.rooms)}"
        self.rooms.append(room)
        return room

    def count(self, endpoint: str, reply: Reply) -> None:
        self.inputs[endpoint] += 1
        self.statuses.setdefault(endpoint, Counter())[reply.label()] += 1

    def violated(self, kind: str, endpoint: str, sent: bytes | str, seen: str) -> None:
        """Keep the smallest input seen per kind of violation, for the summary."""
        size = len(sent)
        known = self.violations.get(kind)
        if known is None or size < known["input_bytes"]:
            self.violations[kind] = {
                "endpoint": endpoint,
                "input_bytes": size,
                "input": shown(sent, 4000),
                "seen": seen[:2000],
                "count": (known or {}).get("count", 0) + 1,
            }
        else:
            known["count"] += 1


def _admin_workers(gateway: GatewayProcess) -> list[dict[str, Any]]:
    reply = http_request(
        gateway.port, "GET", "/api/admin/workers", headers={"X-Auth-Token": ADMIN_TOKEN}
    )
    assert reply.status == 200, reply
    workers: list[dict[str, Any]] = reply.json()
    return workers


def _wait(what: str, check: Any, within: float, gateway: GatewayProcess) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {within:g} s\n{gateway.log(6000)}")
        time.sleep(0.1)


def _live_publisher_connected(gateway: GatewayProcess) -> bool:
    reply = http_request(gateway.port, "GET", "/api/rooms")
    rooms = reply.json() if reply.status == 200 else []
    return any(r["name"] == LIVE_ROOM and r["publisherState"] == "connected" for r in rooms)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    log_dir: Path = tmp_path_factory.mktemp("fuzz-signalling")
    gateway = start_gateway(
        log_dir,
        workers=2,
        args=[
            *("--rate-limit-rps", "0"),
            *("--max-pending-sessions-per-ip", "0"),
            *("--session-connect-timeout", str(CONNECT_TIMEOUT_S)),
            *("--admin-token", ADMIN_TOKEN),
            *("--bind-addresses", "127.0.0.1"),
        ],
    )
    publisher: PeerProcess | None = None
    try:
        _wait("two workers registered", lambda: len(_admin_workers(gateway)) == 2, 20, gateway)
        workers = frozenset(w["pid"] for w in _admin_workers(gateway))
        assert process_children(gateway.process.pid) == workers, gateway.log()
        publisher = spawn_peer(
            "publish",
            gateway.url,
            LIVE_ROOM,
            *("--seconds", "600", "--fps", "10", "--width", "160", "--height", "120"),
        )
        _wait(
            "the live publisher connected", lambda: _live_publisher_connected(gateway), 30, gateway
        )
        state = Fuzz(gateway=gateway, publisher=publisher, workers=workers)
        yield state
        _summarize(state)
    finally:
        if publisher is not None:
            publisher.kill()
        gateway.stop()


def _summarize(state: Fuzz) -> None:
    endpoints = {
        endpoint: {
            "inputs": state.inputs[endpoint],
            "statuses": dict(sorted(state.statuses.get(endpoint, Counter()).items())),
        }
        for endpoint in sorted(state.inputs)
    }
    summary = {
        "endpoints": endpoints,
        "violations": state.violations,
        "wall_s": round(time.monotonic() - state.started, 1),
    }
    for endpoint in endpoints:
        seen = state.statuses.get(endpoint, Counter())
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(seen.items()))
        print(f"fuzz-signalling {endpoint}: {state.inputs[endpoint]} inputs; {statuses}")
    for kind, violation in state.violations.items():
        print(f"fuzz-signalling VIOLATION {kind} x{violation['count']}: {violation['seen'][:300]}")
    write_summary("signalling", summary)


# --- the invariants ---------------------------------------------------------------------------


def check_reply(state: Fuzz, endpoint: str, sent: bytes, reply: Reply) -> None:
    """Below 500 or an availability 503; JSON errors; a 201 that is a real answer."""
    seen = f"{reply.status} {reply.headers} {reply.body[:1500]!r}"
    if reply.status >= 500:
        good_503 = (
            reply.status == 503
            and "retry-after" in reply.headers
            and reply.code() in AVAILABILITY_CODES
        )
        if not good_503:
            state.violated(f"{endpoint}: {reply.label()}", endpoint, sent, seen)
        assert good_503, f"{endpoint} answered {seen}\nto {shown(sent)}"
    if reply.status >= 300:
        try:
            body = reply.json()
            well_formed = (
                reply.headers.get("content-type", "").startswith("application/json")
                and isinstance(body, dict)
                and isinstance(body.get("error"), str)
                and isinstance(body.get("code"), str)
            )
        except ValueError:
            well_formed = False
        if not well_formed:
            state.violated(f"{endpoint}: non-JSON error", endpoint, sent, seen)
        assert well_formed, f"{endpoint}: error body is not JSON error/code: {seen}"
    if reply.status == 201:
        assert reply.headers.get("content-type") == SDP, seen
        assert reply.body.startswith(b"v=0"), seen
        assert "location" in reply.headers and "etag" in reply.headers, seen


def check_workers(state: Fuzz, endpoint: str, sent: bytes) -> None:
    before, now = state.workers, process_children(state.gateway.process.pid)
    if now != before:
        state.violated("worker restarted", endpoint, sent, f"{sorted(before)} -> {sorted(now)}")
        state.workers = now  # report the next crash against its own input
    assert now == before, (
        f"worker processes {sorted(before)} became {sorted(now)} after {shown(sent)}\n"
        f"{state.gateway.log(6000)}"
    )


def delete(state: Fuzz, reply: Reply) -> None:
    if reply.status == 201:
        gone = state.request("DELETE", reply.headers["location"])
        assert gone.status == 200, gone


def room_still_works(state: Fuzz, endpoint: str, sent: bytes, fuzzed: Reply, room: str) -> None:
    """A valid offer in the same room right after the fuzzed one: 201 (then deleted)."""
    path = (WHIP if endpoint.startswith("POST " + WHIP) else WHEP) + room
    offer = VALID_PUBLISH if path.startswith(WHIP) else VALID_VIEW
    probe = state.request("POST", path, offer.encode(), **{"Content-Type": SDP})
    delete(state, probe)
    if probe.status != 201:
        state.violated(
            f"{endpoint}: room unusable afterwards ({probe.label()})",
            endpoint,
            sent,
            f"fuzzed: {fuzzed.label()} {fuzzed.body[:300]!r}; then valid offer: {probe.label()}",
        )
    assert probe.status == 201, (
        f"after {shown(sent)}\n(answered {fuzzed.label()} {fuzzed.body[:300]!r}),"
        f" a valid offer in room {room!r} gets {probe.label()} {probe.body[:300]!r}"
    )
    # A 503 says "no capacity, retry": not true of an input when the next offer gets in.
    if fuzzed.status == 503:
        state.violated(
            f"{endpoint}: {fuzzed.label()} for one input, 201 for the next valid one",
            endpoint,
            sent,
            f"fuzzed: {fuzzed.label()} {fuzzed.body[:300]!r}; then valid offer: 201",
        )
    assert fuzzed.status != 503, (
        f"{fuzzed.label()} {fuzzed.body[:300]!r} (retry later) for {shown(sent)}\n"
        f"while a valid offer right after it got 201: the input, not capacity, failed"
    )


# --- WHIP ---------------------------------------------------------------------------------------


@settings(COMMON, max_examples=WHIP_EXAMPLES)
@given(case=offer_cases(PUBLISH_OFFERS))
def test_fuzzed_whip_offers(fuzz: Fuzz, case: OfferCase) -> None:
    body = case.render(PUBLISH_OFFERS)
    note(case.describe(PUBLISH_OFFERS))
    note(f"body sent: {body!r}")
    endpoint = "POST " + WHIP + "{room}"
    room = fuzz.new_room("fzp")
    reply = fuzz.request("POST", WHIP + room, body, **{"Content-Type": SDP})
    fuzz.count(endpoint, reply)
    delete(fuzz, reply)
    room_still_works(fuzz, endpoint, body, reply, room)
    check_workers(fuzz, endpoint, body)
    check_reply(fuzz, endpoint, body, reply)


# --- WHEP ---------------------------------------------------------------------------------------


@settings(COMMON, max_examples=WHEP_EXAMPLES)
@given(case=offer_cases(VIEW_OFFERS), room_pick=st.integers(0, 9))
def test_fuzzed_whep_offers(fuzz: Fuzz, case: OfferCase, room_pick: int) -> None:
    body = case.render(VIEW_OFFERS)
    note(case.describe(VIEW_OFFERS))
    note(f"body sent: {body!r}")
    endpoint = "POST " + WHEP + "{room}"
    # Mostly the live room (a real publisher); sometimes a room without one (404 no_room).
    room = fuzz.new_room("fzv") if room_pick == 5 else LIVE_ROOM
    reply = fuzz.request("POST", WHEP + room, body, **{"Content-Type": SDP})
    fuzz.count(endpoint, reply)
    delete(fuzz, reply)
    if room == LIVE_ROOM:
        room_still_works(fuzz, endpoint, body, reply, room)
    check_workers(fuzz, endpoint, body)
    check_reply(fuzz, endpoint, body, reply)
    if room != LIVE_ROOM:
        assert reply.status in (400, 404, 413), (reply.label(), shown(body))


# --- random bodies, content types and room names ------------------------------------------------

ROOM_NAMES = st.one_of(
    st.just(""),
    st.text(max_size=70),
    st.sampled_from(["x" * 64, "x" * 65, "..", "a/b", "a%2Fb", "room?x=1", "r#", " r", "%00"]),
)


@settings(COMMON, max_examples=RANDOM_EXAMPLES)
@given(
    body=random_bodies(),
    whip=st.booleans(),
    content_type=st.sampled_from([SDP] * 6 + ["text/plain", "", "application/SDP", "a/b; x=y"]),
    room_name=st.one_of(st.none(), st.none(), ROOM_NAMES),
)
def test_random_bodies_and_rooms(
    fuzz: Fuzz, body: bytes, whip: bool, content_type: str, room_name: str | None
) -> None:
    note(f"body sent: {body!r}")
    prefix = WHIP if whip else WHEP
    endpoint = "POST " + prefix + "{room} (random body/room/type)"
    if room_name is None:
        room = fuzz.new_room("fzr") if whip else LIVE_ROOM
        path = prefix + room
    else:
        room = ""
        path = prefix + quote(room_name, safe="")
    headers = {"Content-Type": content_type} if content_type else {}
    reply = fuzz.request("POST", path, body, **headers)
    fuzz.count(endpoint, reply)
    delete(fuzz, reply)
    if room:
        room_still_works(fuzz, "POST " + prefix, body, reply, room)
    check_workers(fuzz, endpoint, body)
    check_reply(fuzz, endpoint, body, reply)


# --- trickle PATCH --------------------------------------------------------------------------------


def render_fragment(case: FragmentCase) -> bytes:
    return (case.ending.join(case.lines) + (case.ending if case.lines else "")).encode(
        "utf-8", errors="surrogatepass"
    )


def if_match(case: FragmentCase, etag: str) -> dict[str, str]:
    values = {
        "etag": etag,
        "wrong": '"not-the-etag"',
        "star": "*",
        "list": f'"x", {etag}, "y"',
        "weak": "W/" + etag,
    }
    headers = {"Content-Type": case.content_type}
    if case.if_match in values:
        headers["If-Match"] = values[case.if_match]
    return headers


@settings(COMMON, max_examples=TRICKLE_EXAMPLES)
@given(fragments=st.lists(fragment_cases(), min_size=1, max_size=3), whep=st.booleans())
def test_fuzzed_trickle_fragments(fuzz: Fuzz, fragments: list[FragmentCase], whep: bool) -> None:
    """Up to three PATCHes in a row on a fresh real session (WHIP or WHEP), then probes."""
    room = LIVE_ROOM if whep else fuzz.new_room("fzt")
    path = (WHEP if whep else WHIP) + room
    offer = (VALID_VIEW if whep else VALID_PUBLISH).encode()
    created = fuzz.request("POST", path, offer, **{"Content-Type": SDP})
    assert created.status == 201, (created, fuzz.gateway.log(4000))
    note(f"session {created.headers['location']} in room {room}")
    location, etag = created.headers["location"], created.headers["etag"]
    endpoint = "PATCH /api/" + ("whep" if whep else "whip") + "/session/{id}"
    sent_all = b""
    ended = False
    for case in fragments:
        body = render_fragment(case)
        headers = if_match(case, etag)
        sent = f"If-Match/Content-Type {headers}\n".encode() + body
        sent_all += sent + b"\n---\n"
        note(f"PATCH {headers} body {body!r}")
        reply = fuzz.request("PATCH", location, body, **headers)
        fuzz.count(endpoint, reply)
        check_reply(fuzz, endpoint, sent_all, reply)
        if reply.status == 204:
            assert reply.body == b"", reply
            ended = ended or any(line.strip() == "a=end-of-candidates" for line in case.lines)
    if ended:
        time.sleep(0.3)  # an ICE agent told "no more candidates" may give up at once
    # The session survived whatever was trickled: it is still there, and DELETE works.
    alive = fuzz.request("GET", location)
    if alive.status != 204:
        fuzz.violated(f"{endpoint}: session lost", endpoint, sent_all, alive.label())
    assert alive.status == 204, (alive.label(), shown(sent_all))
    gone = fuzz.request("DELETE", location)
    assert gone.status == 200, (gone.label(), shown(sent_all))
    room_still_works(fuzz, "POST " + (WHEP if whep else WHIP), sent_all, created, room)
    check_workers(fuzz, endpoint, sent_all)


# A trickle fragment over MAX_FRAGMENT_LINES and one of a megabyte: refused whole, cheaply.
def test_huge_fragments(fuzz: Fuzz) -> None:
    created = fuzz.request(
        "POST", WHIP + fuzz.new_room("fzh"), VALID_PUBLISH.encode(), **{"Content-Type": SDP}
    )
    assert created.status == 201, created
    headers = {"Content-Type": SDPFRAG, "If-Match": created.headers["etag"]}
    line = "a=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host\r\n"
    endpoint = "PATCH /api/whip/session/{id}"
    for body in (
        (f"a=ice-ufrag:{UFRAG}\r\n" + line * 1001).encode(),
        b"a=end-of-candidates\r\n" + b"a=x:" + b"y" * (2 * 1024 * 1024) + b"\r\n",
    ):
        reply = fuzz.request("PATCH", created.headers["location"], body, **headers)
        fuzz.count(endpoint, reply)
        check_reply(fuzz, endpoint, body, reply)
        assert reply.status in (400, 413), reply.label()
    assert fuzz.request("DELETE", created.headers["location"]).status == 200
    check_workers(fuzz, endpoint, b"huge fragments")


# --- afterwards --------------------------------------------------------------------------------


def test_after_the_barrage_everything_works_and_sessions_drain(fuzz: Fuzz) -> None:
    gateway = fuzz.gateway
    assert http_request(fuzz.port, "GET", "/healthz").status == 200
    assert http_request(fuzz.port, "GET", "/readyz").status == 200
    workers = _admin_workers(gateway)
    assert frozenset(w["pid"] for w in workers) == fuzz.workers, workers
    assert process_children(gateway.process.pid) == fuzz.workers

    # Every 10th room a fuzzed offer went to (and the last one) still takes a publisher.
    sample = fuzz.rooms[::10] + fuzz.rooms[-1:]
    refused = {}
    for room in sample:
        reply = fuzz.request("POST", WHIP + room, VALID_PUBLISH.encode(), **{"Content-Type": SDP})
        delete(fuzz, reply)
        if reply.status != 201:
            refused[room] = reply.label()
    assert not refused, f"rooms that no longer take a publisher: {refused}"

    # Media still flows from the live publisher to a real viewer.
    viewed = spawn_peer(
        "view",
        gateway.url,
        LIVE_ROOM,
        *("--seconds", "2", "--min-video-frames", "5", "--min-audio-frames", "5"),
    ).result(timeout=60)
    assert viewed.get("ok") is True, json.dumps(viewed)[:3000]

    # Close the live room; every session, on the gateway and on the workers, goes away.
    closed = http_request(
        fuzz.port,
        "POST",
        f"/api/admin/rooms/{LIVE_ROOM}/close",
        headers={"X-Auth-Token": ADMIN_TOKEN},
    )
    assert closed.status == 200, closed
    fuzz.publisher.kill()
    metrics = ""

    def drained() -> bool:
        nonlocal metrics
        metrics = http_request(fuzz.port, "GET", "/metrics").body.decode()
        return (
            metric_sum(metrics, "live_sessions") == 0
            and metric_sum(metrics, "live_worker_sessions") == 0
            and metric_sum(metrics, "live_rooms") == 0
        )

    deadline = time.monotonic() + CONNECT_TIMEOUT_S + 4
    while not drained() and time.monotonic() < deadline:
        time.sleep(0.2)
    leftovers = [
        line
        for line in metrics.splitlines()
        if line.startswith(("live_sessions", "live_worker_sessions", "live_rooms"))
    ]
    if not drained():
        fuzz.violated("sessions left after the run", "all", b"", "\n".join(leftovers))
    assert drained(), (
        "sessions left after the run:\n"
        + "\n".join(leftovers)
        + "\n"
        + json.dumps(_admin_workers(gateway))
    )
    # And the live room takes a new publisher.
    again = fuzz.request("POST", WHIP + LIVE_ROOM, VALID_PUBLISH.encode(), **{"Content-Type": SDP})
    delete(fuzz, again)
    assert again.status == 201, again.label()
