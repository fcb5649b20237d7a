"""The load generator's processes: paced WHIP publishers and cheap WHEP viewers.

Each agent is a `multiprocessing` process running its own uvloop, driven by the coordinator
(bench/load.py) over a Pipe with small command tuples, so that a sweep can add viewers,
open a measurement window and collect figures without restarting anything. Every command
gets exactly one reply: ("ok", value) or ("error", text).

Publishers are aiortc peer connections whose senders are parked (sfu.aiortc_adapter
make_forwarding) and fed synthetic RTP (bench/media.py) through SrtpSendPath, paced like
libwebrtc's pacer. Viewers complete ICE and DTLS-SRTP like any client, then count every SRTP
packet from its clear header at the socket (tap_srtp_ingress) and decrypt only every k-th
one to read its probe: no jitter buffer, no decoder, no aiortc RTP parsing. The coordinator
may label each viewer (by its session's Location: `label`), for instance with the worker its
session is on; latency is then also kept per label.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import pylibsrtp
import uvloop
from aiortc import RTCRtpSender, RTCSessionDescription
from aiortc.rtp import RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, AnyRtcpPacket

from bench import aiortc_taps
from bench.media import (
    PROBE,
    PROBE_MAGIC,
    AudioSource,
    VideoProfile,
    VideoSource,
    read_probe,
)
from sfu import aiortc_adapter as adapter
from sfu.media.keyframes import vp8_keyframe
from sfu.rtp import payload_offset
from testkit.client import (
    WhipError,
    delete_session,
    endpoint,
    new_pc,
    post_offer,
    wait_connected,
)

# Latency histogram: 10 µs buckets up to 2 s (the last bucket holds everything slower).
BUCKET_NS = 10_000
BUCKETS = 200_001
CONNECT_TIMEOUT = 20.0
PACING_FACTOR = 2.5  # libwebrtc paces video at 2.5x its target bitrate
TICK = 0.002  # seconds between pacer runs


def cpu_seconds(pid: int) -> float:
    """user + system CPU of one process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def candidate_ports(sdp: str) -> list[int]:
    """The ports of the ICE candidates in an SDP (the server's, in a WHEP answer)."""
    ports = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) > 5 and fields[5].isdigit():
                ports.append(int(fields[5]))
    return sorted(set(ports))


def _ms_since(start_ns: int, end_ns: int) -> float | None:
    return round((end_ns - start_ns) / 1e6, 3) if end_ns else None


# --------------------------------------------------------------------------------------------
# The command loop shared by both agents


Handler = Callable[..., Coroutine[Any, Any, Any]]


