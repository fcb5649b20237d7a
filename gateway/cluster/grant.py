"""Signed redirect grants: a credential that survives a 307 to another node.

Clients (aiohttp, libcurl/OBS, browsers' fetch) drop `Authorization` when a redirect goes to
another origin, so a WHIP/WHEP POST redirected to the room's node would arrive there without
its credential. The redirecting node has already checked that credential (or asked the auth
hook), so it adds to the `Location` a grant that says so, signed with a key derived from
NODE_TOKEN (the same on every node), and the target takes a valid grant in its place:

    ?node=<id>&grant=<payload>.<signature>

* `payload`: base64url (no padding) of compact JSON
  `{"v":1,"room":R,"right":"publish"|"play","node":ID,"exp":UNIX_SECONDS,"nonce":N}`:
  the room, the right checked (publish for WHIP, play for WHEP), the target node, the expiry
  (GRANT_TTL_S after it was signed) and 96 random bits;
* `signature`: base64url of HMAC-SHA256(KEY, the payload's base64url text), where KEY =
  HMAC-SHA256(NODE_TOKEN, "live-sfu redirect grant v1") (a key of its own, so a grant's
  signature is never a use of NODE_TOKEN as such, which the relay presents as a bearer token).

The target accepts it for exactly that room, right and node, until its expiry, once (its
nonce is remembered until then); the signature is compared in constant time. Anything else is
401 with a JSON body naming why (`invalid_grant`, `grant_expired`, `grant_other_node`,
`grant_other_room`, `grant_other_right`, `grant_used`). Without NODE_TOKEN no grant is made
nor accepted. The access log replaces every query value, so a grant is never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.http.auth import Right, unauthorized
from gateway.http.errors import HttpError

GRANT_PARAMETER = "grant"
GRANT_VERSION = 1
# Seconds a grant is valid: a client follows a 307 at once; this leaves room for clocks
# that differ between the nodes by a few seconds (keep them in sync: NTP).
GRANT_TTL_S = 30
KEY_LABEL = b"live-sfu redirect grant v1"
MAX_GRANT_CHARS = 1024  # a room (64), a node id (63) and the rest fit in far less
# The remembered nonces are pruned of expired ones whenever there are more than this.
PRUNE_ABOVE = 1024
# The results a check counts (live_redirect_grants_total{result}).
RESULTS = (
    "accepted",
    "invalid_grant",
    "grant_expired",
    "grant_other_node",
    "grant_other_room",
    "grant_other_right",
    "grant_used",
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def grant_key(node_token: str) -> bytes:
    return hmac.new(node_token.encode(), KEY_LABEL, hashlib.sha256).digest()


def sign_grant(
    node_token: str,
    room: str,
    right: Right,
    node_id: str,
    now: float | None = None,
    ttl: float = GRANT_TTL_S,
    nonce: str | None = None,
) -> str:
    """A grant for `right` in `room` on node `node_id`, valid `ttl` seconds from `now`."""
    payload = {
        "v": GRANT_VERSION,
        "room": room,
        "right": right,
        "node": node_id,
        "exp": int((time.time() if now is None else now) + ttl),
        "nonce": nonce if nonce is not None else _b64(secrets.token_bytes(12)),
    }
    text = _b64(json.dumps(payload, separators=(",", ":")).encode())
    signature = hmac.new(grant_key(node_token), text.encode("ascii"), hashlib.sha256).digest()
    return f"{text}.{_b64(signature)}"


def _refused(code: str, message: str) -> HttpError:
    return unauthorized(f"redirect grant refused: {message}", code)


class RedirectGrants:
    """This node's grants: signed for the redirects it answers, checked on the requests that
    followed another node's redirect (gateway/http/auth.py asks `accepts`)."""

    def __init__(
        self, node_token: str, node_id: str, observe: Callable[[str], None] | None = None
    ) -> None:
        self._token = node_token
        self._key = grant_key(node_token)
        self.node_id = node_id
        self._used: dict[str, float] = {}  # nonce -> the grant's expiry (unix seconds)
        self.observe = observe  # called with each check's result (one of RESULTS)

    def sign(self, room: str, right: Right, node_id: str) -> str:
        return sign_grant(self._token, room, right, node_id)

    def accepts(self, request: web.Request, room: str, right: Right) -> bool:
        """True when `request` carries a valid grant for `right` in `room` on this node; False
        when it carries none; raises the 401 for one that is not valid."""
        grant = request.query.get(GRANT_PARAMETER)
        if grant is None:
            return False
        try:
            self.check(grant, room, right)
        except HttpError as exc:
            self._observe(exc.code)
            raise
        self._observe("accepted")
        return True

    def _observe(self, result: str) -> None:
        if self.observe is not None:
            self.observe(result)

    def check(self, grant: str, room: str, right: Right, now: float | None = None) -> None:
        """Return if `grant` is valid for `right` in `room` here (and use it up), else raise
        the 401 naming why."""
        payload = self._verified_payload(grant)
        if payload.get("node") != self.node_id:
            raise _refused(
                "grant_other_node",
                f"this grant is for node {payload.get('node')!r}, not {self.node_id!r}",
            )
        if payload.get("room") != room:
            raise _refused(
                "grant_other_room", f"this grant is for room {payload.get('room')!r}, not {room!r}"
            )
        if payload.get("right") != right:
            raise _refused(
                "grant_other_right",
                f"this grant is for {payload.get('right')!r}, not {right!r}",
            )
        expiry, nonce = payload.get("exp"), payload.get("nonce")
        if isinstance(expiry, bool) or not isinstance(expiry, int) or not isinstance(nonce, str):
            raise _refused("invalid_grant", "malformed")
        now = time.time() if now is None else now
        if now > expiry:
            raise _refused(
                "grant_expired",
                f"expired {now - expiry:.0f} s ago; send the request to the first URL again",
            )
        if nonce in self._used:
            raise _refused(
                "grant_used", "this grant was used already; send the request to the first URL"
            )
        if len(self._used) >= PRUNE_ABOVE:
            self._used = {n: e for n, e in self._used.items() if e >= now}
        self._used[nonce] = expiry

    def _verified_payload(self, grant: str) -> dict[str, Any]:
        text, dot, signature = grant.partition(".")
        if not dot or len(grant) > MAX_GRANT_CHARS or not grant.isascii():
            raise _refused("invalid_grant", "malformed")
        try:
            presented = _unb64(signature)
        except (binascii.Error, ValueError):
            raise _refused("invalid_grant", "malformed") from None
        expected = hmac.new(self._key, text.encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(presented, expected):
            raise _refused("invalid_grant", "bad signature (is NODE_TOKEN the same on every node?)")
        try:
            payload = json.loads(_unb64(text))
        except (binascii.Error, ValueError):
            raise _refused("invalid_grant", "malformed") from None
        if not isinstance(payload, dict) or payload.get("v") != GRANT_VERSION:
            raise _refused("invalid_grant", "malformed or of another version")
        return payload
