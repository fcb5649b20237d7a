"""Pure functions of the gateway: fragment parsing, placement, error mapping, settings helpers."""

from __future__ import annotations

import dataclasses
import os
from typing import cast

import pytest

from common import worker_settings
from common.worker_settings import load_worker_settings
from gateway import settings as gateway_settings
from gateway.config import load_config
from gateway.http.errors import from_remote_failure
from gateway.http.whip_whep import etag_matches, ice_server_links, new_etag, new_session_id
from gateway.placement.directory import (
    Directory,
    NoLiveWorker,
    PublisherExists,
    RoomNotFound,
    SubscriberLimitReached,
    WorkerInfo,
)
from gateway.placement.supervisor import (
    Slot,
    backoff_delay,
    local_worker_settings,
    new_plane_name,
    split_port_range,
    worker_command,
    worker_environment,
)
from gateway.sdpfrag import parse_sdpfrag, summarize_offer
from gateway.settings import HttpAddress, parse_http_addr
from ipc.channel import RemoteFailure
from ipc.messages import FailureCode

FRAGMENT = (
    "a=ice-options:trickle ice2\r\n"
    "a=group:BUNDLE 0 1\r\n"
    "m=audio 9 RTP/AVP 0\r\n"
    "a=mid:0\r\n"
    "a=ice-ufrag:EsAw\r\n"
    "a=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n"
    "a=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n"
    "a=candidate:3471623853 1 udp 2122194687 198.51.100.2 61765 typ host generation 0\r\n"
    "a=end-of-candidates\r\n"
)


# --- sdpfrag --------------------------------------------------------------------------------


def test_parse_rfc8840_fragment() -> None:
    fragment = parse_sdpfrag(FRAGMENT)
    assert fragment.ice_ufrag == "EsAw"
    assert fragment.ice_pwd == "P2uYro0UCOQ4zxjKXaWCBui1"
    assert [mid for mid, _ in fragment.candidates] == ["0", "0"]
    assert fragment.candidates[0][1].startswith("candidate:1387637174 1 udp")
    assert fragment.end_of_candidates


def test_fragment_with_only_end_of_candidates() -> None:
    fragment = parse_sdpfrag("a=end-of-candidates\n")
    assert fragment.candidates == [] and fragment.end_of_candidates


def test_candidate_without_mid_has_none() -> None:
    fragment = parse_sdpfrag("a=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\n")
    assert fragment.candidates == [(None, "candidate:1 1 udp 1 10.0.0.1 5000 typ host")]


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "hello world",
        '{"json": true}',
        "a=candidate:broken\r\n",
        "a=candidate:1 1 udp 1 10.0.0.1 5000 host\r\n",  # no "typ"
        "a=mid:0\r\n",  # nothing to act on
        "a=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\nnot sdp\r\n",
    ],
)
def test_garbage_fragments_are_rejected(garbage: str) -> None:
    with pytest.raises(ValueError):
        parse_sdpfrag(garbage)


def test_offer_summary_reads_credentials_and_media() -> None:
    offer = "v=0\r\ns=-\r\nm=audio 9 X 0\r\na=ice-ufrag:u1\r\na=ice-pwd:p1\r\nm=video 9 X 96\r\n"
    summary = summarize_offer(offer)
    assert (summary.ice_ufrag, summary.ice_pwd, summary.media_sections) == ("u1", "p1", 2)


@pytest.mark.parametrize("offer", ["", "hello", "v=1\r\nm=audio 9 X 0\r\n", "v=0\r\ns=-\r\n"])
def test_offer_sanity_rejects(offer: str) -> None:
    with pytest.raises(ValueError):
        summarize_offer(offer)


# --- directory ------------------------------------------------------------------------------


def _directory(*worker_ids: str) -> Directory:
    directory = Directory()
    for worker_id in worker_ids:
        directory.add_worker(WorkerInfo(worker_id, True, 1, "host", 0.0))
    return directory


def test_new_room_goes_to_least_loaded_worker() -> None:
    directory = _directory("a", "b")
    directory.reserve_publisher("r1", "s1", '"e"', "u", "p")
    second = directory.reserve_publisher("r2", "s2", '"e"', "u", "p")
    assert directory.rooms["r1"].home != second.worker_id


def test_cpu_breaks_ties() -> None:
    directory = _directory("a", "b")
    directory.workers["a"].cpu = 0.9
    directory.workers["b"].cpu = 0.1
    assert directory.reserve_publisher("r", "s", '"e"', "u", "p").worker_id == "b"


