"""WHIP and WHEP sessions, one module each, and what they share (base)."""

from sfu.session.base import CapacityError, OfferError, Session, SessionKind, SessionSettings
from sfu.session.publisher import PublisherSession
from sfu.session.subscriber import SubscriberSession

__all__ = [
    "CapacityError",
    "OfferError",
    "PublisherSession",
    "Session",
    "SessionKind",
    "SessionSettings",
    "SubscriberSession",
]
