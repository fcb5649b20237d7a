"""Adversarial: no configured secret ever leaks, and no client can forge a log line.

One real gateway (one local worker) runs with a distinctive random value for every secret
setting. A barrage of hostile requests goes to it over raw sockets, so that aiohttp's own
HTTP parser, not a client library, sees the bytes: control characters and NUL bytes in header
values that carry each secret, over-long headers and request lines that contain them, tokens
in `?token=` / `?access_token=`, bad chunked bodies, invalid methods, HTTP/0.9 and HTTP/2
prefaces, percent-encoded CR/LF and other control characters in paths, room names,
User-Agent and X-Forwarded-For, and well-formed requests with wrong credentials (JWTs signed
with another key that carry a real secret in a claim).

Then, over everything the gateway wrote and answered:

(a) no secret (raw or URL-encoded) in the log file, in any response (status line, headers,
    body) or in /metrics;
(b) every malformed request is refused with a 4xx, and every 4xx/5xx is the gateway's JSON
    {"error", "code"};
(c) every log line starts with the log format's timestamp; no traceback; no control
    characters (a log viewer would honour CR, NEL, U+2028 ... as line breaks or escapes);
    no line starts with the injected `X-Injected` or a forged timestamp;
(d) the gateway is still healthy and its worker was never restarted.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import jwt

from testkit.processes import GatewayProcess

PROBE_TIMEOUT_S = 1.5  # per connection: a hostile request must be answered (or dropped) fast
HOST = "Host: 127.0.0.1\r\n"
PAD = 9000  # past aiohttp's 8190-byte limit on a request line or a header
OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=ice-ufrag:cli1\r\na=ice-pwd:clientpasswordclientpass\r\na=sendonly\r\n"
)
# configure_logging in gateway/__main__.py: "%(asctime)s %(levelname)s %(name)s: %(message)s";
# the workers (sfu/__main__.py) add "sfu-worker[pid]" before the level.
LOG_PREFIX = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:\S+\[\d+\] )?"
    r"(?:DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: "
)
# What a terminal or log viewer treats as a line break or an escape: C0 (but TAB and LF), DEL,
# C1 (NEL is U+0085), and the Unicode line and paragraph separators.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
TRACEBACK = "Traceback (most recent call last):"
FORGED_DAY = "2000-01-01"  # the forged log lines' date: never a real line's


# --- secrets ----------------------------------------------------------------------------------


def _token(label: str) -> str:
    # '+', '/' and '=' as in base64 tokens: their URL-encoded form differs from the raw one.
    return f"{label}{secrets.token_hex(12)}+/="


@dataclass(frozen=True)
class Secrets:
    auth_token: str = field(default_factory=lambda: _token("AuthTok"))
    room_token: str = field(default_factory=lambda: _token("RoomTok"))
    admin_token: str = field(default_factory=lambda: _token("AdminTok"))
    jwt_secret: str = field(default_factory=lambda: "JwtSecret" + secrets.token_hex(24))
    turn_secret: str = field(default_factory=lambda: _token("TurnSecret"))
    worker_token: str = field(default_factory=lambda: _token("WorkerTok"))
    s3_access_key: str = field(default_factory=lambda: "S3Access" + secrets.token_hex(10))
    s3_secret_key: str = field(default_factory=lambda: _token("S3Secret"))

    def valid_jwt(self) -> str:
        claims = {"room": "r1", "exp": int(time.time()) + 3600, "jti": secrets.token_hex(8)}
        return jwt.encode(claims, self.jwt_secret, algorithm="HS256")

    def gateway_args(self) -> list[str]:
        # S3 keys are accepted without UPLOAD_RECORDINGS (gateway/config.py _check_upload),
        # so they are configured, and must not leak, without any S3 server running.
        return [
            "--auth-token", self.auth_token,
            "--room-tokens", f"r1:{self.room_token}",
            "--jwt-secret", self.jwt_secret,
            "--admin-token", self.admin_token,
            "--turn-urls", "turn:127.0.0.1:3478",
            "--turn-secret", self.turn_secret,
            "--worker-token", self.worker_token,
            "--s3-access-key", self.s3_access_key,
            "--s3-secret-key", self.s3_secret_key,
            "--trusted-proxies", "127.0.0.1",  # X-Forwarded-For is parsed, not ignored
            "--rate-limit-rps", "0",  # every probe must reach the code under test, not a 429
        ]  # fmt: skip


def forms(value: str) -> list[str]:
    """The raw value and its URL-encoded forms (as a query, a path, a cookie would carry it)."""
    return sorted({value, quote(value, safe=""), quote(value), quote(value, safe="/+=")})


def find_secrets(text: str, named: dict[str, str]) -> list[str]:
    lowered = text.lower()
    found = []
    for name, value in named.items():
        for form in forms(value):
            if form in text or (form != value and form.lower() in lowered):
                found.append(f"{name} ({'raw' if form == value else 'encoded ' + form})")
    return found


# --- raw HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    name: str
    raw: bytes
    malformed: bool = True  # must be refused with a 4xx
    # Not HTTP/1.x at all (TLS, HTTP/2, HTTP/0.9): closing without an answer is as good as
    # a 400.
    answer_optional: bool = False
    # No HTTP/1.x version: 505 HTTP Version Not Supported is as right as a 400.
    version_probe: bool = False


@dataclass
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


@dataclass
class Reply:
    probe: Probe
    raw: bytes
    responses: list[HttpResponse]
    note: str = ""

    def describe(self) -> str:
        head = self.raw[:300].decode("latin-1")
        return f"{self.probe.name}: {self.note or 'ok'}; got {head!r}"


def exchange(port: int, data: bytes, timeout: float = PROBE_TIMEOUT_S) -> tuple[bytes, str]:
    """Send `data`, read until the server closes (or `timeout`); (bytes read, what happened)."""
    received = bytearray()
    note = ""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            try:
                sock.sendall(data)
            except OSError as exc:  # answered and closed before the whole request was sent
                note = f"send failed: {exc.__class__.__name__}"
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return bytes(received), "timeout"
                sock.settimeout(remaining)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    return bytes(received), "timeout"
                except OSError as exc:
                    return bytes(received), f"recv failed: {exc.__class__.__name__}"
                if not chunk:
                    return bytes(received), note
                received += chunk
    except OSError as exc:
        return bytes(received), f"connect failed: {exc}"


def _dechunk(data: bytes) -> tuple[bytes, bytes]:
    body = bytearray()
    while True:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0:
            _, _, data = data.partition(b"\r\n")
            return bytes(body), data
        body += data[:size]
        data = data[size + 2 :]


def parse_responses(raw: bytes) -> list[HttpResponse]:
    responses: list[HttpResponse] = []
    rest = raw
    while rest.startswith(b"HTTP/"):
        head, sep, rest = rest.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        response = HttpResponse(status, headers, b"")
        if not sep:
            responses.append(response)
            break
        length = response.header("content-length")
        if (response.header("transfer-encoding") or "").lower() == "chunked":
            try:
                response.body, rest = _dechunk(rest)
            except ValueError:
                response.body, rest = rest, b""
        elif length is not None and length.isdigit():
            response.body, rest = rest[: int(length)], rest[int(length) :]
        else:
            response.body, rest = rest, b""
        responses.append(response)
    return responses


def send_probe(port: int, probe: Probe) -> Reply:
    raw, note = exchange(port, probe.raw)
    return Reply(probe, raw, parse_responses(raw), note)


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


# --- the barrage ------------------------------------------------------------------------------


def request(line: str, headers: Iterable[str] = (), body: bytes = b"", close: bool = True) -> bytes:
    """A request with `line` and `headers` exactly as given (control characters and all)."""
    head = line + "\r\n" + HOST + "".join(h + "\r\n" for h in headers)
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body


def forged_jwt(claims: dict[str, Any], key: str, headers: dict[str, Any] | None = None) -> str:
    payload = {"exp": int(time.time()) + 3600, **claims}
    return jwt.encode(payload, key, algorithm="HS256", headers=headers)


def unsigned_jwt(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def probes_carrying(name: str, s: str) -> list[Probe]:
    """Malformed requests that carry the secret `s` where aiohttp's parser chokes on them."""
    q = quote(s, safe="")
    pad = "A" * PAD
    publish = "POST /api/whip/publish/r1 HTTP/1.1"
    empty = "Content-Length: 0"
    sdp = "Content-Type: application/sdp"

    def p(vector: str, raw: bytes, **kwargs: Any) -> Probe:
        return Probe(f"{name}/{vector}", raw, **kwargs)

    return [
        p("authorization-ctl-01", request(publish, [f"Authorization: Bearer {s}\x01", empty])),
        p("authorization-nul", request(publish, [f"Authorization: Bearer {s}\x00", empty])),
        p("authorization-bare-cr", request(publish, [f"Authorization: Bearer {s}\rX: 1", empty])),
        p("authorization-obs-fold", request(publish, ["Authorization: Bearer", f" {s}", empty])),
        p("x-auth-token-ctl-7f", request(publish, [f"X-Auth-Token: {s}\x7f", empty])),
        p("x-auth-token-ctl-1b", request(publish, [f"X-Auth-Token: \x1b[0m{s}", empty])),
        p("cookie-ctl-1b", request(publish, [f"Cookie: sid={s}\x1b[31m", empty])),
        p("header-name-space", request(publish, [f"Authorization : Bearer {s}", empty])),
        p("header-without-colon", request(publish, [f"Bearer {s}", empty])),
        p("content-length-secret", request(publish, [f"Content-Length: {s}"])),
        p("long-x-auth-token", request(publish, [f"X-Auth-Token: {s}{pad}", empty])),
        p("long-authorization", request(publish, [f"Authorization: Bearer {pad}{s}", empty])),
        p("long-header-name", request(publish, [f"X-{s}-{pad}: 1", empty])),
        p(
            "long-line-token",
            request(f"GET /api/bootstrap?room=r1&token={q}&pad={pad} HTTP/1.1"),
        ),
        p(
            "long-line-access-token",
            request(f"GET /api/whep/play/r1/{pad}?access_token={q} HTTP/1.1"),
        ),
        p("bad-version", request(f"GET /api/bootstrap?access_token={q} HTTP/7.3")),
        p("nul-in-target", request(f"GET /api/bootstrap?token={q}\x00 HTTP/1.1")),
        p("space-in-target", request(f"GET /api/bootstrap?token={s} x HTTP/1.1")),
        p("method-ctl", request(f"G\x01T /api/bootstrap?token={q} HTTP/1.1")),
        p(
            "pipelined-bad-method",  # not the first request: aiohttp logs it at ERROR
            request("GET /healthz HTTP/1.1", close=False)
            + request(f"G\x01T /api/bootstrap?token={q} HTTP/1.1"),
        ),
        p(
            "pipelined-bad-header",
            request("GET /healthz HTTP/1.1", close=False)
            + request(publish, [f"Authorization: Bearer {s}\x01", empty]),
        ),
        p(
            "bad-chunk-size",
            request(
                publish,
                [f"Authorization: Bearer {s}", sdp, "Transfer-Encoding: chunked"],
                f"{s}\r\n{OFFER}\r\n0\r\n\r\n".encode(),
            ),
        ),
        p(
            "bad-chunk-length",
            request(
                publish,
                [f"X-Auth-Token: {s}", sdp, "Transfer-Encoding: chunked"],
                f"5\r\n{s}\r\n0\r\n\r\n".encode(),
            ),
        ),
        p(
            "te-and-content-length",
            request(
                publish,
                [f"Authorization: Bearer {s}", "Transfer-Encoding: chunked", "Content-Length: 3"],
                b"0\r\n\r\n",
            ),
        ),
        p(
            "obs-text-token",
            request(publish, [f"X-Auth-Token: {s}", empty]).replace(
                s.encode(), s.encode() + b"\xff\xfe"
            ),
        ),
        p(
            "http09-no-version",
            f"GET /api/bootstrap?token={q}\r\n\r\n".encode(),
            answer_optional=True,
            version_probe=True,
        ),
        p(
            "http2-preface",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"
            + f"authorization: Bearer {s}".encode(),
            answer_optional=True,
        ),
        p(
            "tls-client-hello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + s.encode() + b"\x00" * 32,
            answer_optional=True,
        ),
    ]


