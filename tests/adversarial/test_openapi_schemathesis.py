"""The OpenAPI description (/api/openapi.json) against the routes and a live gateway.

A real `python -m gateway` with one real worker is fuzzed by schemathesis from the schema it
serves: every documented operation, a fixed number of derandomized examples each (positive
and negative), plus schemathesis' deterministic coverage cases (boundary values, missing
required headers, undocumented methods). Every response must be documented (status,
Content-Type, headers, body schema), and no 5xx is acceptable except a 503 with Retry-After
(a documented capacity answer). schemathesis never fuzzes the GET that serves the schema
itself; test_served_document_is_valid_openapi covers it.

Generated data cannot reach a real session (ids are random), so test_session_lifecycle_conforms
drives one through the documented answers with concrete requests, under the same checks.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiortc import RTCPeerConnection
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from gateway.http.openapi import build_spec

MAX_EXAMPLES = 20  # per operation in the fuzzing phase, positive and negative cases together
SEED = 20251
ADMIN_TOKEN = "openapi-admin-token-0123456789abcdef"
GATEWAY_ARGS = ["--rate-limit-rps", "0", "--max-pending-sessions-per-ip", "0"]

# The SDP bodies the fuzzer draws from: real aiortc offers (filled in by `_real_offers`, so
# that some POSTs create real sessions), near misses, and arbitrary bytes (non-UTF-8 too).
SDP_SAMPLES: list[bytes] = [b"v=0\r\n", b"v=0\r\ns=-\r\n", b"", b"garbage"]
CANDIDATE = "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host\r\n"
FRAGMENTS = [
    "a=mid:0\r\n" + CANDIDATE,
    "a=end-of-candidates\r\n",
    "a=ice-ufrag:other\r\na=ice-pwd:anotherpasswordanother\r\n" + CANDIDATE,  # ICE restart
    "a=candidate:x\r\n",
    "not sdp",
]

# schemathesis has no serializer of its own for these two media types.
schemathesis.openapi.media_type(
    "application/sdp",
    st.one_of(st.deferred(lambda: st.sampled_from(SDP_SAMPLES)), st.binary(max_size=256)),
)
schemathesis.openapi.media_type(
    "application/trickle-ice-sdpfrag",
    st.one_of(st.sampled_from(FRAGMENTS).map(str.encode), st.binary(max_size=256)),
)


async def _offer(direction: str) -> str:
    """A real aiortc offer, video and audio, `sendonly` (WHIP) or `recvonly` (WHEP)."""
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction=direction)
        pc.addTransceiver("audio", direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


def _real_offers() -> tuple[str, str]:
    async def both() -> tuple[str, str]:
        return await _offer("sendonly"), await _offer("recvonly")

    publish, play = asyncio.run(both())
    for offer in (publish, play):
        if offer.encode() not in SDP_SAMPLES:
            SDP_SAMPLES.insert(0, offer.encode())
    return publish, play


# Everything outside the documented API: the static UI and the bare endpoint prefixes.
UNDOCUMENTED_ROUTES = {"/", "/web", "/web/", "/api/whip/publish", "/api/whep/play"}


def not_a_server_error(ctx: Any, response: Any, case: Any) -> None:
    """schemathesis' check of the same name, except that 503 + Retry-After is a documented
    capacity answer (no media worker, worker busy or timing out, shutting down)."""
    status = response.status_code
    if status >= 500 and not (status == 503 and response.headers.get("retry-after")):
        raise AssertionError(f"server error {status}: {response.text[:300]!r}")


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    missing_required_header,
    unsupported_method,
    allow_header_conformance,
]


def _config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
            "phases": {
                "examples": {"enabled": False},  # the spec has no examples
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "cache": {"enabled": False},
            "auth": {"openapi": {"tokenHeader": {"api_key": ADMIN_TOKEN}}},
            "request-timeout": 15,
        }
    )


def _start(gateway_factory: Callable[..., Any], tmp_path: Path) -> str:
    records = tmp_path / "records"
    records.mkdir()
    (records / "legacy.ivf").write_bytes(b"DKIF" + bytes(28))  # a bare file, no sidecar
    env = {"ADMIN_TOKEN": ADMIN_TOKEN, "RECORD_DIR": str(records)}
    gateway = gateway_factory(workers=1, args=GATEWAY_ARGS, env=env)
    return str(gateway.url)


@pytest.fixture
def live_schema(gateway_factory: Callable[..., Any], tmp_path: Path) -> Any:
    url = _start(gateway_factory, tmp_path)
    _real_offers()
    return schemathesis.openapi.from_url(url + "/api/openapi.json", config=_config())


schema = schemathesis.pytest.from_fixture("live_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32.5's from_fixture reads and rewrites `node._nodeid`, which pytest 9
    no longer has (the id is `node._id` now); give it one to read (only its labels use it)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@schema.parametrize()
def test_live_gateway_conforms_to_its_openapi(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_served_document_is_valid_openapi(
    gateway_factory: Callable[..., Any], tmp_path: Path
) -> None:
    url = _start(gateway_factory, tmp_path) + "/api/openapi.json"
    status, headers, body = _get(url)
    assert status == 200
    assert headers["Content-Type"].split(";")[0] == "application/json"
    document = json.loads(body)
    assert document == build_spec()
    etag = headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')  # strong
    status, again, empty = _get(url, {"If-None-Match": etag})
    assert (status, again["ETag"], empty) == (304, etag, b"")
    loaded = schemathesis.openapi.from_url(url, config=_config())
    loaded.validate()  # the OpenAPI 3.0 meta-schema
    failed = [result.err() for result in loaded.get_all_operations() if isinstance(result, Err)]
    assert failed == []
    try:
        from openapi_spec_validator import validate
    except ImportError:  # a dependency of moto[server], not pinned by itself
        return
    validate(document)


def _app_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every route of a real make_app (no process, no worker needed)."""
    from gateway.config import load_config
    from gateway.http.app import make_app
    from gateway.http.whep_events import EVENTS_METHODS, STREAM_METHODS
    from gateway.http.whip_whep import ENDPOINT_METHODS, SESSION_METHODS
    from gateway.placement.directory import Directory
    from gateway.placement.registry import Registry

    config = load_config([], {})
    # No channel: only the routes are read, nothing ever reaches a worker.
    app = make_app(config, Registry(config, None, Directory()))  # type: ignore[arg-type]
    routes: set[tuple[str, str]] = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path in UNDOCUMENTED_ROUTES or path.startswith("/web/"):
            continue
        if route.method == "*":
            methods: tuple[str, ...]
            if path.endswith("/events"):
                methods = EVENTS_METHODS
            elif "/events/" in path:
                methods = STREAM_METHODS
            else:
                methods = SESSION_METHODS if "/session/" in path else ENDPOINT_METHODS
            routes.update((method, path) for method in methods)
        else:
            routes.add((route.method, path))
    return routes


