"""A client-side ICE restart for aiortc peers (test tooling: aiortc has no restartIce()).

What a browser does on `pc.restartIce()` after a network change, done on the peer's aioice
Connection: new local credentials, a new socket (a new local port: the "new network"), a
WHIP/WHEP PATCH with `If-Match: *` carrying the new credentials and candidate (RFC 9725
§4.3), then checks with the server's new credentials over the new socket, nominating the
first pair that works (aioice's controlling side nominates aggressively). The old socket is
closed afterwards, so anything still received comes through the new pair.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import aioice.ice
from aioice.candidate import Candidate
from aioice.utils import random_string
from aiortc import RTCPeerConnection
from aiortc.rtcicetransport import candidate_from_aioice
from aiortc.sdp import candidate_to_sdp

SDPFRAG = "application/trickle-ice-sdpfrag"


@dataclass
class RestartResult:
    status: int
    etag: str | None
    fragment: str
    old_port: int
    new_port: int
    server_ufrag: str


def _connection(pc: RTCPeerConnection) -> aioice.ice.Connection:
    transceiver = pc.getTransceivers()[0]
    connection: aioice.ice.Connection = transceiver.receiver.transport.transport._connection
    return connection


def _fragment_value(fragment: str, name: str) -> str:
    for line in fragment.splitlines():
        if line.startswith(f"a={name}:"):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"no a={name} in {fragment!r}")


async def restart_ice(
    pc: RTCPeerConnection,
    http: aiohttp.ClientSession,
    location: str,
    address: str = "127.0.0.1",
    within: float = 5.0,
) -> RestartResult:
    """Restart `pc`'s ICE through the session at `location`; returns once a pair over the
    new socket is nominated (raises TimeoutError otherwise) and the old socket is closed."""
    connection = _connection(pc)
    old_pair = connection._nominated[1]
    old_protocol = old_pair.protocol
    connection._local_username = random_string(4)
    connection._local_password = random_string(22)
    candidates = await connection.get_component_candidates(component=1, addresses=[address])
    new_protocol = connection._protocols[-1]
    lines = [
        f"a=ice-ufrag:{connection.local_username}",
        f"a=ice-pwd:{connection.local_password}",
        "m=audio 9 UDP/TLS/RTP/SAVPF 0",
        "a=mid:0",
        *(f"a=candidate:{candidate_to_sdp(candidate_from_aioice(c))}" for c in candidates),
        "a=end-of-candidates",
    ]
    async with http.patch(
        location,
        data="\r\n".join(lines) + "\r\n",
        headers={"Content-Type": SDPFRAG, "If-Match": "*"},
    ) as response:
        body = await response.text()
        result = RestartResult(
            status=response.status,
            etag=response.headers.get("ETag"),
            fragment=body,
            old_port=old_protocol.local_candidate.port,
            new_port=new_protocol.local_candidate.port,
            server_ufrag="",
        )
    if result.status != 200:
        return result
    result.server_ufrag = _fragment_value(body, "ice-ufrag")
    connection.remote_username = result.server_ufrag
    connection.remote_password = _fragment_value(body, "ice-pwd")
    remotes = [
        Candidate.from_sdp(line[len("a=candidate:") :])
        for line in body.splitlines()
        if line.startswith("a=candidate:")
    ]
    for remote in remotes:
        remote._network_host = remote.host  # what aioice sets when it validates a candidate
    connection._remote_candidates = remotes
    pairs = [
        aioice.ice.CandidatePair(new_protocol, remote)
        for remote in remotes
        if new_protocol.local_candidate.can_pair_with(remote)
    ]
    connection._check_list = pairs
    for pair in pairs:
        connection.check_start_task(pair)
    deadline = asyncio.get_running_loop().time() + within
    while connection._nominated.get(1) is old_pair:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("no pair over the new socket was nominated")
        await asyncio.sleep(0.02)
    connection._protocols.remove(old_protocol)
    await old_protocol.close()
    return result
