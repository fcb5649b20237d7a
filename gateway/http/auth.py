"""Who may publish, watch and administer: live-webrtc-go's tokens and JWTs, without its holes.

A credential is read from `X-Auth-Token` (when non-empty) or else `Authorization: Bearer`.
Rooms are checked in live-webrtc-go's order:

1. a room listed in ROOM_TOKENS takes its own token or a valid JWT (AUTH_TOKEN does not
   open it);
2. otherwise, with AUTH_TOKEN set, AUTH_TOKEN or a valid JWT;
3. otherwise, with JWT_SECRET set, a valid JWT;
4. otherwise the room is open.

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
from typing import Any

import jwt
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.http.errors import HttpError
from gateway.metrics import COUNTERS_KEY

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
class Claims:
    """What a verified JWT grants."""

    room: str | None  # None: every room
    admin: bool


class InvalidToken(Exception):
    """A JWT that fails verification; the message says why (safe to show: no secrets)."""


def unauthorized(message: str, code: str = "unauthorized") -> HttpError:
    challenge = f'Bearer realm="{REALM}"'
    if code == "invalid_token":
        challenge += ', error="invalid_token"'
    return HttpError(401, code, message, {"WWW-Authenticate": challenge})


def forbidden(message: str, code: str = "forbidden") -> HttpError:
    return HttpError(403, code, message)


class Authenticator:
    def __init__(self, config: GatewayConfig) -> None:
        self.configure(config)
        # Said once in configure; PyJWT would otherwise warn on every verification.
        warnings.filterwarnings("ignore", category=jwt.InsecureKeyLengthWarning)

    def configure(self, config: GatewayConfig) -> None:
        """Take the credentials of `config` (at start, and on a reload: every request after
        this call is judged by the new ones)."""
        auth = config.auth
        self._auth_token = _digest(auth.auth_token) if auth.auth_token else None
        self._admin_token = _digest(auth.admin_token) if auth.admin_token else None
        self._room_tokens = {room: _digest(t) for room, t in auth.room_tokens.items()}
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
        return Claims(room=room or None, admin=admin)

    def _static_match(self, token: str) -> tuple[bool, bool]:
        """(matches some configured static token, matches the admin token).

        Every configured token is compared, so timing does not tell which one matched.
        """
        digest = _digest(token)
        known = _same(digest, self._auth_token)
        for expected in self._room_tokens.values():
            known |= _same(digest, expected)
        admin = _same(digest, self._admin_token)
        return known or admin, admin

    # --- decisions ------------------------------------------------------------------------

    def authorize_room(self, request: web.Request, room: str) -> None:
        """Return if `request` may publish to or watch `room`; raise the 401/403 otherwise."""
        if self.room_is_open(room):
            return
        token = extract_token(request)
        if token is None:
            raise unauthorized(f"room {room!r} needs a token (Authorization: Bearer ...)")
        digest = _digest(token)
        room_token = self._room_tokens.get(room)
        if room_token is not None:
            if _same(digest, room_token):
                return
        elif _same(digest, self._auth_token):
            return
        known, _admin = self._static_match(token)
        if known:
            raise forbidden(f"this token does not grant room {room!r}")
        claims = self._jwt_claims(token)
        if claims.room is not None and claims.room != room:
            raise forbidden(f"this token is for another room, not {room!r}")

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
        """authorize_room as a yes/no, for answers that only add detail when allowed."""
        try:
            self.authorize_room(request, room)
        except HttpError:
            return False
        return True


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


def require_room(request: web.Request, room: str) -> None:
    """Raise the JSON 401/403 unless `request` may publish to or watch `room`."""
    try:
        request.app[AUTH_KEY].authorize_room(request, room)
    except HttpError as exc:
        _count_refusal(request, exc)
        raise


def _count_refusal(request: web.Request, exc: HttpError) -> None:
    counters = request.app.get(COUNTERS_KEY)
    if counters is not None:
        counters.auth_refused.labels(str(exc.status)).inc()
