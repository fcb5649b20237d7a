"""Who may publish, watch and administer: live-webrtc-go's tokens and JWTs, without its holes.

A credential is read from `X-Auth-Token` (when non-empty) or else `Authorization: Bearer`.
Rooms are checked in live-webrtc-go's order:

1. a room listed in ROOM_TOKENS takes its own tokens or a valid JWT (AUTH_TOKEN does not
   open it);
2. otherwise, with AUTH_TOKEN set, AUTH_TOKEN or a valid JWT;
3. otherwise, with JWT_SECRET set, a valid JWT;
4. otherwise the room is open.

Each grant has rights: publish (WHIP), play (WHEP), or both. A ROOM_TOKENS entry
`room:token:publish` or `room:token:play` has one right, the old `room:token` both; a JWT's
`grants` claim lists rooms with their rights (`{"room": "r1", "publish": false, "play":
true}`, a list or one object; a right is granted only by `true`; when present it replaces
the `room` claim), its `room` claim grants both in that room, neither claim both everywhere.
AUTH_TOKEN grants both. With PLAY_OPEN anyone may play every room; publishing still needs a
grant. A credential that grants the room but not the right gets 403 naming both.

With AUTH_HOOK_URL (gateway/authhook.py) the hook decides publish and play instead of the
tokens above (PLAY_OPEN still opens play without asking it); the admin API stays local.

The admin API takes ADMIN_TOKEN or a valid JWT with `role: admin` or `admin: true`. With
neither ADMIN_TOKEN nor JWT_SECRET configured there is no admin credential at all, and the
admin API answers 403 `admin_disabled` to everyone.

Missing or unrecognised credentials get 401 with `WWW-Authenticate: Bearer`; a credential
that is valid but does not grant the room (or admin) gets 403. Static tokens are compared in
constant time over their SHA-256 digests, so neither content nor length leaks through timing.
Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import jwt
from aiohttp import web

from gateway.authhook import AuthHook, HookRequest
from gateway.config import GatewayConfig
from gateway.http.errors import HttpError
from gateway.http.ratelimit import client_address
from gateway.metrics import COUNTERS_KEY
from gateway.settings import ROOM_NAME_PATTERN

Right = Literal["publish", "play"]
RIGHTS: tuple[Right, ...] = ("publish", "play")

log = logging.getLogger(__name__)

JWT_LEEWAY_S = 30  # live-webrtc-go's leeway for exp/nbf/iat
MIN_HMAC_KEY_BYTES = 32
REALM = "live-sfu"
NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")


def _digest(token: str) -> bytes:
    # aiohttp keeps a header's undecodable bytes as surrogates; they must not raise here.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _same(digest: bytes, expected: bytes | None) -> bool:
    return expected is not None and hmac.compare_digest(digest, expected)


def extract_token(request: web.Request) -> str | None:
    """X-Auth-Token if present and non-empty, else the Bearer token; None when there is none."""
    header = request.headers.get("X-Auth-Token", "").strip()
    if header:
        return header
    scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


@dataclass(frozen=True)
class Grant:
    """The rights a credential has in one room."""

    publish: bool
    play: bool

    def allows(self, right: Right) -> bool:
        return self.publish if right == "publish" else self.play


BOTH = Grant(publish=True, play=True)


@dataclass(frozen=True)
class Claims:
    """What a verified JWT grants."""

    room: str | None  # None: every room
    admin: bool
    # The `grants` claim, room -> rights; None when the token has none (then `room` says).
    grants: dict[str, Grant] | None = None

    def grant_for(self, room: str) -> Grant | None:
        if self.grants is not None:
            return self.grants.get(room)
        return BOTH if self.room is None or self.room == room else None


class InvalidToken(Exception):
    """A JWT that fails verification; the message says why (safe to show: no secrets)."""


def unauthorized(message: str, code: str = "unauthorized") -> HttpError:
    challenge = f'Bearer realm="{REALM}"'
    if code == "invalid_token":
        challenge += ', error="invalid_token"'
    return HttpError(401, code, message, {"WWW-Authenticate": challenge})


def forbidden(message: str, code: str = "forbidden") -> HttpError:
    return HttpError(403, code, message)


class RedirectGrants(Protocol):
    """Cluster (gateway/cluster/grant.py): the signed grant another node put in the 307 it
    answered after checking the request's credential (clients drop `Authorization` on a
    redirect to another host)."""

    def accepts(self, request: web.Request, room: str, right: Right) -> bool:
        """True: `request` carries a valid grant for `right` in `room` on this node; False: it
        carries none; raises the 401 for one that is not valid."""
        ...


class Authenticator:
    def __init__(self, config: GatewayConfig) -> None:
        # The hook's settings are restart-only: a reload keeps this one (and its cache).
        access = config.access
        self._hook = AuthHook(access) if access.auth_hook_url else None
        # Set by gateway/cluster/ with NODE_TOKEN (restart-only, so a reload keeps it).
        self.redirect_grants: RedirectGrants | None = None
        self.configure(config)
        # Said once in configure; PyJWT would otherwise warn on every verification.
        warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)

    def configure(self, config: GatewayConfig) -> None:
        """Take the credentials of `config` (at start, and on a reload: every request after
        this call is judged by the new ones)."""
        auth = config.auth
        self._auth_token = _digest(auth.auth_token) if auth.auth_token else None
        self._admin_token = _digest(auth.admin_token) if auth.admin_token else None
        # room -> [(token digest, its rights)]: several tokens per room, each with its rights.
        self._room_tokens: dict[str, list[tuple[bytes, Grant]]] = {}
        for entry in auth.room_grants:
            grant = Grant(publish=entry.publish, play=entry.play)
            self._room_tokens.setdefault(entry.room, []).append((_digest(entry.token), grant))
        self._play_open = config.access.play_open
        self._trusted_proxies = list(config.limits.trusted_proxies)
        self._jwt_secret = auth.jwt_secret
        self._jwt_audience = auth.jwt_audience or None
        self._jwt_algorithms = list(auth.jwt_algorithms)
        if self._jwt_secret and len(self._jwt_secret.encode()) < MIN_HMAC_KEY_BYTES:
            log.warning(
                "JWT_SECRET is shorter than %d bytes; use a longer random secret",
                MIN_HMAC_KEY_BYTES,
            )

    @property
    def admin_configured(self) -> bool:
        return self._admin_token is not None or bool(self._jwt_secret)

    def room_is_open(self, room: str) -> bool:
        return room not in self._room_tokens and self._auth_token is None and not self._jwt_secret

    # --- JWT ------------------------------------------------------------------------------

    def verify_jwt(self, token: str) -> Claims:
        if not self._jwt_secret:
            raise InvalidToken("JWTs are not enabled")
        if not token.isascii():  # a JWT is base64url; PyJWT raises UnicodeError on the rest
            raise InvalidToken("malformed")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                self._jwt_secret,
                algorithms=self._jwt_algorithms,
                audience=self._jwt_audience,
                leeway=JWT_LEEWAY_S,
                options={"require": ["exp"], "verify_aud": self._jwt_audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(_jwt_reason(exc)) from None
        for claim in NUMERIC_DATE_CLAIMS:
            value = payload.get(claim)
            # PyJWT takes "1795999999" too; RFC 7519 §2 says a NumericDate is a JSON number.
            if claim in payload and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InvalidToken(f"the {claim} claim must be a number (NumericDate)")
        room = payload.get("room")
        if room is not None and not isinstance(room, str):
            raise InvalidToken("the room claim must be a string")
        role = payload.get("role")
        admin_claim = payload.get("admin")
        admin = (isinstance(role, str) and role.lower() == "admin") or (
            admin_claim is True or (type(admin_claim) is int and admin_claim == 1)
        )
        grants = _grants_claim(payload["grants"]) if "grants" in payload else None
        return Claims(room=room or None, admin=admin, grants=grants)

    def _static_match(self, token: str) -> tuple[bool, bool]:
        """(matches some configured static token, matches the admin token).

        Every configured token is compared, so timing does not tell which one matched.
        """
        digest = _digest(token)
        known = _same(digest, self._auth_token)
        for tokens in self._room_tokens.values():
            for expected, _grant in tokens:
                known |= _same(digest, expected)
        admin = _same(digest, self._admin_token)
        return known or admin, admin

    def _room_token_grant(self, room: str, digest: bytes) -> Grant | None:
        """The rights of the room token `digest` in `room` (None: not one of its tokens).
        Every token of the room is compared, so timing does not tell which one matched."""
        publish = play = matched = False
        for expected, grant in self._room_tokens.get(room, ()):
            same = _same(digest, expected)
            matched |= same
            publish |= same and grant.publish
            play |= same and grant.play
        return Grant(publish=publish, play=play) if matched else None

    # --- decisions ------------------------------------------------------------------------

    @property
    def hook(self) -> AuthHook | None:
        return self._hook

    def _client_ip(self, request: web.Request) -> str:
        """The client's address (behind TRUSTED_PROXIES, from X-Forwarded-For); "" if none."""
        forwarded = request.headers.getall("X-Forwarded-For", [])
        address = client_address(request.remote, forwarded, self._trusted_proxies)
        return str(address) if address is not None else ""

    def play_is_open(self, right: Right) -> bool:
        """PLAY_OPEN: anyone may play, without a credential and without asking the hook."""
        return right == "play" and self._play_open

    def authorize_room(self, request: web.Request, room: str, right: Right = "publish") -> None:
        """Return if the static credentials (tokens, JWTs, PLAY_OPEN) let `request` use
        `right` in `room`; raise the 401/403 otherwise. The auth hook is not consulted."""
        if self.play_is_open(right) or self.room_is_open(room):
            return
        token = extract_token(request)
        if token is None:
            raise unauthorized(f"room {room!r} needs a token (Authorization: Bearer ...)")
        digest = _digest(token)
        grant: Grant | None = None
        if room in self._room_tokens:
            grant = self._room_token_grant(room, digest)
        elif _same(digest, self._auth_token):
            grant = BOTH
        if grant is None:
            known, _admin = self._static_match(token)
            if known:
                raise forbidden(f"this token does not grant room {room!r}")
            grant = self._jwt_claims(token).grant_for(room)
            if grant is None:
                raise forbidden(f"this token is for another room, not {room!r}")
        if not grant.allows(right):
            other = "play" if right == "publish" else "publish"
            raise forbidden(f"this credential may {other} room {room!r} but not {right}")

    async def authorize_session(
        self, request: web.Request, room: str, right: Right, protocol: str
    ) -> None:
        """A WHIP (publish) or WHEP (play) POST: PLAY_OPEN, then the auth hook when one is
        configured, else the static credentials; raises the 401/403/503."""
        if self.play_is_open(right):
            return
        grants = self.redirect_grants  # cluster: a redirect's grant stands for the credential
        if grants is not None and (self._hook is not None or not self.room_is_open(room)):
            if grants.accepts(request, room, right):
                return
        if self._hook is None:
            self.authorize_room(request, room, right)
            return
        await self._hook.check(
            HookRequest(
                action=right,
                room=room,
                protocol=protocol,
                token=extract_token(request),
                client_ip=self._client_ip(request),
                user_agent=request.headers.get("User-Agent", ""),
                query={key: request.query.get(key, "") for key in request.query},
            )
        )

    def _jwt_claims(self, token: str) -> Claims:
        """The claims of a token that is none of the static ones: a JWT, or 401."""
        if not self._jwt_secret:
            raise unauthorized("invalid token", "invalid_token")
        try:
            return self.verify_jwt(token)
        except InvalidToken as exc:
            raise unauthorized(f"invalid token: {exc}", "invalid_token") from None

    def authorize_admin(self, request: web.Request) -> None:
        if not self.admin_configured:
            raise forbidden(
                "the admin API is disabled: set ADMIN_TOKEN or JWT_SECRET", "admin_disabled"
            )
        token = extract_token(request)
        if token is None:
            raise unauthorized("the admin API needs a token (Authorization: Bearer ...)")
        known, admin = self._static_match(token)
        if admin:
            return
        if known:
            raise forbidden("this token does not grant the admin API")
        claims = self._jwt_claims(token)
        if not claims.admin:
            raise forbidden("this token does not grant the admin API")

    def may_use_room(self, request: web.Request, room: str) -> bool:
        """May publish or play `room`, as a yes/no, for answers that only add detail when
        allowed (TURN credentials). With the auth hook, only PLAY_OPEN or an allow of the
        hook still cached for this credential and client say yes (the hook is not asked)."""
        if self._hook is not None:
            if self._play_open:
                return True
            client = self._client_ip(request)
            return self._hook.allowed_recently(room, extract_token(request), client)
        for right in RIGHTS:
            try:
                self.authorize_room(request, room, right)
            except HttpError:
                continue
            return True
        return False