def well_formed_probes(sec: Secrets, everything: dict[str, str]) -> list[Probe]:
    """Valid HTTP with wrong credentials (and secrets where the gateway must not echo them)."""
    wrong_key = "not-the-secret-" + secrets.token_hex(16)
    leaky = {"room": "r1", "leak": sec.admin_token, "role": "admin", "sub": sec.auth_token}
    jwts = {
        "jwt-wrong-key": forged_jwt(leaky, wrong_key),
        "jwt-kid-secret": forged_jwt({"room": "r1"}, wrong_key, {"kid": sec.jwt_secret}),
        "jwt-room-secret": forged_jwt({"room": sec.room_token}, wrong_key),
        "jwt-alg-none": unsigned_jwt({"room": "r1", "role": "admin", "leak": sec.turn_secret}),
        "jwt-bad-signature": sec.valid_jwt()[:-6] + "AAAAAA",
        "jwt-truncated": sec.valid_jwt().rsplit(".", 1)[0],
        "jwt-garbage": f"{sec.worker_token}.{sec.jwt_secret}.x",
    }
    sdp = ["Content-Type: application/sdp", f"Content-Length: {len(OFFER)}"]
    publish = "POST /api/whip/publish/r1 HTTP/1.1"
    result: list[Probe] = []
    for label, token in jwts.items():
        bearer = f"Authorization: Bearer {token}"
        result += [
            Probe(f"{label}/publish", request(publish, [bearer, *sdp], OFFER.encode())),
            Probe(
                f"{label}/play-x-auth-token",
                request(
                    "POST /api/whep/play/r1 HTTP/1.1",
                    [f"X-Auth-Token: {token}", *sdp],
                    OFFER.encode(),
                ),
            ),
            Probe(f"{label}/admin-workers", request("GET /api/admin/workers HTTP/1.1", [bearer])),
            Probe(
                f"{label}/admin-close",
                request("POST /api/admin/rooms/r1/close HTTP/1.1", [bearer, "Content-Length: 0"]),
            ),
            Probe(
                f"{label}/options",
                request("OPTIONS /api/whip/publish/r1 HTTP/1.1", [bearer]),
                malformed=False,
            ),
            Probe(
                f"{label}/bootstrap-query",
                request(f"GET /api/bootstrap?room=r1&token={quote(token, safe='')} HTTP/1.1"),
                malformed=False,
            ),
        ]
    for name, value in everything.items():
        q = quote(value, safe="")
        if name not in ("ROOM_TOKENS r1", "valid JWT"):  # those would open room r1
            # A secret that is not r1's credential, as r1's bearer token: 401/403.
            bearer = f"Authorization: Bearer {value}"
            result.append(
                Probe(f"{name}/as-bearer", request(publish, [bearer, *sdp], OFFER.encode()))
            )
        # A real secret in the query of a valid request: the access log must redact it.
        result += [
            Probe(
                f"{name}/query-token",
                request(f"GET /api/bootstrap?room=r1&access_token={q}&token={q} HTTP/1.1"),
                malformed=False,
            ),
            Probe(
                f"{name}/absolute-form-userinfo",
                request(f"GET http://u:{q}@127.0.0.1/api/bootstrap?token={q} HTTP/1.1"),
                malformed=False,
            ),
        ]
    return result