def serve_commands(conn: Connection, handlers: dict[str, Handler]) -> None:
    """Run uvloop until "exit"; each command runs as a task and is answered when it ends."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def run(name: str, args: tuple[Any, ...]) -> None:
            try:
                reply: tuple[str, Any] = ("ok", await handlers[name](*args))
            except Exception as exc:
                reply = ("error", f"{name}: {exc!r}\n{traceback.format_exc(limit=6)}")
            # The loop made the pipe non-blocking (add_reader); a reply larger than its buffer
            # (the per-viewer latency histograms) must not fail with EAGAIN halfway.
            os.set_blocking(conn.fileno(), True)
            try:
                conn.send(reply)
            finally:
                os.set_blocking(conn.fileno(), False)

        def readable() -> None:
            try:
                name, *args = conn.recv()
            except EOFError:
                done.set()
                return
            if name == "exit":
                done.set()
                return
            task = asyncio.ensure_future(run(name, tuple(args)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_reader(conn.fileno(), readable)
        await done.wait()
        loop.remove_reader(conn.fileno())
        if "close" in handlers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(handlers["close"](), 20)

    adapter.restrict_host_addresses(["127.0.0.1"])
    uvloop.run(main())


# --------------------------------------------------------------------------------------------
# Viewers


class TrackCounter:
    """Per viewer and media kind: packets, extended sequence numbers, the measurement window."""

    __slots__ = (
        "video",
        "received",
        "ext_last",
        "window_count",
        "window_first",
        "window_last",
        "countdown",
    )

    def __init__(self, video: bool) -> None:
        self.video = video
        self.received = 0
        self.ext_last = 0
        self.window_count = 0
        self.window_first = 0
        self.window_last = 0
        self.countdown = 0


class Viewer:
    """One WHEP session whose SRTP packets are accounted at the socket."""

    def __init__(self, agent: ViewerAgent, room: str) -> None:
        self.agent = agent
        self.room = room
        self.pc = new_pc()
        self.tracks: dict[int, TrackCounter] = {}
        self.location = ""
        self.server_ports: list[int] = []  # the answer's ICE candidate ports
        self.label = ""  # set by the coordinator (`label`): e.g. the session's worker
        self.histogram = agent.histograms[""]  # latency buckets of this viewer's label
        self.error = ""
        self.post_start_ns = 0
        self.post_ms: float | None = None
        self.connected_ns = 0
        self.first_packet_ns = 0
        self.first_keyframe_ns = 0
        self.keyframe_seen = asyncio.Event()

    async def prepare(self) -> None:
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        adapter.stop_decoders(self.pc)  # these receivers never see a packet anyway
        await self.pc.setLocalDescription(await self.pc.createOffer())

    async def open(self, http: aiohttp.ClientSession, url: str) -> None:
        self.post_start_ns = time.monotonic_ns()
        try:
            session = await post_offer(http, endpoint(url, "whep", self.room), self.sdp(), None)
        except (WhipError, aiohttp.ClientError, TimeoutError) as exc:
            self.error = f"WHEP POST failed: {exc}"
            return
        self.post_ms = session.post_ms
        self.location = session.location
        self.server_ports = candidate_ports(session.answer)
        await self.pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
        for transceiver in self.pc.getTransceivers():
            for codec in adapter.negotiated_codecs(transceiver):
                if codec.payloadType is not None and not codec.mimeType.lower().endswith("/rtx"):
                    self.tracks[codec.payloadType] = TrackCounter(transceiver.kind == "video")
                    break
        aiortc_taps.tap_srtp_ingress(self.pc, self.on_srtp)
        if await wait_connected(self.pc, CONNECT_TIMEOUT):
            self.connected_ns = time.monotonic_ns()
        else:
            self.error = f"not connected within {CONNECT_TIMEOUT:g} s"

    def sdp(self) -> str:
        description = self.pc.localDescription
        assert description is not None
        return description.sdp

    def on_srtp(self, data: bytes, unprotect: Callable[[bytes], bytes]) -> None:
        now = time.monotonic_ns()
        track = self.tracks.get(data[1] & 0x7F)
        if track is None:
            return  # RTX or a payload type we did not negotiate
        seq = (data[2] << 8) | data[3]
        if track.received:
            delta = (seq - track.ext_last) & 0xFFFF
            ext = track.ext_last + delta if delta < 0x8000 else track.ext_last + delta - 0x10000
            if ext > track.ext_last:
                track.ext_last = ext
        else:
            ext = track.ext_last = seq + 0x10000
            if not self.first_packet_ns:
                self.first_packet_ns = now
        track.received += 1
        agent = self.agent
        if agent.measuring:
            if track.window_count:
                if ext > track.window_last:
                    track.window_last = ext
                elif ext < track.window_first:
                    track.window_first = ext
            else:
                track.window_first = track.window_last = ext
            track.window_count += 1
        want_keyframe = track.video and not self.first_keyframe_ns
        track.countdown -= 1
        if track.countdown > 0 and not want_keyframe:
            return
        track.countdown = agent.decrypt_every
        try:
            plain = unprotect(data)
        except pylibsrtp.Error:
            agent.unprotect_errors += 1
            return
        if want_keyframe:
            try:
                if vp8_keyframe(plain[payload_offset(plain) :]):
                    self.first_keyframe_ns = now
                    self.keyframe_seen.set()
            except ValueError:
                pass
        if agent.measuring:
            probe = read_probe(plain)
            if probe is not None:
                bucket = (now - probe[1]) // BUCKET_NS
                self.histogram[bucket if 0 <= bucket < BUCKETS else BUCKETS - 1] += 1

    def setup_record(self) -> dict[str, Any]:
        start = self.post_start_ns
        return {
            "post_ms": self.post_ms,
            "connected_ms": _ms_since(start, self.connected_ns),
            "first_packet_ms": _ms_since(start, self.first_packet_ns),
            "first_keyframe_ms": _ms_since(start, self.first_keyframe_ns),
            "error": self.error,
        }

    def window(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for track in self.tracks.values():
            span = track.window_last - track.window_first + 1 if track.window_count else 0
            result["video" if track.video else "audio"] = {
                "received": track.window_count,
                "expected": span,
            }
        return result

    async def close(self, http: aiohttp.ClientSession) -> None:
        if self.location:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await delete_session(http, self.location, None)
        await self.pc.close()


class ViewerAgent:
    """Holds this process's viewers; see bench/load.py for the order of commands."""

    def __init__(self, decrypt_every: int) -> None:
        self.decrypt_every = max(1, decrypt_every)
        self.viewers: list[Viewer] = []
        self.prepared: list[Viewer] = []
        self.measuring = False
        # Latency buckets per viewer label ("": unlabelled); a viewer adds to its label's.
        self.histograms: dict[str, list[int]] = {"": [0] * BUCKETS}
        self.unprotect_errors = 0
        self._http: aiohttp.ClientSession | None = None

    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._http

    async def prepare(self, room: str, count: int) -> int:
        """Create `count` peer connections and their offers (ICE gathering included), so
        that `open` measures the HTTP exchange and media, not offer creation."""
        batch = [Viewer(self, room) for _ in range(count)]
        await asyncio.gather(*(v.prepare() for v in batch))
        self.prepared.extend(batch)
        return len(batch)

    async def open(self, url: str, settle: float) -> list[dict[str, Any]]:
        """POST every prepared offer at once; wait up to `settle` s for first keyframes."""
        batch, self.prepared = self.prepared, []
        http = self.http()
        await asyncio.gather(*(v.open(http, url) for v in batch))
        self.viewers.extend(batch)
        waits = [asyncio.ensure_future(v.keyframe_seen.wait()) for v in batch if not v.error]
        if waits:
            await asyncio.wait(waits, timeout=settle)
            for wait in waits:
                wait.cancel()
        return [v.setup_record() for v in batch]

    async def sessions(self) -> list[dict[str, Any]]:
        """Each viewer's session: its Location and the server's candidate ports."""
        return [{"location": v.location, "ports": v.server_ports} for v in self.viewers]

    async def label(self, labels: dict[str, str]) -> int:
        """Label viewers by their session's Location (others keep theirs); from the next
        window on, latency is also kept per label. Returns how many viewers have a label."""
        for viewer in self.viewers:
            viewer.label = labels.get(viewer.location, viewer.label)
        return sum(1 for v in self.viewers if v.label)

    async def start(self) -> None:
        self.histograms = {"": [0] * BUCKETS}
        for viewer in self.viewers + self.prepared:
            if viewer.label not in self.histograms:
                self.histograms[viewer.label] = [0] * BUCKETS
            viewer.histogram = self.histograms[viewer.label]
            for track in viewer.tracks.values():
                track.window_count = 0
        self.measuring = True

    async def stop(self) -> dict[str, Any]:
        self.measuring = False
        histogram: dict[int, int] = {}
        by_label: dict[str, dict[int, int]] = {}
        for name, buckets in self.histograms.items():
            sparse = by_label[name] = {i: n for i, n in enumerate(buckets) if n}
            for bucket, count in sparse.items():
                histogram[bucket] = histogram.get(bucket, 0) + count
        return {
            "viewers": [v.window() for v in self.viewers],
            "labels": [v.label for v in self.viewers],
            "connected": sum(1 for v in self.viewers if v.connected_ns and not v.error),
            "histogram": histogram,
            "histograms": {name: h for name, h in by_label.items() if name or h},
            "unprotect_errors": self.unprotect_errors,
            "srtp_profile": next(
                (aiortc_taps.srtp_profile_name(v.pc) for v in self.viewers if v.connected_ns), ""
            ),
        }

    async def close(self) -> int:
        viewers, self.viewers = self.viewers + self.prepared, []
        self.prepared = []
        http = self.http()
        for start in range(0, len(viewers), 50):
            await asyncio.gather(*(v.close(http) for v in viewers[start : start + 50]))
        if self._http is not None:
            await self._http.close()
            self._http = None
        return len(viewers)