def _grants_claim(value: object) -> dict[str, Grant]:
    """A JWT's `grants` claim, a list of {"room", "publish", "play"} objects or one object;
    raises InvalidToken when it is malformed."""
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list):
        raise InvalidToken("the grants claim must be an object or a list of objects")
    grants: dict[str, Grant] = {}
    for item in items:
        if not isinstance(item, dict):
            raise InvalidToken("the grants claim must be an object or a list of objects")
        room = item.get("room")
        if not isinstance(room, str) or not ROOM_NAME_PATTERN.match(room):
            raise InvalidToken("each grant needs a valid room")
        rights = {name: item.get(name, False) for name in ("publish", "play")}
        if any(not isinstance(v, bool) for v in rights.values()):
            raise InvalidToken("publish and play in a grant must be true or false")
        before = grants.get(room, Grant(publish=False, play=False))
        grants[room] = Grant(
            publish=before.publish or rights["publish"], play=before.play or rights["play"]
        )
    return grants


def _jwt_reason(exc: jwt.PyJWTError) -> str:
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "not valid yet"
    if isinstance(exc, jwt.InvalidAudienceError):
        return "wrong audience"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"missing the {exc.claim} claim"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "algorithm not accepted"
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, jwt.DecodeError):
        return "malformed"
    return "rejected"