def test_spec_lists_every_route() -> None:
    spec = build_spec()
    documented = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
        if method != "parameters"
    }
    assert documented == _app_routes()


def test_errors_are_one_component() -> None:
    """Every 4xx/5xx answer of every operation is the shared Error schema."""
    spec = build_spec()
    components = spec["components"]["responses"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                if "$ref" in response:
                    response = components[response["$ref"].rsplit("/", 1)[1]]
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)


# Concrete requests only: the checks that judge a response, not generated data.
RESPONSE_CHECKS = CHECKS[:5]


def test_session_lifecycle_conforms(gateway_factory: Callable[..., Any], tmp_path: Path) -> None:
    """What random data cannot reach: real sessions (201, 409, PATCH 204/400/409/412/415/428,
    DELETE 200), a room listing, the admin API with and without its token, a download."""
    url = _start(gateway_factory, tmp_path)
    live = schemathesis.openapi.from_url(url + "/api/openapi.json", config=_config())
    publish, play = _real_offers()
    admin = {"X-Auth-Token": ADMIN_TOKEN}

    def call(
        method: str, path: str, status: int, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> Any:
        operation = live[path][method]
        response = operation.Case(headers=headers or {}, **kw).call_and_validate(
            base_url=url, checks=RESPONSE_CHECKS
        )
        assert response.status_code == status, (method, path, response.text[:300])
        return response

    sdp: dict[str, Any] = {"media_type": "application/sdp"}
    whip, whep = "/api/whip/publish/{room}", "/api/whep/play/{room}"
    room: dict[str, Any] = {"path_parameters": {"room": "lifecycle"}}
    created = call("POST", whip, 201, body=publish.encode(), **room, **sdp)
    assert created.headers["content-type"] == ["application/sdp"]
    location, etag = created.headers["location"][0], created.headers["etag"][0]
    call("POST", whip, 409, body=publish.encode(), **room, **sdp)
    viewer = call("POST", whep, 201, body=play.encode(), **room, **sdp)

    session = "/api/whip/session/{session_id}"
    ids: dict[str, Any] = {"path_parameters": {"session_id": location.rsplit("/", 1)[1]}}
    frag: dict[str, Any] = {"media_type": "application/trickle-ice-sdpfrag"}
    candidate = FRAGMENTS[0].encode()
    call("PATCH", session, 428, body=candidate, **ids, **frag)
    call("PATCH", session, 412, headers={"If-Match": '"stale"'}, body=candidate, **ids, **frag)
    call("PATCH", session, 400, headers={"If-Match": "*"}, body=candidate, **ids, **frag)
    restart = FRAGMENTS[2].encode()
    # The publisher of this test never connects: there is no ICE session to restart.
    call("PATCH", session, 409, headers={"If-Match": etag}, body=restart, **ids, **frag)
    call("PATCH", session, 400, headers={"If-Match": etag}, body=b"not sdp", **ids, **frag)
    call(
        "PATCH", session, 415, headers={"If-Match": etag}, body="x", media_type="text/plain", **ids
    )
    call("PATCH", session, 204, headers={"If-Match": etag}, body=candidate, **ids, **frag)
    for method in ("GET", "HEAD", "OPTIONS"):
        call(method, session, 204, **ids)

    rooms = call("GET", "/api/rooms", 200).json()
    assert [r["name"] for r in rooms] == ["lifecycle"] and rooms[0]["subscribers"] == 1
    call("GET", "/api/admin/workers", 401)
    call("GET", "/api/admin/workers", 401, headers={"X-Auth-Token": "wrong"})
    assert len(call("GET", "/api/admin/workers", 200, headers=admin).json()) == 1
    records = call("GET", "/api/records", 200, headers=admin).json()
    assert [r["name"] for r in records] == ["legacy.ivf"]
    download = "/api/records/{name}"
    call("GET", download, 200, headers=admin, path_parameters={"name": "legacy.ivf"})
    call("GET", download, 404, headers=admin, path_parameters={"name": "gone.ivf"})
    call("GET", download, 400, headers=admin, path_parameters={"name": "notes.txt"})

    call("DELETE", session, 200, **ids)
    call("DELETE", session, 404, **ids)
    close = "/api/admin/rooms/{room}/close"
    assert call("POST", close, 200, headers=admin, **room).json() == {
        "closed": "lifecycle",
        "sessions": 1,
    }
    call("POST", close, 404, headers=admin, **room)
    viewer_id = viewer.headers["location"][0].rsplit("/", 1)[1]
    call("DELETE", "/api/whep/session/{session_id}", 404, path_parameters={"session_id": viewer_id})


# Names the spec's patterns refuse and the gateway must refuse with its 400 (they are JSON
# Schema patterns, where `$` is the end of the string; in Python's re.match it also matches
# before a trailing newline, and aiohttp's `{room:.*}` does not match a newline at all).
INVALID_NAMES = [
    ("GET", "/api/bootstrap?room=lobby%0A", "invalid_room"),
    ("GET", "/api/whip/publish/a%0Ab", "invalid_room"),
    ("POST", "/api/whep/play/lobby%0A", "invalid_room"),
    ("POST", "/api/admin/rooms/a%0Ab/close", "invalid_room"),
    ("GET", "/api/records/room_track_1.ivf%0A", "invalid_name"),
    # Controls: the same checks without a line feed.
    ("GET", "/api/bootstrap?room=lobby%0D", "invalid_room"),
    ("GET", "/api/whip/publish/a%2Fb", "invalid_room"),
    ("POST", "/api/admin/rooms/a%20b/close", "invalid_room"),
    ("GET", "/api/records/room_track_1.ivf%0D", "invalid_name"),
]


def test_invalid_names_are_refused_with_400(
    gateway_factory: Callable[..., Any], tmp_path: Path
) -> None:
    url = _start(gateway_factory, tmp_path)
    wrong = []
    for method, path, code in INVALID_NAMES:
        headers = {"X-Auth-Token": ADMIN_TOKEN, "Content-Type": "application/sdp"}
        request = urllib.request.Request(url + path, method=method, headers=headers)
        if method == "POST":
            request.data = b"v=0\r\n"
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        if status != 400 or json.loads(body).get("code") != code:
            wrong.append(f"{method} {path} -> {status} {body[:100]!r}")
    assert not wrong, "not refused with 400:\n" + "\n".join(wrong)