def viewer_agent_main(conn: Connection, decrypt_every: int) -> None:
    agent = ViewerAgent(decrypt_every)
    serve_commands(
        conn,
        {
            "prepare": agent.prepare,
            "open": agent.open,
            "start": agent.start,
            "stop": agent.stop,
            "sessions": agent.sessions,
            "label": agent.label,
            "close": agent.close,
        },
    )


# --------------------------------------------------------------------------------------------
# Publishers


def _restrict_codecs(sender_kind: str, transceiver: Any, mime: str) -> None:
    caps = RTCRtpSender.getCapabilities(sender_kind).codecs
    chosen = [c for c in caps if c.mimeType.lower() in (mime, f"{sender_kind}/rtx")]
    transceiver.setCodecPreferences(chosen)


class OutgoingTrack:
    """One sending track: SSRC, payload type, sequence, probe counter and paced queue."""

    def __init__(self, transceiver: Any) -> None:
        self.transceiver = transceiver
        self.state = adapter.make_forwarding(transceiver.sender)
        self.ssrc = 0
        self.payload_type = 0
        self.seq = 0
        self.counter = 0
        self.send: Callable[[bytes], None] | None = None
        self.sent = 0
        self.send_errors = 0

    def connect(self) -> None:
        self.ssrc = adapter.sender_ssrcs(self.transceiver.sender)[0]
        codecs = adapter.negotiated_codecs(self.transceiver)
        media = next(c for c in codecs if not c.mimeType.lower().endswith("/rtx"))
        assert media.payloadType is not None
        self.payload_type = media.payloadType
        self.send = adapter.SrtpSendPath(self.transceiver.sender).send

    def send_packet(self, timestamp: int, marker: bool, payload: bytes) -> None:
        if self.send is None:
            return
        self.seq = (self.seq + 1) & 0xFFFF
        self.counter += 1
        header = bytes(
            (0x80, (0x80 if marker else 0) | self.payload_type, self.seq >> 8, self.seq & 0xFF)
        ) + (timestamp.to_bytes(4, "big") + self.ssrc.to_bytes(4, "big"))
        packet = header + payload + PROBE.pack(PROBE_MAGIC, self.counter, time.monotonic_ns())
        try:
            self.send(packet)
        except (ConnectionError, OSError, pylibsrtp.Error):
            self.send_errors += 1
            return
        self.sent += 1
        state = self.state
        state.packets += 1
        state.octets += len(payload) + PROBE.size
        state.sr_rtp_timestamp = timestamp
        state.sr_wallclock = time.time()