AUTH_KEY = web.AppKey("auth", Authenticator)


def require_admin(request: web.Request) -> None:
    """Raise the JSON 401/403 unless `request` carries an admin credential.

    For every admin route (rooms, workers, recordings). See the module docstring for what
    counts as one, and for the 403 `admin_disabled` when no admin credential is configured.
    """
    try:
        request.app[AUTH_KEY].authorize_admin(request)
    except HttpError as exc:
        _count_refusal(request, exc)
        raise


def require_room(request: web.Request, room: str, right: Right = "publish") -> None:
    """Raise the JSON 401/403 unless the static credentials let `request` use `right` in
    `room` (the auth hook is not asked: see require_session)."""
    try:
        request.app[AUTH_KEY].authorize_room(request, room, right)
    except HttpError as exc:
        _count_refusal(request, exc)
        raise


async def require_session(request: web.Request, room: str, right: Right, protocol: str) -> None:
    """A WHIP/WHEP POST: raise the JSON 401/403 (or the hook's 503) unless `request` may use
    `right` in `room` (Authenticator.authorize_session)."""
    try:
        await request.app[AUTH_KEY].authorize_session(request, room, right, protocol)
    except HttpError as exc:
        _count_refusal(request, exc)
        raise


def setup_access(app: web.Application) -> None:
    """The auth hook's metrics, and its HTTP client closed with the app."""
    hook = app[AUTH_KEY].hook
    if hook is None:
        return
    counters = app.get(COUNTERS_KEY)
    if counters is not None:
        hook.observe = counters.observe_auth_hook

    async def close_hook(app: web.Application) -> None:
        await hook.close()

    app.on_cleanup.append(close_hook)


def _count_refusal(request: web.Request, exc: HttpError) -> None:
    counters = request.app.get(COUNTERS_KEY)
    if counters is not None:
        counters.auth_refused.labels(str(exc.status)).inc()
