"""ICE restart on a live session (RFC 9725 §4.3): new ICE credentials, the same DTLS.

Neither aiortc nor aioice can restart ICE. The server is the controlled agent, so a restart
on its side is a change of state, not a procedure: new local credentials (so the client's
new checks, signed with them, are the only ones accepted), the client's new credentials
(for our checks and consent), and the remote candidate set replaced by the client's new one.
The pair in use stays nominated and keeps carrying media until the client nominates a new
pair with its checks; aioice then moves `_nominated`, which the fan-out's send path follows
(`SrtpSendPath`). The DTLS transport and its SRTP keys are untouched, so media continues
without a handshake. If the restart goes nowhere the old pair keeps working until consent
expires, as RFC 9725 requires.
"""

from __future__ import annotations

from dataclasses import dataclass

import aioice.ice
from aioice.utils import random_string
from aiortc import RTCPeerConnection
from aiortc.rtcicetransport import candidate_from_aioice
from aiortc.sdp import candidate_to_sdp

from sfu.aiortc_adapter.ingress import bundle_transport
from sfu.aiortc_adapter.mux import rekey_session


@dataclass(frozen=True)
class RestartedIce:
    """The server's side of a restarted ICE session: its new credentials and candidates
    (`candidate:...` values, as in an SDP a= line without the `a=`)."""

    ufrag: str
    pwd: str
    candidates: list[str]


def restart_ice(pc: RTCPeerConnection, remote_ufrag: str, remote_pwd: str) -> RestartedIce:
    """Restart the ICE session of `pc` with the client's new credentials.

    Raises ValueError for credentials RFC 8445 does not allow, ConnectionError when the
    session's ICE is closed or has never connected (nothing to restart: a new session is
    the answer). The caller adds the client's new candidates afterwards (trickle).
    """
    aioice.ice.validate_username(remote_ufrag)
    aioice.ice.validate_password(remote_pwd)
    ice = bundle_transport(pc).transport
    connection: aioice.ice.Connection = ice._connection
    if connection._closing or connection.remote_password is None or not connection._nominated:
        raise ConnectionError("the session's ICE is not connected")
    old_ufrag = connection.local_username
    connection._local_username = random_string(4)
    connection._local_password = random_string(22)
    connection.remote_username = remote_ufrag
    connection.remote_password = remote_pwd

    # The pair in use stays until a new one is nominated; every other pair and every remote
    # candidate of the old session goes (RFC 9725: both sides replace their remote set).
    in_use = list(connection._nominated.values())
    for pair in list(connection._check_list):
        if pair not in in_use:
            if pair.task is not None:
                pair.task.cancel()
            connection._check_list.remove(pair)
    connection._remote_candidates = [pair.remote_candidate for pair in in_use]
    connection._remote_candidates_end = False
    rekey_session(connection, old_ufrag)

    candidates = [
        "candidate:" + candidate_to_sdp(candidate_from_aioice(candidate))
        for candidate in connection.local_candidates
    ]
    return RestartedIce(connection.local_username, connection.local_password, candidates)