def test_room_sessions_stay_on_the_room_worker() -> None:
    directory = _directory("a", "b")
    publisher = directory.reserve_publisher("r", "pub", '"e"', "u", "p")
    subscribers = [
        directory.reserve_subscriber("r", f"sub{i}", '"e"', "u", "p", 0) for i in range(5)
    ]
    assert {s.worker_id for s in subscribers} == {publisher.worker_id}


def test_second_publisher_is_refused() -> None:
    directory = _directory("a")
    directory.reserve_publisher("r", "s1", '"e"', "u", "p")
    with pytest.raises(PublisherExists):
        directory.reserve_publisher("r", "s2", '"e"', "u", "p")


def test_subscriber_needs_room_and_respects_limit() -> None:
    directory = _directory("a")
    with pytest.raises(RoomNotFound):
        directory.reserve_subscriber("r", "s", '"e"', "u", "p", 0)
    directory.reserve_publisher("r", "pub", '"e"', "u", "p")
    directory.reserve_subscriber("r", "s1", '"e"', "u", "p", 2)
    directory.reserve_subscriber("r", "s2", '"e"', "u", "p", 2)
    with pytest.raises(SubscriberLimitReached):
        directory.reserve_subscriber("r", "s3", '"e"', "u", "p", 2)
    directory.remove_session("s1")
    directory.reserve_subscriber("r", "s3", '"e"', "u", "p", 2)


def test_room_disappears_with_its_last_session() -> None:
    directory = _directory("a")
    directory.reserve_publisher("r", "pub", '"e"', "u", "p")
    directory.reserve_subscriber("r", "sub", '"e"', "u", "p", 0)
    directory.remove_session("pub")
    assert "r" in directory.rooms  # a subscriber still holds it
    directory.reserve_publisher("r", "pub2", '"e"', "u", "p")  # a new publisher may come
    directory.remove_session("pub2")
    directory.remove_session("sub")
    assert directory.rooms == {} and directory.sessions == {}
    assert directory.remove_session("sub") is None  # idempotent


def test_no_worker_means_no_placement() -> None:
    directory = _directory()
    with pytest.raises(NoLiveWorker):
        directory.reserve_publisher("r", "s", '"e"', "u", "p")
    assert directory.rooms == {}


def test_removing_a_worker_drops_its_rooms_and_sessions() -> None:
    directory = _directory("a", "b")
    on_a = directory.reserve_publisher("r1", "s1", '"e"', "u", "p")
    directory.reserve_publisher("r2", "s2", '"e"', "u", "p")
    dropped = directory.remove_worker(on_a.worker_id)
    assert [s.session_id for s in dropped] == ["s1"]
    assert list(directory.rooms) == ["r2"] and list(directory.sessions) == ["s2"]


# --- helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (":8080", HttpAddress(None, 8080)),
        ("127.0.0.1:80", HttpAddress("127.0.0.1", 80)),
        ("[::1]:8443", HttpAddress("::1", 8443)),
        ("example.org:1", HttpAddress("example.org", 1)),
    ],
)
def test_http_addr_forms(raw: str, expected: HttpAddress) -> None:
    assert parse_http_addr(raw) == expected


