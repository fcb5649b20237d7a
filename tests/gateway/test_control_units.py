"""Pure pieces of the control plane: token buckets, client addresses, TURN REST credentials,
log redaction, monotonic metrics out of worker counters, and the new settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress

import msgspec
import pytest

from gateway.config import load_config
from gateway.http.access_log import redact_target
from gateway.http.control import ice_servers, turn_credentials
from gateway.http.ratelimit import TokenBuckets, client_address, client_key
from gateway.http.whip_whep import ice_server_links
from gateway.metrics import TrafficTotals
from gateway.placement.directory import Directory, WorkerInfo
from ipc import codec
from ipc.messages import Frame, Heartbeat, RoomStats
from testkit.processes import run_gateway_cli


class FakeClock:
    """Time under the test's control, so bucket arithmetic is exact (not a timing test)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- token buckets ----------------------------------------------------------------------------


def test_bucket_allows_burst_then_asks_to_wait_for_the_refill() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate=2.0, burst=3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)  # one token comes every 1/2 s
    assert buckets.take("b") == 0.0  # another client has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0


def test_burst_zero_means_one_as_in_live_webrtc_go() -> None:
    buckets = TokenBuckets(rate=1.0, burst=0, clock=FakeClock())
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(1.0)


def test_bucket_table_is_bounded() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate=0.001, burst=1, max_clients=100, clock=clock)
    for index in range(1000):
        buckets.take(f"client-{index}")
    assert len(buckets) == 100
    # The most recent clients are the ones still limited.
    assert buckets.take("client-999") > 0


def test_refilled_buckets_are_forgotten() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate=10.0, burst=2, clock=clock)
    for index in range(50):
        buckets.take(f"client-{index}")
    clock.now += 1.0  # every bucket is full again: they carry no information
    buckets.take("late")
    assert len(buckets) == 1


# --- client address ---------------------------------------------------------------------------

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        # No trusted proxies: X-Forwarded-For is never read.
        ("198.51.100.7", ["1.2.3.4"], [], "198.51.100.7"),
        # A peer that is not a trusted proxy cannot spoof.
        ("198.51.100.7", ["1.2.3.4"], PROXIES, "198.51.100.7"),
        # One trusted proxy: the hop it appended is the client.
        ("10.0.0.1", ["203.0.113.9"], PROXIES, "203.0.113.9"),
        # The client prepended a fake hop: read right to left, stop at the first untrusted.
        ("10.0.0.1", ["6.6.6.6, 203.0.113.9"], PROXIES, "203.0.113.9"),
        # Two trusted proxies in a row, and headers split over several lines.
        ("10.0.0.1", ["6.6.6.6, 203.0.113.9", "10.1.1.1"], PROXIES, "203.0.113.9"),
        # Garbage behind a trusted proxy: keep the last address a trusted hop vouched for.
        ("10.0.0.1", ["not-an-ip"], PROXIES, "10.0.0.1"),
        # Only trusted hops: the leftmost one is the best we know.
        ("10.0.0.1", ["10.9.9.9"], PROXIES, "10.9.9.9"),
        # Ports and brackets, as some proxies write them.
        ("10.0.0.1", ["[2001:db8::5]:443"], PROXIES, "2001:db8::5"),
        ("10.0.0.1", ["203.0.113.9:51234"], PROXIES, "203.0.113.9"),
        # IPv4-mapped IPv6 peers are IPv4 clients.
        ("::ffff:10.0.0.1", ["203.0.113.9"], PROXIES, "203.0.113.9"),
        ("fd00::1", ["2001:db8::7"], PROXIES, "2001:db8::7"),
    ],
)
def test_client_address(
    peer: str, xff: list[str], trusted: list[ipaddress.IPv4Network], expected: str
) -> None:
    assert str(client_address(peer, xff, trusted)) == expected


def test_ipv6_clients_are_keyed_by_their_64() -> None:
    one = client_key(ipaddress.ip_address("2001:db8:1:2:aaaa::1"))
    same = client_key(ipaddress.ip_address("2001:db8:1:2:ffff:ffff:ffff:ffff"))
    other = client_key(ipaddress.ip_address("2001:db8:1:3::1"))
    assert one == same == "2001:db8:1:2::/64"
    assert other != one
    assert client_key(ipaddress.ip_address("192.0.2.1")) == "192.0.2.1"
    assert client_key(None) == "unknown"


# --- TURN REST credentials --------------------------------------------------------------------