def injection_probes(marker: str) -> list[Probe]:
    """Requests that try to write a line of their own into the log, or control characters."""
    forged = f"{FORGED_DAY} 00:00:00,000 CRITICAL gateway: {marker}"
    forged_q = quote(forged)
    inj = f"X-Injected:%20{marker}"
    get = "GET {} HTTP/1.1"
    lines = {
        "whip-crlf": f"POST /api/whip/publish/%0d%0a{inj} HTTP/1.1",
        "whip-crlf-known": "POST /api/whip/publish/%0d%0aX-Injected:%201 HTTP/1.1",
        "whep-lf": get.format(f"/api/whep/play/%0a{inj}"),
        "whip-cr": get.format(f"/api/whip/publish/%0d{inj}"),
        "admin-close-crlf": f"POST /api/admin/rooms/%0d%0a{inj}/close HTTP/1.1",
        "session-lf": get.format(f"/api/whip/session/%0a{inj}"),
        "not-found-forged-timestamp": get.format(f"/nope/%0a{forged_q}"),
        "room-forged-timestamp": f"POST /api/whip/publish/%0d%0a{forged_q} HTTP/1.1",
        "room-ansi-escape": get.format("/api/whip/publish/%1b%5b2J%1b%5b31mred"),
        "room-nul": get.format("/api/whep/play/r%00oom"),
        "room-del": get.format("/api/whep/play/r%7foom"),
        "room-backspace": get.format("/api/whep/play/r%08%08%08admin"),
        "room-nel": get.format(f"/api/whep/play/r%c2%85{inj}"),
        "room-line-separator": get.format(f"/api/whep/play/r%e2%80%a8{inj}"),
        "room-vt-ff": get.format(f"/api/whep/play/r%0b%0c{inj}"),
        "query-room-crlf": get.format(f"/api/bootstrap?room=%0d%0a{inj}"),
        "static-crlf": get.format(f"/web/%0d%0a{inj}"),
    }
    result = [Probe(name, request(line)) for name, line in lines.items()]
    # Valid requests (an unknown query key is ignored) whose log line must still be one line.
    result.append(
        Probe("query-key-crlf", request(get.format(f"/api/bootstrap?%0d%0a{inj}=1")), False)
    )
    ua = "GET /healthz HTTP/1.1"  # a 200 page: its access-log line has the User-Agent
    headers = {
        "ua-esc": f"User-Agent: probe\x1b[2J\x1b[31m{marker}",
        "ua-bare-cr": f"User-Agent: probe\rX-Injected: {marker}",
        "ua-nul": f"User-Agent: probe\x00{marker}",
        "xff-esc": f"X-Forwarded-For: 203.0.113.7\x1b[31m{marker}",
        "xff-bare-cr": f"X-Forwarded-For: 203.0.113.7\rX-Injected: {marker}",
    }
    result += [Probe(name, request(ua, [h])) for name, h in headers.items()]
    # Bytes >= 0x80 are obs-text, which HTTP allows in a header value; as UTF-8 they are
    # NEL (U+0085) and LINE SEPARATOR (U+2028): line breaks to many log readers.
    obs_text = {
        "ua-utf8-nel": b"User-Agent: probe\xc2\x85X-Injected: ",
        "ua-utf8-line-separator": b"User-Agent: probe\xe2\x80\xa8X-Injected: ",
        "ua-utf8-forged-timestamp": b"User-Agent: probe\xe2\x80\xa8" + forged.encode() + b" ",
        "xff-utf8-line-separator": b"X-Forwarded-For: 203.0.113.7\xe2\x80\xa8X-Injected: ",
        "xff-utf8-on-api": b"X-Forwarded-For: \xc2\x85X-Injected: ",
    }
    for name, header in obs_text.items():
        target = "GET /api/bootstrap HTTP/1.1" if "on-api" in name else ua
        raw = (target + "\r\n" + HOST).encode() + header + marker.encode()
        raw += b"\r\nConnection: close\r\n\r\n"
        # A valid request with an odd header value: any status, but no forged line.
        result.append(Probe(name, raw, malformed=False))
    # Malformed in general, without secrets.
    result += [
        Probe("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", answer_optional=True),
        Probe("http09", b"GET /\r\n", answer_optional=True, version_probe=True),
        Probe("http09-complete", b"GET /\r\n\r\n", answer_optional=True, version_probe=True),
        Probe("garbage-binary", bytes(range(256)) + b"\r\n\r\n", answer_optional=True),
        Probe("method-nul", request("GET\x00 /healthz HTTP/1.1")),
        Probe("method-crlf-forged", request(f"GET /\rX-Injected: {marker} HTTP/1.1")),
        Probe(
            "bad-chunk-open-endpoint",
            request(
                "POST /api/whip/publish/r2 HTTP/1.1",
                ["Content-Type: application/sdp", "Transfer-Encoding: chunked"],
                b"zz\r\nnot hex\r\n0\r\n\r\n",
            ),
        ),
        Probe(
            "chunk-extension-crlf",
            request(
                "POST /api/whip/publish/r2 HTTP/1.1",
                ["Content-Type: application/sdp", "Transfer-Encoding: chunked"],
                f"3;x=\rX-Injected: {marker}\r\nabc\r\n0\r\n\r\n".encode(),
            ),
        ),
        Probe(
            "double-content-length",
            request(
                "POST /api/whip/publish/r2 HTTP/1.1",
                ["Content-Length: 1", "Content-Length: 2"],
                b"ab",
            ),
        ),
        Probe("negative-content-length", request("POST /healthz HTTP/1.1", ["Content-Length: -1"])),
        Probe(
            "upgrade-h2c",
            request("GET /healthz HTTP/1.1", ["Upgrade: h2c", "HTTP2-Settings: %"]),
            malformed=False,
        ),
    ]
    return result


