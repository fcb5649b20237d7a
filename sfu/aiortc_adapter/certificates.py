"""One DTLS certificate per worker, rotated on a schedule, instead of one per session.

aiortc makes a new ECDSA key and self-signed certificate in every
``RTCPeerConnection.__init__`` (``RTCCertificate.generateCertificate``), on the answer path
of every session, then computes its three fingerprints again for every answer and builds a
new OpenSSL context for every DTLS handshake. WebRTC identifies a peer by the fingerprint
signalled in the SDP, not by the certificate's name or chain, so every session of a worker
may present the same certificate (browsers keep one per origin for the same reason).

The seam: ``aiortc.rtcpeerconnection`` looks ``RTCCertificate`` up as a module global in
``__init__``; `install_certificates` replaces that one name with a shim whose
``generateCertificate`` hands out the worker's current certificate (nothing else in that
module uses the name). The certificate is a `WorkerCertificate`, an ``RTCCertificate``
whose fingerprints are computed once and whose OpenSSL context is built once per SRTP
profile list (a context is shared by any number of connections; aiortc sets nothing on
it afterwards). `CertificateStore.rotate` makes a new one every ``CERT_ROTATE`` seconds on
the worker's loop timer, never on the answer path: new sessions get the new one, a
session keeps the one it answered with (its DTLS transport holds it). aiortc's
certificates are valid from a day before their creation to 30 days after it, so
``CERT_ROTATE`` stays well under 30 days.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiortc.rtcpeerconnection
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    SRTPProtectionProfile,
    generate_certificate,
)
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from sfu.aiortc_adapter.versions import AdapterError

log = logging.getLogger(__name__)

# A week under aiortc's 30-day validity: a certificate is never presented after it expires.
MAX_ROTATE_S = 14 * 86400.0


class WorkerCertificate(RTCCertificate):
    """An aiortc certificate shared by many sessions: its fingerprints and its OpenSSL
    context (per SRTP profile list) are made once, not once per answer and handshake."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        super().__init__(key, cert)
        self._fingerprints = super().getFingerprints()
        self._contexts: dict[tuple[bytes, ...], SSL.Context] = {}
        self.created = time.monotonic()

    @classmethod
    def generate(cls) -> WorkerCertificate:
        """A new key and certificate, as aiortc's own generateCertificate makes them."""
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, generate_certificate(key))

    def getFingerprints(self) -> list[RTCDtlsFingerprint]:  # aiortc's name
        return list(self._fingerprints)

    def _create_ssl_context(self, srtp_profiles: list[SRTPProtectionProfile]) -> SSL.Context:
        key = tuple(profile.openssl_profile for profile in srtp_profiles)
        context = self._contexts.get(key)
        if context is None:
            context = self._contexts[key] = super()._create_ssl_context(srtp_profiles)
        return context

    @property
    def fingerprint(self) -> str:
        """The sha-256 fingerprint, as an answer's a=fingerprint says it."""
        for fingerprint in self._fingerprints:
            if fingerprint.algorithm == "sha-256":
                return fingerprint.value
        return self._fingerprints[0].value


class CertificateStore:
    """The worker's current certificate, replaced every `rotate_s` seconds once `start`ed."""

    def __init__(self, rotate_s: float) -> None:
        if not 0 < rotate_s <= MAX_ROTATE_S:
            raise ValueError(f"the rotation period must be between 0 and {MAX_ROTATE_S:g} s")
        self.rotate_s = rotate_s
        self.current = WorkerCertificate.generate()
        self.rotations = 0
        self._timer: asyncio.TimerHandle | None = None

    def rotate(self) -> WorkerCertificate:
        """A new certificate for the sessions made from now on (about a millisecond)."""
        self.current = WorkerCertificate.generate()
        self.rotations += 1
        log.debug("DTLS certificate rotated (%d)", self.rotations)
        return self.current

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Rotate every `rotate_s` seconds on `loop`'s timer until `stop`."""
        self.stop()
        self._timer = loop.call_later(self.rotate_s, self._scheduled, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _scheduled(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = loop.call_later(self.rotate_s, self._scheduled, loop)
        try:
            self.rotate()
        except Exception:  # the current certificate stays: better than no session at all
            log.exception("DTLS certificate rotation failed; keeping the current one")


class _SharedCertificates:
    """What ``aiortc.rtcpeerconnection`` finds under the name RTCCertificate once
    installed: each new peer connection gets the store's current certificate."""

    store: CertificateStore | None = None

    @classmethod
    def generateCertificate(cls) -> RTCCertificate:  # aiortc's name
        store = cls.store
        return store.current if store is not None else RTCCertificate.generateCertificate()


def install_certificates(
    loop: asyncio.AbstractEventLoop | None, rotate_s: float
) -> CertificateStore:
    """Give every peer connection made in this process from now on the worker's
    certificate, rotated every `rotate_s` seconds on `loop` (None: never rotated).

    Raises AdapterError when aiortc no longer makes its certificate the way this seam
    expects (checked on one peer connection, built here and dropped).
    """
    module: Any = aiortc.rtcpeerconnection
    found = getattr(module, "RTCCertificate", None)
    if found is not RTCCertificate and found is not _SharedCertificates:
        raise AdapterError("aiortc.rtcpeerconnection no longer names RTCCertificate")
    store = CertificateStore(rotate_s)
    previous = _SharedCertificates.store
    if previous is not None:
        previous.stop()
    _SharedCertificates.store = store
    module.RTCCertificate = _SharedCertificates
    probe = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if peer_certificates(probe) != [store.current]:
        uninstall_certificates()
        raise AdapterError("aiortc's RTCPeerConnection did not take the worker's certificate")
    if loop is not None:
        store.start(loop)
    return store


def uninstall_certificates() -> None:
    """aiortc's own behaviour again: a new certificate per peer connection."""
    store = _SharedCertificates.store
    if store is not None:
        store.stop()
    _SharedCertificates.store = None
    module: Any = aiortc.rtcpeerconnection
    module.RTCCertificate = RTCCertificate


def peer_certificates(pc: RTCPeerConnection) -> Sequence[RTCCertificate]:
    """The certificates `pc` presents (aiortc keeps them in a name-mangled list)."""
    certificates: list[RTCCertificate] = pc._RTCPeerConnection__certificates  # type: ignore[attr-defined]
    return list(certificates)