class Publisher:
    """One WHIP session sending synthetic VP8 + Opus, paced in real time."""

    def __init__(self, room: str, profile: VideoProfile, seed: int) -> None:
        self.room = room
        self.profile = profile
        self.pc = new_pc()
        video = self.pc.addTransceiver("video", direction="sendonly")
        audio = self.pc.addTransceiver("audio", direction="sendonly")
        _restrict_codecs("video", video, "video/vp8")
        _restrict_codecs("audio", audio, "audio/opus")
        self.video = OutgoingTrack(video)
        self.audio = OutgoingTrack(audio)
        self.video.state.on_feedback = self.on_feedback
        self.video_source = VideoSource(profile, seed)
        self.audio_source = AudioSource()
        self.queue: deque[tuple[int, int, bool, bytes]] = deque()  # due_ns, ts, marker, payload
        self.next_frame_ns = 0
        self.next_audio_ns = 0
        self.location = ""
        self.post_ms: float | None = None
        self.keyframe_requests = 0
        self.nacks = 0
        self.keyframes = 0

    async def open(self, http: aiohttp.ClientSession, url: str) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        description = self.pc.localDescription
        session = await post_offer(http, endpoint(url, "whip", self.room), description.sdp, None)
        self.post_ms = session.post_ms
        self.location = session.location
        await self.pc.setRemoteDescription(RTCSessionDescription(session.answer, "answer"))
        if not await wait_connected(self.pc, CONNECT_TIMEOUT):
            raise ConnectionError(f"publisher of {self.room} did not connect")
        self.video.connect()
        self.audio.connect()
        self.next_frame_ns = self.next_audio_ns = time.monotonic_ns()

    def on_feedback(self, packet: AnyRtcpPacket) -> None:
        fmt = getattr(packet, "fmt", None)
        name = type(packet).__name__
        if name == "RtcpPsfbPacket" and fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            self.keyframe_requests += 1
            self.video_source.request_keyframe()
        elif name == "RtcpRtpfbPacket" and fmt == RTCP_RTPFB_NACK:
            self.nacks += 1

    def tick(self, now: int) -> None:
        """Queue every frame that is due, then send what the pacer allows by now."""
        profile = self.profile
        frame_ns = 1_000_000_000 // profile.fps
        while self.next_frame_ns <= now:
            timestamp, keyframe, payloads = self.video_source.next_frame()
            self.keyframes += keyframe
            size = sum(len(p) for p in payloads)
            spread = int(size * 8 / (profile.bitrate * PACING_FACTOR) * 1e9)
            step = spread // len(payloads)
            start = self.next_frame_ns
            for index, payload in enumerate(payloads):
                last = index == len(payloads) - 1
                self.queue.append((start + index * step, timestamp, last, payload))
            self.next_frame_ns += frame_ns
        while self.next_audio_ns <= now:
            # Audio bypasses the video pacer, as in libwebrtc.
            timestamp, payload = self.audio_source.next_packet()
            self.audio.send_packet(timestamp, False, payload)
            self.next_audio_ns += 20_000_000
        queue = self.queue
        while queue and queue[0][0] <= now:
            _, timestamp, marker, payload = queue.popleft()
            self.video.send_packet(timestamp, marker, payload)

    def counters(self) -> dict[str, Any]:
        return {
            "room": self.room,
            "post_ms": self.post_ms,
            "video_sent": self.video.sent,
            "audio_sent": self.audio.sent,
            "send_errors": self.video.send_errors + self.audio.send_errors,
            "keyframes": self.keyframes,
            "keyframe_requests": self.keyframe_requests,
            "nacks": self.nacks,
        }


