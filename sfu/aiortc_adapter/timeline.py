"""What a session's set-up timeline needs to see that aiortc does not announce: the first
STUN check the client sends (aioice has no event for it), and the start and end of the
DTLS handshake (the bundle's RTCDtlsTransport emits ``statechange``, but only aiortc holds
that transport).

Both hooks are per session and one-shot: the check hook is an instance attribute over the
aioice Connection's ``request_received`` that deletes itself at the first request, so the
checks that follow (consent freshness, every few seconds) go straight to aioice again;
nothing is on the media path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection

from sfu.aiortc_adapter.ingress import bundle_transport

log = logging.getLogger(__name__)

Seen = Callable[[], None]


def on_first_check(pc: RTCPeerConnection, seen: Seen) -> None:
    """Call `seen` once, when the first STUN request reaches `pc`'s ICE connection (before
    aioice authenticates and answers it). Call after setRemoteDescription, before the
    answer is sent: no check can come earlier, since the client needs our credentials."""
    connection: Any = bundle_transport(pc).transport._connection
    original = connection.request_received

    def request_received(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        if connection.__dict__.get("request_received") is request_received:
            del connection.request_received  # one-shot: aioice's own method from now on
        try:
            seen()
        except Exception:
            log.exception("the first-check hook failed")
        original(message, addr, protocol)

    connection.request_received = request_received


def on_dtls_state(pc: RTCPeerConnection, changed: Callable[[str], None]) -> None:
    """Call `changed(state)` at each state of `pc`'s bundle DTLS transport ("connecting":
    the handshake starts, right after ICE connected; "connected", "failed", "closed")."""
    dtls = bundle_transport(pc)

    def on_statechange() -> None:
        changed(dtls.state)

    dtls.on("statechange", on_statechange)