@pytest.mark.parametrize("raw", ["8080", ":0", ":70000", "::1:80", "[nope]:80", "host:"])
def test_bad_http_addr(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_http_addr(raw)


def test_port_split_is_even_and_contiguous() -> None:
    assert split_port_range((40000, 40999), 4) == [
        (40000, 40249),
        (40250, 40499),
        (40500, 40749),
        (40750, 40999),
    ]
    assert split_port_range((40000, 40004), 2) == [(40000, 40002), (40003, 40004)]


def test_backoff_doubles_to_thirty_seconds() -> None:
    assert [backoff_delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_worker_command_omits_empty_flags() -> None:
    config = load_config(["--workers", "2", "--udp-ports", "40000-40009"], environ={})
    command = worker_command(config, Slot(1, (40005, 40009)), "ipc:///tmp/x/gateway.sock", "p1")
    assert command[1:3] == ["-m", "sfu"]
    assert command[command.index("--worker-id") + 1] == "local-1"
    assert command[command.index("--udp-ports") + 1] == "40005-40009"
    assert "--public-ip" not in command and "--bind-addresses" not in command
    assert command[command.index("--session-connect-timeout") + 1] == "30"
    assert command[command.index("--plane") + 1] == "p1"


def test_worker_command_is_read_back_by_the_worker_table() -> None:
    """What the supervisor writes, the worker parses back to the same settings: every worker
    setting the gateway has, TRANSPORT_CC included, travels on the command line."""
    config = load_config(
        ["--workers", "1"],
        environ={
            "TRANSPORT_CC": "false",
            "INSTANT_START_MAX_BYTES": "2048",
            "GATEWAY_TIMEOUT": "2.5",
            "SESSION_CONNECT_TIMEOUT": "0.1",
            "PUBLIC_IP": "192.0.2.7",
            "BIND_ADDRESSES": "127.0.0.1,::1",
            "RECORD_ENABLED": "1",
            "LOG_LEVEL": "debug",
        },
    )
    slot = Slot(0, (40000, 40009))
    plane = new_plane_name()
    expected = local_worker_settings(config, slot, "ipc:///tmp/x/gateway.sock", plane)
    command = worker_command(config, slot, "ipc:///tmp/x/gateway.sock", plane)
    assert load_worker_settings(command[3:], environ={}) == expected
    assert not expected.transport_cc and expected.instant_start_max_bytes == 2048
    assert expected.gateway_timeout == 2.5 and expected.session_connect_timeout == 0.1
    assert os.path.isabs(expected.record_dir) and expected.parent_pid == os.getpid()
    assert expected.plane == plane and plane.startswith(f"live-sfu-{os.getpid()}-")


def test_worker_settings_reach_workers_only_on_their_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("TRANSPORT_CC", "GATEWAY_TIMEOUT", "SFU_CONNECT", "JWT_SECRET", "WORKER_TOKEN"):
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("LANG", "C.UTF-8")
    env = worker_environment()
    assert env["LANG"] == "C.UTF-8" and "PYTHONPATH" in env
    assert not {"TRANSPORT_CC", "GATEWAY_TIMEOUT", "SFU_CONNECT", "JWT_SECRET"} & set(env)
    assert "WORKER_TOKEN" not in env


def test_one_definition_of_each_worker_setting() -> None:
    """The gateway's table uses the worker's settings (as it describes them), and the typed
    WorkerSettings has one field per worker setting."""
    worker_by_env = {setting.env: setting for setting in worker_settings.SETTINGS}
    for setting in gateway_settings.SETTINGS:
        mine = worker_by_env.get(setting.env)
        if mine is not None:
            assert (setting.name, setting.default, setting.parse, setting.format) == (
                mine.name,
                mine.default,
                mine.parse,
                mine.format,
            ), setting.env
    fields = [field.name for field in dataclasses.fields(worker_settings.WorkerSettings)]
    assert fields == [setting.name for setting in worker_settings.SETTINGS]


def test_ice_server_links() -> None:
    config = load_config(
        ["--turn-urls", "turn:t.example:3478,turns:t.example:5349"],
        environ={"TURN_USERNAME": "user", "TURN_PASSWORD": 'p"w'},
    )
    links = ice_server_links(config.ice)
    assert links[0] == '<stun:stun.l.google.com:19302>; rel="ice-server"'
    assert links[1] == (
        '<turn:t.example:3478>; rel="ice-server"; username="user"; credential="p\\"w"; '
        'credential-type="password"'
    )
    assert len(links) == 3


def test_etags_and_ids() -> None:
    etag = new_etag()
    assert etag.startswith('"') and etag.endswith('"') and len(etag) >= 18
    assert etag_matches(etag, etag)
    assert etag_matches(f'"other", {etag}', etag)
    assert not etag_matches("W/" + etag, etag)
    assert not etag_matches(etag.strip('"'), etag)
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 for i in ids)


# --- worker failures -> HTTP ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        # bad_offer and bad_candidate are also produced by a real worker in
        # test_gateway_workers.py; a real worker gives the others only in races (publisher_exists,
        # no_room) or not on demand (overloaded, internal), so their mapping is checked here.
        ("bad_offer", 400),
        ("bad_candidate", 400),
        ("publisher_exists", 409),
        ("no_room", 404),
        ("unknown_session", 404),
        ("overloaded", 503),
        ("internal", 503),
        ("something_new", 503),
    ],
)
def test_worker_failure_codes_map_to_http(code: str, status: int) -> None:
    # "something_new" is no FailureCode: a newer worker's code must still map to a status.
    error = from_remote_failure(RemoteFailure(cast(FailureCode, code), "worker detail"))
    assert error.status == status
    if status == 503:
        assert error.headers["Retry-After"] == "2"
        if code == "overloaded":  # a capacity answer says which capacity ran out
            assert error.message == "worker detail"
        else:
            assert "worker detail" not in error.message  # internals stay in the log
    else:
        assert error.code == code and error.message == "worker detail"