class PublisherAgent:
    def __init__(self) -> None:
        self.publishers: list[Publisher] = []
        self.idle: list[Publisher] = []  # connected, sending nothing (setup bursts)
        self._http: aiohttp.ClientSession | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def publish(
        self, url: str, rooms: list[str], profile: dict[str, Any], send: bool
    ) -> list[Any]:
        """Open one publisher per room (concurrently); with `send`, start their media."""
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=True)
            )
        batch = [
            Publisher(room, VideoProfile(**profile), seed=len(self.publishers) + i)
            for i, room in enumerate(rooms)
        ]
        await asyncio.gather(*(p.open(self._http, url) for p in batch))
        if send:
            self.publishers.extend(batch)
            if self._timer is None:
                self._tick()
        else:
            self.idle.extend(batch)
        return [p.counters() for p in batch]

    def _tick(self) -> None:
        now = time.monotonic_ns()
        for publisher in self.publishers:
            publisher.tick(now)
        self._timer = asyncio.get_running_loop().call_later(TICK, self._tick)

    async def counters(self) -> list[dict[str, Any]]:
        return [p.counters() for p in self.publishers]

    async def close(self) -> int:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        publishers, self.publishers, self.idle = self.publishers + self.idle, [], []
        for publisher in publishers:
            if publisher.location and self._http is not None:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    await delete_session(self._http, publisher.location, None)
            await publisher.pc.close()
        if self._http is not None:
            await self._http.close()
            self._http = None
        return len(publishers)


def publisher_agent_main(conn: Connection) -> None:
    agent = PublisherAgent()
    serve_commands(
        conn, {"publish": agent.publish, "counters": agent.counters, "close": agent.close}
    )
