"""The session set-up timeline (issue 18): a worker reports, with a session's connected and
first_packet states, the seconds from the offer to each mark of ipc.messages.TIMELINE_MARKS;
the gateway turns them into live_session_phase_seconds{kind,phase}.

One worker process, real aiortc peers over loopback UDP, the real IPC protocol; the gateway's
side on a real Prometheus registry.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry

from gateway.metrics import SESSION_PHASES, GatewayCounters
from gateway.placement.directory import SessionEntry
from gateway.placement.registry import _timeline
from ipc import codec
from ipc import messages as m
from tests.sfu.conftest import WorkerHarness
from tests.sfu.media import accept, new_pc, publisher_offer, viewer_offer, wait_for

BEFORE_FIRST_PACKET = m.TIMELINE_MARKS[:-1]


def _report(worker: WorkerHarness, session: str, state: str) -> m.SessionState | None:
    for report in worker.states:
        if report.session_id == session and report.state == state:
            return report
    return None


def _fingerprint(sdp: str) -> str:
    return next(line for line in sdp.splitlines() if line.startswith("a=fingerprint:sha-256"))


async def test_worker_reports_each_mark_in_order_with_connected_and_first_packet(
    worker: WorkerHarness,
) -> None:
    publisher = new_pc()
    offer = await publisher_offer(publisher)
    published = await worker.request(m.OpenSession("publisher", "r1", "pub", offer))
    assert isinstance(published, m.SessionAnswer)
    await accept(publisher, published.answer)
    viewer = new_pc()
    offer, _ = await viewer_offer(viewer)
    viewed = await worker.request(m.OpenSession("subscriber", "r1", "view", offer))
    assert isinstance(viewed, m.SessionAnswer)
    await accept(viewer, viewed.answer)
    await wait_for(lambda: _report(worker, "view", "first_packet") is not None)
    await wait_for(lambda: _report(worker, "pub", "first_packet") is not None)

    for session in ("pub", "view"):
        connected = _report(worker, session, "connected")
        assert connected is not None
        marks = connected.timeline
        assert set(marks) == set(BEFORE_FIRST_PACKET), marks
        times = [marks[name] for name in BEFORE_FIRST_PACKET]
        assert times == sorted(times) and 0 < times[0] and times[-1] < 10, marks
        first = _report(worker, session, "first_packet")
        assert first is not None
        assert set(first.timeline) == set(m.TIMELINE_MARKS)
        assert first.timeline["first_packet"] >= marks["dtls.connected"]
    # One worker, one certificate: both answers carry the same fingerprint.
    assert _fingerprint(published.answer) == _fingerprint(viewed.answer)
    await viewer.close()
    await publisher.close()


def _samples(registry: CollectorRegistry, kind: str, phase: str) -> tuple[float, float]:
    labels = {"kind": kind, "phase": phase}
    count = registry.get_sample_value("live_session_phase_seconds_count", labels)
    total = registry.get_sample_value("live_session_phase_seconds_sum", labels)
    assert count is not None and total is not None
    return count, total


def test_gateway_observes_each_phase_once_from_the_marks() -> None:
    registry = CollectorRegistry()
    counters = GatewayCounters(registry)
    session = SessionEntry("s1", "r1", "subscriber", "w1", "etag", "ufrag", "pwd")
    marks = {
        "answer": 0.004,
        "ice.first_check": 0.050,
        "ice.connected": 0.080,
        "dtls.start": 0.081,
        "dtls.connected": 0.120,
    }
    counters.observe_connected(session, marks)
    counters.observe_first_packet(session, {**marks, "first_packet": 0.125})
    expected = {
        "answer": 0.004,
        "client_check": 0.046,
        "ice": 0.030,
        "dtls_wait": 0.001,
        "dtls": 0.039,
        "first_packet": 0.005,
    }
    assert [phase for phase, _, _ in SESSION_PHASES] == list(expected)
    for phase, seconds in expected.items():
        count, total = _samples(registry, "subscriber", phase)
        assert count == 1 and math.isclose(total, seconds, abs_tol=1e-9), phase
    # A timeline without the client's check: the phases around it are not observed.
    counters.observe_connected(session, {"answer": 0.01, "ice.connected": 0.02})
    assert _samples(registry, "subscriber", "answer")[0] == 2
    assert _samples(registry, "subscriber", "ice")[0] == 1
    assert _samples(registry, "publisher", "dtls")[0] == 0


def test_gateway_keeps_only_known_marks_within_bounds() -> None:
    reported = {
        "answer": 0.01,
        "dtls.start": -1.0,
        "ice.connected": float("nan"),
        "dtls.connected": float("inf"),
        "made.up": 0.5,
        "first_packet": 7200.0,
    }
    assert _timeline(reported) == {"answer": 0.01}
    # What a worker sends decodes on the gateway's side of the real codec.
    state = m.SessionState("s", "r", "connected", timeline={"answer": 0.5})
    frame = m.Frame(m.PROTOCOL_VERSION, m.NOTIFICATION, 0, state)
    decoded = codec.decode(codec.encode(frame))
    assert isinstance(decoded.body, m.SessionState) and decoded.body.timeline == {"answer": 0.5}