# --- log checks -------------------------------------------------------------------------------


def log_problems(text: str) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {
        "unprefixed line": [],
        "traceback": [],
        "control character": [],
        "forged line": [],
    }
    in_traceback = False
    # splitlines(): every line break a reader may honour, CR, NEL and U+2028 included.
    for number, line in enumerate(text.splitlines(), 1):
        shown = f"line {number}: {line[:240]!r}"
        if line.lstrip().startswith(("X-Injected", FORGED_DAY)):
            problems["forged line"].append(shown)
        if TRACEBACK in line:
            problems["traceback"].append(shown)
            in_traceback = True
            continue
        if LOG_PREFIX.match(line):
            in_traceback = False
        elif not in_traceback:  # a traceback's own lines are reported once, as "traceback"
            problems["unprefixed line"].append(shown)
    for number, line in enumerate(text.split("\n"), 1):
        if CONTROL.search(line):
            problems["control character"].append(f"line {number}: {line[:240]!r}")
    return {k: v for k, v in problems.items() if v}


def check_error_response(reply: Reply) -> list[str]:
    """(b): malformed -> 4xx; every 4xx/5xx is JSON {"error": str, "code": str}."""
    found: list[str] = []
    probe = reply.probe
    if probe.malformed:
        last = reply.responses[-1] if reply.responses else None
        if last is None:
            if not probe.answer_optional:
                found.append(f"no answer ({reply.note or 'closed'})")
        elif not (400 <= last.status < 500 or (probe.version_probe and last.status == 505)):
            found.append(f"status {last.status}, not 4xx")
    for response in reply.responses:
        if response.status < 400:
            continue
        content_type = (response.header("content-type") or "").split(";")[0].strip()
        try:
            data = json.loads(response.body)
        except ValueError:
            data = None
        if (
            content_type != "application/json"
            or not isinstance(data, dict)
            or not isinstance(data.get("error"), str)
            or not isinstance(data.get("code"), str)
        ):
            found.append(
                f"{response.status} {content_type or 'no content-type'} is not JSON "
                f"error/code: {response.body[:160]!r}"
            )
    return found


