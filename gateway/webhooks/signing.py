"""The signature of webhook requests, Stripe's scheme:

    Live-Sfu-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(WEBHOOK_SECRET, f"{t}.{body}")>

The receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares in
constant time, and refuses a timestamp too far from its clock (a replayed request).
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Live-Sfu-Signature"
EVENT_HEADER = "Live-Sfu-Event"
DELIVERY_HEADER = "Live-Sfu-Delivery"
TOLERANCE_S = 300


def signature(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The Live-Sfu-Signature header value for `body`, signed now (or at `timestamp`)."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature(secret, t, body)}"


def verify(
    secret: str, body: bytes, header: str, tolerance: float = TOLERANCE_S, now: float | None = None
) -> bool:
    """True when `header` is a valid signature of `body`, made within `tolerance` seconds."""
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        t = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - t) > tolerance:
        return False
    expected = signature(secret, t, body)
    return any(hmac.compare_digest(expected, v1) for v1 in fields.get("v1", []))