def test_turn_rest_credentials_follow_the_coturn_scheme() -> None:
    config = load_config(
        ["--workers", "0"],
        environ={"TURN_URLS": "turn:t.example:3478", "TURN_SECRET": "s3cret", "TURN_TTL": "600"},
    )
    credentials = turn_credentials(config.ice, "demo", now=1_700_000_000)
    assert credentials is not None
    username, credential = credentials
    assert username == "1700000600:demo"
    mac = hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest()
    assert credential == base64.b64encode(mac).decode()
    # The Link header and iceServers carry them, never the secret itself.
    links = ice_server_links(config.ice, "demo")
    assert "s3cret" not in "".join(links)
    assert 'username="' in links[-1] and ":demo" in links[-1]
    servers = ice_servers(config.ice, "demo", with_turn=True)
    assert servers[-1]["urls"] == ["turn:t.example:3478"]
    assert servers[-1]["username"].endswith(":demo")
    # A caller not allowed in the room gets STUN only.
    stun_only = ice_server_links(config.ice, "demo", with_turn=False)
    assert all("turn:" not in link for link in stun_only)
    assert ice_servers(config.ice, "demo", with_turn=False) == [
        {"urls": ["stun:stun.l.google.com:19302"]}
    ]


# --- log redaction ----------------------------------------------------------------------------


def test_access_log_targets_hide_session_ids_and_query_values() -> None:
    session = "/api/whip/session/AbCdEfGh" + "x" * 24
    assert redact_target(session, "") == "/api/whip/session/AbCdEfGh…"
    assert redact_target("/api/rooms", "token=hunter2&room=a") == (
        "/api/rooms?token=REDACTED&room=REDACTED"
    )
    assert redact_target("/api/whep/play/demo", "") == "/api/whep/play/demo"


# --- monotonic counters from worker reports ---------------------------------------------------


def _heartbeat(packets: int, rooms: list[RoomStats]) -> Heartbeat:
    return Heartbeat(
        rooms=[r.name for r in rooms if not r.closed],
        sessions=1,
        forwarded_packets_per_s=0.0,
        cpu=0.0,
        packets_in=packets,
        room_stats=rooms,
    )


def _room(name: str, packets: int, closed: bool = False) -> RoomStats:
    return RoomStats(name, "connected", [("video", "VP8")], 1, packets_in=packets, closed=closed)


def _worker(pid: int) -> WorkerInfo:
    return WorkerInfo("local-0", True, pid, "host", 0.0)


def test_counters_never_go_backwards_across_a_worker_restart() -> None:
    totals = TrafficTotals(clock=FakeClock())
    totals.observe(_worker(100), _heartbeat(50, [_room("a", 50)]))
    totals.observe(_worker(100), _heartbeat(80, [_room("a", 80)]))
    assert totals.workers["local-0"].values[0] == 80
    assert totals.rooms["a"].values[0] == 80
    # The worker restarts (new pid) and the room comes back on it, counting from zero.
    totals.observe(_worker(200), _heartbeat(30, [_room("a", 30)]))
    assert totals.workers["local-0"].values[0] == 110
    assert totals.rooms["a"].values[0] == 110
    # A restart we did not see the pid change of: a lower value is a reset, not a decrease.
    totals.observe(_worker(200), _heartbeat(5, [_room("a", 5)]))
    assert totals.workers["local-0"].values[0] == 115
    assert totals.rooms["a"].values[0] == 115


def test_closed_rooms_report_their_last_packets_once() -> None:
    totals = TrafficTotals(clock=FakeClock())
    totals.observe(_worker(1), _heartbeat(10, [_room("a", 10)]))
    # Closed with 25 packets, and a new room of the same name already has 3.
    totals.observe(_worker(1), _heartbeat(28, [_room("a", 3), _room("a", 25, closed=True)]))
    assert totals.rooms["a"].values[0] == 28
    totals.observe(_worker(1), _heartbeat(30, [_room("a", 5)]))
    assert totals.rooms["a"].values[0] == 30


def test_series_of_gone_rooms_expire() -> None:
    clock = FakeClock()
    totals = TrafficTotals(clock=clock)
    totals.observe(_worker(1), _heartbeat(10, [_room("a", 10, closed=True)]))
    totals.forget_stale(Directory())
    assert "a" in totals.rooms
    clock.now += 3600
    totals.forget_stale(Directory())
    assert "a" not in totals.rooms and "local-0" not in totals.workers


