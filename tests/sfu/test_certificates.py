"""One DTLS certificate per worker, rotated every CERT_ROTATE (issue 18): new sessions get the
current one, a session keeps the one it answered with, and a session still connects after a
rotation. Real aiortc objects in this process; one real worker process for the rotation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtcdtlstransport import (
    SRTP_AEAD_AES_128_GCM,
    SRTP_AES128_CM_SHA1_80,
    RTCCertificate,
)

from common.worker_settings import load_worker_settings
from gateway.config import load_config
from gateway.placement.supervisor import Slot, local_worker_settings
from ipc import messages as m
from sfu import aiortc_adapter as adapter
from tests.sfu.conftest import WorkerHarness
from tests.sfu.media import accept, new_pc, publisher_offer, viewer_offer, wait_for


@pytest.fixture
def installed() -> Iterator[adapter.CertificateStore]:
    store = adapter.install_certificates(None, 3600)
    try:
        yield store
    finally:
        adapter.uninstall_certificates()


def _pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def test_sessions_share_the_current_certificate_until_it_rotates(
    installed: adapter.CertificateStore,
) -> None:
    first, second = _pc(), _pc()
    (shared,) = adapter.peer_certificates(first)
    assert adapter.peer_certificates(second) == [shared] and shared is installed.current
    # The fingerprints are aiortc's own, computed once.
    plain = RTCCertificate(shared._key, shared._cert)
    assert shared.getFingerprints() == plain.getFingerprints()
    assert shared.getFingerprints() is not shared.getFingerprints()  # a copy each time
    # One OpenSSL context per SRTP profile list, shared by every handshake.
    profiles = [SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80]
    assert shared._create_ssl_context(profiles) is shared._create_ssl_context(list(profiles))
    assert shared._create_ssl_context(profiles[1:]) is not shared._create_ssl_context(profiles)

    rotated = installed.rotate()
    assert rotated is not shared and rotated.fingerprint != shared.fingerprint
    assert adapter.peer_certificates(_pc()) == [rotated]
    assert adapter.peer_certificates(first) == [shared]  # old sessions keep theirs


def test_uninstalled_each_peer_connection_has_its_own() -> None:
    adapter.install_certificates(None, 3600)
    adapter.uninstall_certificates()
    one, two = adapter.peer_certificates(_pc()), adapter.peer_certificates(_pc())
    assert one[0] is not two[0] and not isinstance(one[0], adapter.WorkerCertificate)


async def test_the_store_rotates_on_its_loop_timer() -> None:
    store = adapter.CertificateStore(0.05)
    store.start(asyncio.get_running_loop())
    first = store.current
    await asyncio.sleep(0.18)
    store.stop()
    rotations = store.rotations
    assert rotations >= 2 and store.current is not first
    await asyncio.sleep(0.1)
    assert store.rotations == rotations
    with pytest.raises(ValueError):
        adapter.CertificateStore(30 * 86400)


def test_cert_rotate_setting_reaches_local_workers() -> None:
    env = {"SFU_CONNECT": "ipc:///x"}
    assert load_worker_settings([], env).cert_rotate == 86400.0
    assert load_worker_settings(["--cert-rotate", "600"], env).cert_rotate == 600.0
    for bad in ("0", "0.5", "nan", str(15 * 86400)):
        with pytest.raises(SystemExit):
            load_worker_settings([], {**env, "CERT_ROTATE": bad})
    config = load_config(["--workers", "1"], environ={"CERT_ROTATE": "3600"})
    settings = local_worker_settings(config, Slot(0, None), "ipc:///x", "plane")
    assert settings.cert_rotate == 3600.0


def _fingerprint(sdp: str) -> str:
    return next(line for line in sdp.splitlines() if line.startswith("a=fingerprint:sha-256"))


def _reported(worker: WorkerHarness, session: str, state: str) -> bool:
    return any(s.session_id == session and s.state == state for s in worker.states)


@pytest.mark.parametrize("worker_args", [["--cert-rotate", "1"]], indirect=True)
async def test_a_session_after_a_rotation_connects_with_the_new_certificate(
    worker: WorkerHarness,
) -> None:
    publisher = new_pc()
    published = await worker.request(
        m.OpenSession("publisher", "r1", "pub", await publisher_offer(publisher))
    )
    assert isinstance(published, m.SessionAnswer)
    await accept(publisher, published.answer)
    await wait_for(lambda: _reported(worker, "pub", "connected"))
    await asyncio.sleep(1.2)  # at least one rotation
    viewer = new_pc()
    offer, counter = await viewer_offer(viewer)
    viewed = await worker.request(m.OpenSession("subscriber", "r1", "view", offer))
    assert isinstance(viewed, m.SessionAnswer)
    assert _fingerprint(viewed.answer) != _fingerprint(published.answer)
    await accept(viewer, viewed.answer)
    await wait_for(lambda: counter.frames["video"] > 0)  # the publisher's DTLS kept working
    await viewer.close()
    await publisher.close()