def admin_workers(url: str, admin_token: str) -> list[tuple[str, int]]:
    status, body = http_get(url + "/api/admin/workers", {"Authorization": f"Bearer {admin_token}"})
    assert status == 200, body
    return sorted((w["id"], w["pid"]) for w in json.loads(body))


# --- the test ---------------------------------------------------------------------------------


def test_no_secret_leaks_and_no_forged_log_lines(
    gateway_factory: Callable[..., GatewayProcess],
) -> None:
    started = time.monotonic()
    sec = Secrets()
    valid_jwt = sec.valid_jwt()
    everything = {
        "AUTH_TOKEN": sec.auth_token,
        "ROOM_TOKENS r1": sec.room_token,
        "ADMIN_TOKEN": sec.admin_token,
        "JWT_SECRET": sec.jwt_secret,
        "TURN_SECRET": sec.turn_secret,
        "WORKER_TOKEN": sec.worker_token,
        "S3_ACCESS_KEY": sec.s3_access_key,
        "S3_SECRET_KEY": sec.s3_secret_key,
        "valid JWT": valid_jwt,
    }
    gateway = gateway_factory(workers=1, args=sec.gateway_args())
    workers_before = admin_workers(gateway.url, sec.admin_token)
    assert len(workers_before) == 1, workers_before

    marker = "FORGED" + secrets.token_hex(4)
    probes = [p for name, value in everything.items() for p in probes_carrying(name, value)]
    probes += well_formed_probes(sec, everything)
    probes += injection_probes(marker)
    assert len(probes) <= 400, len(probes)
    replies = [send_probe(gateway.port, probe) for probe in probes]

    metrics_status, metrics = http_get(gateway.url + "/metrics")
    health_status, health = http_get(gateway.url + "/healthz")
    workers_after = admin_workers(gateway.url, sec.admin_token)
    time.sleep(0.5)  # let the last log lines land
    log_text = gateway.log_path.read_bytes().decode("utf-8", errors="backslashreplace")

    failures: dict[str, list[str]] = {}

    def fail(category: str, item: str) -> None:
        failures.setdefault(category, []).append(item)

    # (a) secrets: log, responses, metrics
    for line_number, line in enumerate(log_text.split("\n"), 1):
        for leak in find_secrets(line, everything):
            fail("(a) secret in the log", f"{leak}, line {line_number}: {line[:300]!r}")
    for reply in replies:
        for leak in find_secrets(reply.raw.decode("latin-1"), everything):
            fail("(a) secret in a response", f"{leak} <- {reply.describe()}")
    assert metrics_status == 200, metrics[:500]
    for leak in find_secrets(metrics, everything):
        fail("(a) secret in /metrics", leak)

    # (b) malformed -> 4xx; errors are JSON. aiohttp answers a request its parser rejects
    # before the app sees it, with a plain-text 400, but its RequestHandler.handle_error can
    # answer that 400 as JSON, so JSON is required there too. Only for bytes that are not
    # HTTP/1.x at all (TLS, HTTP/2 preface, HTTP/0.9: answer_optional) may the gateway close
    # without an answer; whatever it does answer must still be a 4xx without secrets.
    for reply in replies:
        for problem in check_error_response(reply):
            fail(
                "(b) malformed request not refused with a JSON 4xx",
                f"{problem} <- {reply.probe.name}",
            )

    # (c) the log: one line per record, each with the format's timestamp; no traceback for
    # client errors; no control characters; nothing that starts like an injected line.
    for category, items in log_problems(log_text).items():
        for item in items:
            fail(f"(c) {category} in the log", item)

    # (d) still healthy, same worker
    if health_status != 200:
        fail("(d) unhealthy", f"/healthz {health_status}: {health[:200]}")
    if workers_after != workers_before:
        fail("(d) worker restarted", f"{workers_before} -> {workers_after}")
    for line in log_text.splitlines():
        if re.search(r"exited with code|respawning|stopping worker|killing", line):
            fail("(d) worker restarted", line[:300])

    elapsed = time.monotonic() - started
    if failures:
        report = [f"{len(probes)} probes in {elapsed:.1f} s; log {gateway.log_path}"]
        for category, items in failures.items():
            report.append(f"{category}: {len(items)}")
            report += [f"    {item}" for item in items[:12]]
            if len(items) > 12:
                report.append(f"    ... and {len(items) - 12} more")
        raise AssertionError("\n".join(report))
