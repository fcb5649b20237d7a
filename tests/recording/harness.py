"""Drive the real recorder in-process: a real Room/TrackForwarder fed real RTP packets.

`feed()` builds RTP datagrams around the payloads from rtp_media and hands them to
TrackForwarder.on_rtp, exactly as a publisher session does; the recorder's tap and writer
thread are the production ones. `inspect()` reads the result back with PyAV.

Also runnable as a script (used by the crash tests): `python harness.py DIR CODEC SECONDS`
records paced media into DIR and prints "flushed" once a checkpoint covers some media.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import av

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common.sidecar import RecordingInfo, media_name_of, read_sidecar  # noqa: E402
from sfu.media import CodecKey, TrackForwarder  # noqa: E402
from sfu.recording.recorder import Recorder, RecordingSettings  # noqa: E402
from sfu.room import Room  # noqa: E402
from sfu.session import SessionSettings  # noqa: E402
from tests.recording import rtp_media  # noqa: E402

CLOCKS = {"opus": 48000, "vp8": 90000, "vp9": 90000, "av1": 90000, "h264": 90000}
KINDS = {"opus": "audio"}
SSRC = 0x1234ABCD


def mime(codec: str) -> str:
    return f"{KINDS.get(codec, 'video')}/{codec}"


def source_frames(codec: str, count: int) -> list[rtp_media.RtpFrame]:
    if codec == "opus":
        return rtp_media.opus_packets(count)
    if codec in ("vp8", "h264"):
        return rtp_media.aiortc_video(codec, count)
    if codec == "vp9":
        return rtp_media.vp9_rtp(count)
    return rtp_media.av1_rtp(count)


def rtp(seq: int, ts: int, marker: int, payload: bytes, ssrc: int = SSRC) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | 96, seq, ts, ssrc) + payload


@dataclass
class Session:
    recorder: Recorder
    room: Room
    kind: str
    keyframe_requests: list[float] = field(default_factory=list)

    @property
    def forwarder(self) -> TrackForwarder:
        return self.room.forwarders[self.kind]


async def open_session(directory: Path, codec: str, room: str = "room1") -> Session:
    recorder = Recorder(RecordingSettings(enabled=True, directory=str(directory)), "test")
    recorder.start()
    kind = KINDS.get(codec, "video")
    settings = SessionSettings(connect_timeout=10.0, public_ip=None)
    session = Session(recorder, Room(room, settings), kind)
    forwarder = session.room.forwarder(kind)
    forwarder.set_source(
        CodecKey(mime(codec), CLOCKS[codec], ""),
        lambda: session.keyframe_requests.append(time.monotonic()),
    )
    recorder.publisher_connected(session.room, {kind: "track-{1}"})
    return session


async def feed(
    session: Session,
    packets: list[tuple[int, int, int, bytes]],
    pace: float = 0.0,
    ssrc: int = SSRC,
) -> None:
    """Hand packets to the forwarder; `pace` seconds between packets (0: as fast as possible,
    yielding to the loop now and then so the keyframe requests posted by the writer run)."""
    forwarder = session.forwarder
    for index, (seq, ts, marker, payload) in enumerate(packets):
        forwarder.on_rtp(rtp(seq, ts, marker, payload, ssrc), False)
        if pace:
            await asyncio.sleep(pace)
        elif index % 50 == 0:
            await asyncio.sleep(0)


async def finish(session: Session) -> None:
    session.recorder.publisher_gone(session.room.name)
    await session.recorder.close()


def recordings(directory: Path) -> list[RecordingInfo]:
    infos: list[RecordingInfo] = []
    if not directory.is_dir():
        return infos
    for entry in sorted(p.name for p in directory.iterdir()):
        name = media_name_of(entry)
        if name is not None:
            info = read_sidecar(str(directory), name)
            assert info is not None, entry
            infos.append(info)
    return infos


@dataclass
class FileReport:
    codec: str
    width: int
    height: int
    channels: int
    sample_rate: int
    frames: int
    decoded: int
    first_pts: float
    duration: float  # last packet end - first packet start, in seconds


def inspect(path: Path) -> FileReport:
    """Open a recording with PyAV, demux and decode every packet (raising on any error)."""
    with av.open(str(path)) as container:
        stream = container.streams[0]
        context = stream.codec_context
        assert isinstance(context, av.VideoCodecContext | av.AudioCodecContext), context
        starts, ends = [], []
        decoded = frames = 0
        for packet in container.demux(stream):
            if packet.pts is None or packet.size == 0:
                continue
            frames += 1
            start = float(packet.pts * packet.time_base)
            starts.append(start)
            ends.append(start + float((packet.duration or 0) * packet.time_base))
            decoded += len(context.decode(packet))
        decoded += len(context.decode(None))
        video = isinstance(context, av.VideoCodecContext)
        ordered = sorted(starts)
        steps = sorted(b - a for a, b in zip(ordered, ordered[1:], strict=False))
        period = steps[len(steps) // 2] if video and steps else 0.0  # the frame interval
        return FileReport(
            codec=context.name,
            width=context.width if isinstance(context, av.VideoCodecContext) else 0,
            height=context.height if isinstance(context, av.VideoCodecContext) else 0,
            channels=context.channels if isinstance(context, av.AudioCodecContext) else 0,
            sample_rate=context.sample_rate if isinstance(context, av.AudioCodecContext) else 0,
            frames=frames,
            decoded=decoded,
            first_pts=min(starts),
            duration=max(max(ends), max(starts) + period) - min(starts),
        )


async def _paced_recording(directory: Path, codec: str, seconds: float, then: str) -> None:
    """Record `seconds` of media in real time. Prints "started", then "flushed" once a
    checkpoint has made some media durable. then="wait": wait to be killed; then="finish":
    end the recording and print the recorder's and the forwarder's counters as JSON."""
    session = await open_session(directory, codec)
    rate = rtp_media.FPS if codec != "opus" else 50
    frames = source_frames(codec, int(seconds * rate))
    announced = False
    print("started", flush=True)
    started = time.monotonic()
    seq = 0
    for index, frame in enumerate(frames):
        for position, payload in enumerate(frame.payloads):
            marker = position == len(frame.payloads) - 1
            session.forwarder.on_rtp(rtp(seq & 0xFFFF, frame.ts, marker, payload), False)
            seq += 1
        await asyncio.sleep(max(0.0, started + (index + 1) / rate - time.monotonic()))
        if not announced:
            infos = recordings(directory)
            if infos and infos[0].durable_bytes > 0 and infos[0].duration > 0.5:
                print("flushed", flush=True)
                announced = True
    if then == "wait":
        print("done", flush=True)
        await asyncio.sleep(3600)
        return
    stats = session.recorder.stats
    await finish(session)
    counters = {
        "write_errors": stats.write_errors,
        "packets": seq,
        "packets_in": session.room.stats.packets_in,
    }
    print(json.dumps(counters), flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(_paced_recording(Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]))
