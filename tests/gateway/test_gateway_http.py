"""HTTP behaviour of a gateway that has no worker: every check that needs no media."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from urllib.parse import quote

import aiohttp
import pytest

from testkit.processes import GatewayProcess
from tests.support.sdp import OFFER

SDP = {"Content-Type": "application/sdp"}
ENDPOINTS = ["/api/whip/publish/room1", "/api/whep/play/room1"]
CORS_ALLOW_HEADERS = {"content-type", "authorization", "if-match", "x-auth-token"}
CORS_EXPOSED = {"location", "etag", "link", "accept-patch", "accept-post"}


async def assert_json_error(response: aiohttp.ClientResponse, status: int) -> dict[str, str]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, str] = await response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["code"], str) and body["code"]
    assert "Traceback" not in body["error"]
    return body


def _split(header: str) -> set[str]:
    return {part.strip().lower() for part in header.split(",")}


@pytest.mark.parametrize(
    "room",
    [
        "room 1",
        "room@1",
        "room.1",
        "a" * 65,
        "<script>alert(1)</script>",
        "ünïcode",
        "",
    ],
)
@pytest.mark.parametrize("endpoint", ["/api/whip/publish/", "/api/whep/play/"])
async def test_invalid_room_names(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession, endpoint: str, room: str
) -> None:
    url = bare_gateway.url + endpoint + quote(room, safe="")
    async with http.post(url, data=OFFER, headers=SDP) as response:
        body = await assert_json_error(response, 400)
        assert body["code"] == "invalid_room"


@pytest.mark.parametrize("path", ["/api/whip/publish/room/1", "/api/whip/publish"])
async def test_slashes_and_missing_room_are_invalid(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession, path: str
) -> None:
    async with http.post(bare_gateway.url + path, data=OFFER, headers=SDP) as response:
        await assert_json_error(response, 400)


async def test_longest_valid_room_name_passes_validation(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    url = bare_gateway.url + "/api/whip/publish/" + "a" * 64
    async with http.post(url, data=OFFER, headers=SDP) as response:
        body = await assert_json_error(response, 503)  # valid, but no worker
        assert body["code"] == "no_worker"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
async def test_wrong_content_type_is_415(
    bare_gateway: GatewayProcess,
    http: aiohttp.ClientSession,
    endpoint: str,
    content_type: str | None,
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    data = OFFER.encode()  # bytes: aiohttp adds no Content-Type of its own for None
    async with http.post(bare_gateway.url + endpoint, data=data, headers=headers) as response:
        await assert_json_error(response, 415)


async def test_content_type_parameters_are_allowed(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    headers = {"Content-Type": "application/sdp; charset=utf-8"}
    url = bare_gateway.url + ENDPOINTS[0]
    async with http.post(url, data=OFFER, headers=headers) as response:
        await assert_json_error(response, 503)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_oversized_body_is_413(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession, endpoint: str
) -> None:
    body = b"v=0\r\n" + b"a" * (1024 * 1024 + 1 - 5)
    assert len(body) == 1024 * 1024 + 1
    async with http.post(bare_gateway.url + endpoint, data=body, headers=SDP) as response:
        await assert_json_error(response, 413)


async def test_oversized_chunked_body_is_413(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"a" * 65536

    url = bare_gateway.url + ENDPOINTS[0]
    async with http.post(url, data=chunks(), headers=SDP) as response:
        await assert_json_error(response, 413)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize(
    "body", ["hello", '{"sdp": "v=0"}', "v=0\r\ns=-\r\nt=0 0\r\n", "\x00\x01binary"]
)
async def test_non_sdp_body_is_400(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession, endpoint: str, body: str
) -> None:
    async with http.post(bare_gateway.url + endpoint, data=body, headers=SDP) as response:
        await assert_json_error(response, 400)


async def test_whep_to_unknown_room_is_404(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    url = bare_gateway.url + "/api/whep/play/nobody-here"
    async with http.post(url, data=OFFER, headers=SDP) as response:
        body = await assert_json_error(response, 404)
        assert body["error"] == "no active publisher in room"


async def test_whip_without_worker_is_503_with_retry_after(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    url = bare_gateway.url + ENDPOINTS[0]
    async with http.post(url, data=OFFER, headers=SDP) as response:
        await assert_json_error(response, 503)
        assert response.headers["Retry-After"] == "2"
        assert response.headers["Access-Control-Allow-Origin"] == "*"


@pytest.mark.parametrize("kind", ["whip", "whep"])
@pytest.mark.parametrize("method", ["DELETE", "PATCH", "GET"])
async def test_unknown_session_is_404(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession, kind: str, method: str
) -> None:
    url = f"{bare_gateway.url}/api/{kind}/session/doesnotexist"
    headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": '"x"'}
    async with http.request(method, url, data="a=end-of-candidates\r\n", headers=headers) as r:
        await assert_json_error(r, 404)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_options_on_endpoint(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession, endpoint: str
) -> None:
    async with http.options(bare_gateway.url + endpoint) as response:
        assert response.status == 204
        assert response.headers["Accept-Post"] == "application/sdp"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        methods = _split(response.headers["Access-Control-Allow-Methods"])
        assert {"get", "head", "post", "patch", "delete", "options"} <= methods
        assert CORS_ALLOW_HEADERS <= _split(response.headers["Access-Control-Allow-Headers"])
        assert CORS_EXPOSED <= _split(response.headers["Access-Control-Expose-Headers"])
        assert response.headers["Access-Control-Max-Age"] == "600"
        links = response.headers.getall("Link")
        assert links == ['<stun:stun.l.google.com:19302>; rel="ice-server"']
        assert await response.read() == b""


async def test_cors_preflight_carries_no_ice_servers(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    headers = {"Origin": "https://example.com", "Access-Control-Request-Method": "POST"}
    async with http.options(bare_gateway.url + ENDPOINTS[0], headers=headers) as response:
        assert response.status == 204
        assert "Link" not in response.headers
        assert response.headers["Accept-Post"] == "application/sdp"


async def test_options_on_session_url(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.options(bare_gateway.url + "/api/whip/session/anything") as response:
        assert response.status == 204
        assert response.headers["Accept-Patch"] == "application/trickle-ice-sdpfrag"
        assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_turn_servers_appear_with_credentials(
    gateway_factory: Callable[..., GatewayProcess], http: aiohttp.ClientSession
) -> None:
    gateway = gateway_factory(
        workers=0,
        env={"TURN_URLS": "turn:turn.example:3478", "TURN_USERNAME": "u", "TURN_PASSWORD": "p"},
        wait=None,
    )
    await gateway.wait_healthy()
    async with http.options(gateway.url + ENDPOINTS[1]) as response:
        links = response.headers.getall("Link")
    assert links[1] == (
        '<turn:turn.example:3478>; rel="ice-server"; username="u"; credential="p"; '
        'credential-type="password"'
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_get_on_endpoint_is_204(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession, endpoint: str
) -> None:
    async with http.get(bare_gateway.url + endpoint) as response:
        assert response.status == 204
        assert await response.read() == b""


async def test_head_on_whep_endpoint_advertises_sdp(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.head(bare_gateway.url + ENDPOINTS[1]) as response:
        assert response.status == 200
        assert response.content_type == "application/sdp"
        assert await response.read() == b""


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
async def test_other_methods_on_endpoint_are_405(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession, method: str
) -> None:
    async with http.request(method, bare_gateway.url + ENDPOINTS[0]) as response:
        await assert_json_error(response, 405)
        assert "POST" in response.headers["Allow"]


async def test_put_on_session_is_405(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.put(bare_gateway.url + "/api/whep/session/x") as response:
        await assert_json_error(response, 405)
        assert "PATCH" in response.headers["Allow"]


async def test_health_and_readiness_without_worker(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(bare_gateway.url + "/healthz") as response:
        assert response.status == 200 and await response.text() == "ok"
    async with http.get(bare_gateway.url + "/readyz") as response:
        await assert_json_error(response, 503)


async def test_root_redirects_to_web(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(bare_gateway.url + "/", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/web/"


async def test_unknown_api_path_is_json_404(
    bare_gateway: GatewayProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(bare_gateway.url + "/api/nothing") as response:
        await assert_json_error(response, 404)


async def test_sigterm_stops_cleanly(gateway_factory: Callable[..., GatewayProcess]) -> None:
    gateway = gateway_factory(workers=0, wait=None)  # its own: bare_gateway is shared
    await gateway.wait_healthy()
    assert gateway.stop() == 0