def test_series_of_gone_rooms_expire_without_a_scrape() -> None:
    """Heartbeats sweep expired series too: a gateway nobody scrapes must not keep them all."""
    clock = FakeClock()
    totals = TrafficTotals(clock=clock, directory=Directory())
    totals.observe(_worker(1), _heartbeat(10, [_room("a", 10, closed=True)]))
    clock.now += 3600
    totals.observe(_worker(1), _heartbeat(10, [_room("b", 1)]))
    assert "a" not in totals.rooms and "b" in totals.rooms


def test_old_heartbeats_without_room_stats_still_decode() -> None:
    """A worker of the previous release sends no per-room fields: the defaults fill them."""
    old = {"t": "heartbeat", "rooms": ["a"], "sessions": 1, "forwarded_packets_per_s": 0, "cpu": 0}
    frame = msgspec.msgpack.encode([1, 0, 1, old])
    decoded = codec.decode(frame)
    assert isinstance(decoded, Frame) and isinstance(decoded.body, Heartbeat)
    assert decoded.body.room_stats == [] and decoded.body.bytes_in == 0


# --- settings ---------------------------------------------------------------------------------


def test_control_settings_parse() -> None:
    config = load_config(
        ["--workers", "0"],
        environ={
            "ROOM_TOKENS": " vip : a:b:c ; other:tok;",
            "ALLOWED_ORIGIN": "https://app.example, http://localhost:3000",
            "TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1, fd00::/8",
            "RATE_LIMIT_RPS": "10.5",
            "METRICS_ADDR": "127.0.0.1:9100",
            "JWT_SECRET": "x",
            "JWT_ALGORITHMS": "hs256,HS512",
        },
    )
    assert config.auth.room_tokens == {"vip": "a:b:c", "other": "tok"}
    assert config.http.allowed_origin == ["https://app.example", "http://localhost:3000"]
    proxies = config.limits.trusted_proxies
    assert [str(n) for n in proxies] == ["10.0.0.0/8", "192.0.2.1/32", "fd00::/8"]
    assert config.limits.rate_limit_rps == 10.5
    metrics_addr = config.observability.metrics_addr
    assert metrics_addr is not None and metrics_addr.port == 9100
    assert config.auth.jwt_algorithms == ["HS256", "HS512"]
    assert config.auth.enabled
    assert not load_config(["--workers", "0"], environ={}).auth.enabled


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ROOM_TOKENS": "room-without-token"}, "ROOM_TOKENS"),
        ({"ROOM_TOKENS": "bad room:tok"}, "ROOM_TOKENS"),
        ({"ROOM_TOKENS": "room:"}, "ROOM_TOKENS"),
        ({"ALLOWED_ORIGIN": "example.com"}, "ALLOWED_ORIGIN"),
        ({"ALLOWED_ORIGIN": "https://example.com/"}, "ALLOWED_ORIGIN"),
        ({"ALLOWED_ORIGIN": "ftp://example.com"}, "ALLOWED_ORIGIN"),
        ({"TRUSTED_PROXIES": "10.0.0.0/33"}, "TRUSTED_PROXIES"),
        ({"RATE_LIMIT_RPS": "-1"}, "RATE_LIMIT_RPS"),
        ({"RATE_LIMIT_RPS": "fast"}, "RATE_LIMIT_RPS"),
        ({"RATE_LIMIT_BURST": "1.5"}, "RATE_LIMIT_BURST"),
        ({"MAX_SESSIONS_PER_IP": "-2"}, "MAX_SESSIONS_PER_IP"),
        ({"MAX_SESSIONS_PER_WORKER": "x"}, "MAX_SESSIONS_PER_WORKER"),
        ({"MAX_PENDING_SESSIONS": "-1"}, "MAX_PENDING_SESSIONS"),
        ({"JWT_ALGORITHMS": "RS256"}, "JWT_ALGORITHMS"),
        ({"JWT_AUDIENCE": "aud"}, "JWT_AUDIENCE"),
        ({"TURN_TTL": "5"}, "TURN_TTL"),
        ({"TURN_SECRET": "s"}, "TURN_URLS"),
        (
            {"TURN_SECRET": "s", "TURN_URLS": "turn:t:3478", "TURN_USERNAME": "u"},
            "TURN_SECRET",
        ),
        ({"METRICS_ADDR": "9100"}, "METRICS_ADDR"),
    ],
)
def test_invalid_control_setting_exits_2_with_one_line(env: dict[str, str], named: str) -> None:
    result = run_gateway_cli("--workers", "0", env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_rejected_secret_setting_is_not_echoed() -> None:
    result = run_gateway_cli("--workers", "0", env={"ROOM_TOKENS": "bad room:hunter2"})
    assert result.returncode == 2
    assert "ROOM_TOKENS" in result.stderr and "hunter2" not in result.stderr
