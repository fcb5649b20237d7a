"""What a viewer experiences: instant start, republish, ingest repair, audio level.

One worker process, real aiortc peers over loopback UDP, the real IPC protocol.
"""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack
from aiortc.rtp import (
    RTCP_RTPFB_NACK,
    AnyRtcpPacket,
    RtcpRtpfbPacket,
    compute_audio_level_dbov,
)

from ipc import messages as m
from sfu.rtp import is_rtcp, seq_newer
from testkit.media import KeyframeSchedule
from tests.sfu.conftest import WorkerHarness
from tests.sfu.media import (
    Counter,
    MovingPattern,
    ReceivedRtp,
    Tone,
    accept,
    new_pc,
    viewer_offer,
    wait_for,
)


async def _publish(
    worker: WorkerHarness,
    session: str,
    room: str = "r1",
    audio: MediaStreamTrack | None = None,
    keyframe_interval: float | None = None,
) -> tuple[RTCPeerConnection, RTCRtpSender, KeyframeSchedule | None]:
    pc = new_pc()
    video = pc.addTransceiver(MovingPattern(), direction="sendonly")
    pc.addTransceiver(audio or AudioStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    answer = await worker.request(
        m.OpenSession("publisher", room, session, pc.localDescription.sdp)
    )
    assert isinstance(answer, m.SessionAnswer)
    schedule = KeyframeSchedule(video.sender, keyframe_interval) if keyframe_interval else None
    await accept(pc, answer.answer)
    await wait_for(lambda: _state(worker, session) == "connected")
    return pc, video.sender, schedule


async def _view(
    worker: WorkerHarness, session: str, room: str = "r1"
) -> tuple[RTCPeerConnection, Counter, ReceivedRtp]:
    pc = new_pc()
    offer, counter = await viewer_offer(pc)
    received = ReceivedRtp(pc)
    answer = await worker.request(m.OpenSession("subscriber", room, session, offer))
    assert isinstance(answer, m.SessionAnswer)
    await accept(pc, answer.answer)
    return pc, counter, received


def _state(worker: WorkerHarness, session: str) -> str | None:
    """The session's last connection state (connected or closed): the worker's first_packet
    report, which follows connected, is an event, not a state."""
    states = [s.state for s in worker.states if s.session_id == session]
    states = [state for state in states if state != "first_packet"]
    return states[-1] if states else None


@pytest.mark.parametrize(
    ("worker_args", "instant_start"),
    [([], True), (["--instant-start", "false"], False)],
    indirect=["worker_args"],
    ids=["instant-start", "without"],
)
async def test_viewer_joining_mid_stream_sees_a_picture_before_the_next_keyframe(
    worker: WorkerHarness, instant_start: bool
) -> None:
    # The publisher ignores keyframe requests and sends a keyframe every 5 s: without
    # instant start, a viewer who joins between two keyframes has nothing to decode.
    publisher, _, schedule = await _publish(worker, "pub", keyframe_interval=5.0)
    assert schedule is not None
    await asyncio.sleep(1.5)
    keyframes_at_join = schedule.count
    viewer, counter, _ = await _view(worker, "late")
    await wait_for(lambda: counter.frames["video"] > 0, timeout=20)
    if instant_start:
        assert schedule.count == keyframes_at_join, "decoded only after the next keyframe"
    else:
        assert schedule.count > keyframes_at_join, "decoded a picture without a keyframe"
    await wait_for(lambda: counter.frames["video"] >= 20)
    schedule.stop()
    await viewer.close()
    await publisher.close()


def _assert_monotonic(packets: list[tuple[int, int, int, object]], kind: str) -> None:
    assert len({ssrc for ssrc, *_ in packets}) == 1, f"{kind}: the SSRC changed"
    for (_, seq_a, ts_a, _), (_, seq_b, ts_b, _) in zip(packets, packets[1:], strict=False):
        assert seq_newer(seq_b, seq_a), f"{kind}: sequence number went from {seq_a} to {seq_b}"
        assert (ts_b - ts_a) & 0xFFFFFFFF < 0x80000000, f"{kind}: timestamp went back"


async def test_viewer_keeps_playing_across_a_republish(worker: WorkerHarness) -> None:
    first, _, _ = await _publish(worker, "pub1")
    viewer, counter, received = await _view(worker, "v")
    await wait_for(lambda: counter.frames["video"] >= 30 and counter.frames["audio"] >= 50)
    # The publisher drops (its session is deleted); the viewer's session stays.
    assert await worker.request(m.CloseSession("pub1")) == m.Done()
    await first.close()
    await asyncio.sleep(0.5)
    video_before, audio_before = counter.frames["video"], counter.frames["audio"]
    packets_before = len(received.media("video"))
    second, _, _ = await _publish(worker, "pub2")
    await wait_for(
        lambda: (
            counter.frames["video"] >= video_before + 60
            and counter.frames["audio"] >= audio_before + 100
        ),
        timeout=20,
    )
    assert _state(worker, "v") == "connected"
    assert len(received.media("video")) > packets_before
    for kind in ("video", "audio"):
        _assert_monotonic(received.media(kind), kind)
    await viewer.close()
    await second.close()


async def test_packets_lost_on_the_ingest_leg_are_nacked_and_repaired(
    worker: WorkerHarness,
) -> None:
    publisher, video_sender, _ = await _publish(worker, "pub")
    viewer, counter, received = await _view(worker, "v")
    await wait_for(lambda: counter.frames["video"] >= 10)

    # Lose every 20th video packet on the way to the SFU, 10 times, by not sending it.
    dtls = video_sender.transport
    send_rtp = dtls._send_rtp
    video_ssrc = video_sender._ssrc
    dropped: list[int] = []
    seen = [0]

    async def lossy_send_rtp(data: bytes) -> None:
        if not is_rtcp(data) and int.from_bytes(data[8:12]) == video_ssrc:
            seen[0] += 1
            if seen[0] % 20 == 0 and len(dropped) < 10:
                dropped.append(int.from_bytes(data[2:4]))
                return
        await send_rtp(data)

    dtls._send_rtp = lossy_send_rtp  # type: ignore[method-assign]
    nacked: set[int] = set()
    handle_rtcp = video_sender._handle_rtcp_packet

    async def record_nacks(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            nacked.update(seq & 0xFFFF for seq in packet.lost)
        await handle_rtcp(packet)  # aiortc retransmits from its history, as RTX

    video_sender._handle_rtcp_packet = record_nacks  # type: ignore[method-assign]
    await wait_for(lambda: len(dropped) == 10, timeout=20)
    frames = counter.frames["video"]
    await wait_for(lambda: counter.frames["video"] >= frames + 30)
    assert set(dropped) <= nacked, f"not NACKed by the SFU: {set(dropped) - nacked}"
    # The repaired packets reached the viewer on its media SSRC: no hole in what it got.
    seqs = [seq for _, seq, _, _ in received.media("video")]
    first = seqs[0]
    offsets = {(seq - first) & 0xFFFF for seq in seqs}
    assert offsets == set(range(max(offsets) + 1)), "a packet lost on ingest never arrived"
    await viewer.close()
    await publisher.close()


async def test_audio_level_is_forwarded_to_viewers(worker: WorkerHarness) -> None:
    tone = Tone(amplitude=8000)
    expected = -compute_audio_level_dbov(await Tone(amplitude=8000).recv())
    publisher, _, _ = await _publish(worker, "pub", audio=tone)
    viewer, counter, received = await _view(worker, "v")
    await wait_for(lambda: counter.frames["audio"] >= 50)
    levels = [level for *_, level in received.media("audio")]
    assert levels and None not in levels[-40:]
    assert all(
        isinstance(level, tuple) and abs(level[1] - expected) <= 1 for level in levels[-40:]
    ), (expected, levels[-40:])
    assert 0 < expected < 127  # a tone, not silence
    await viewer.close()
    await publisher.close()
