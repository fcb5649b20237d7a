"""The recorder in-process: real forwarders, real encoded media, real files read by PyAV.

Every codec the recorder knows is covered here, VP9 and AV1 included (encoded by libvpx-vp9
and SVT-AV1 and packetised per their RTP specifications, see rtp_media), independently of
which publishers can send them today. The end-to-end tests (test_recording_e2e.py) do the
same through a real gateway, worker and aiortc publisher.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from common.sidecar import COMPLETE
from sfu.recording import recorder as recorder_module
from tests.recording import rtp_media
from tests.recording.harness import (
    feed,
    finish,
    inspect,
    open_session,
    recordings,
    source_frames,
)

EXPECTED = {
    # codec: (FFmpeg codec name, extension)
    "opus": ("opus", "ogg"),
    "vp8": ("vp8", "ivf"),
    "vp9": ("vp9", "ivf"),
    "av1": ("libdav1d", "ivf"),
    "h264": ("h264", "mkv"),
}


@pytest.mark.parametrize("codec", ["opus", "vp8", "vp9", "av1", "h264"])
async def test_every_codec_becomes_a_file_that_decodes(tmp_path: Path, codec: str) -> None:
    count = 100 if codec == "opus" else 60  # 2 s either way
    frames = source_frames(codec, count)
    session = await open_session(tmp_path, codec)
    await feed(session, rtp_media.packets(frames))
    await finish(session)

    [info] = recordings(tmp_path)
    name, extension = EXPECTED[codec]
    assert info.state == COMPLETE, info.error
    assert info.name.startswith("room1_track-1_") and info.name.endswith("." + extension)
    assert info.kind == session.kind and info.codec == f"{session.kind}/{codec}"
    report = inspect(tmp_path / info.name)
    assert report.codec == name
    assert report.frames == len(frames) == info.frames
    assert report.decoded >= len(frames) - 1  # a decoder may hold back nothing or one frame
    if codec == "opus":
        assert (report.channels, report.sample_rate) == (2, 48000)
        assert report.duration == pytest.approx(count * 0.020, rel=0.02)
    else:
        assert (report.width, report.height) == (320, 240) == (info.width, info.height)
        assert report.duration == pytest.approx(count / rtp_media.FPS, rel=0.02)
    assert info.duration == pytest.approx(report.duration, rel=0.05)
    assert info.bytes == (tmp_path / info.name).stat().st_size


async def test_reordering_within_the_window_loses_nothing(tmp_path: Path) -> None:
    frames = source_frames("vp8", 45)
    packets = rtp_media.packets(frames)
    rng = random.Random(7)
    shuffled = []
    for start in range(0, len(packets), 6):  # swap packets around inside groups of six
        group = packets[start : start + 6]
        rng.shuffle(group)
        shuffled += group
    assert shuffled != packets
    session = await open_session(tmp_path, "vp8")
    await feed(session, shuffled)
    await finish(session)

    [info] = recordings(tmp_path)
    assert info.gaps == 0
    report = inspect(tmp_path / info.name)
    assert report.frames == len(frames) and report.decoded >= len(frames) - 1


async def test_loss_waits_for_a_keyframe_and_asks_for_one(tmp_path: Path) -> None:
    first = rtp_media.aiortc_video("vp8", 30)
    second = rtp_media.aiortc_video("vp8", 30)  # a new encoder: starts with a keyframe
    offset = first[-1].ts + 3000 - second[0].ts
    frames = first + [
        rtp_media.RtpFrame((f.ts + offset) & 0xFFFFFFFF, f.payloads, f.keyframe) for f in second
    ]
    packets = rtp_media.packets(frames)
    lost_frame = 10
    lost_seq = rtp_media.packets(frames[: lost_frame + 1])[-1][0]
    session = await open_session(tmp_path, "vp8")
    requests_at_start = len(session.keyframe_requests)
    await feed(session, [p for p in packets if p[0] != lost_seq])
    for _ in range(40):  # the forwarder spaces requests to the publisher by 0.5 s
        if len(session.keyframe_requests) > requests_at_start:
            break
        await asyncio.sleep(0.05)
    await finish(session)

    [info] = recordings(tmp_path)
    assert info.gaps == 1
    assert len(session.keyframe_requests) > requests_at_start
    report = inspect(tmp_path / info.name)
    # Frames 0..9 are written, 10 is lost, 11..29 depend on it and wait for the keyframe.
    assert report.frames == lost_frame + len(second)
    assert report.decoded >= report.frames - 1


async def test_a_writer_that_falls_behind_marks_a_gap_and_forwarding_never_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recorder_module, "QUEUE_LIMIT", 40)
    frames = source_frames("vp8", 60)
    packets = rtp_media.packets(frames)
    session = await open_session(tmp_path, "vp8")
    forwarder = session.forwarder
    for seq, ts, marker, payload in packets:  # no yield: the writer thread cannot keep up
        forwarder.on_rtp(_rtp(seq, ts, marker, payload), False)
    assert forwarder.stats.packets_in == len(packets)  # every packet went through
    [track] = session.recorder.rooms["room1"]
    assert track.dropped > 0
    await finish(session)

    [info] = recordings(tmp_path)
    assert info.state == COMPLETE and info.gaps >= 1
    report = inspect(tmp_path / info.name)
    assert 0 < report.frames < len(frames)
    assert report.decoded >= report.frames - 1


def _rtp(seq: int, ts: int, marker: int, payload: bytes) -> bytes:
    from tests.recording.harness import rtp

    return rtp(seq, ts, marker, payload, 1)
