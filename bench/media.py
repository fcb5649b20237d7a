"""Synthetic media for the load generator: VP8 and Opus RTP payloads that need no encoder.

The SFU never decodes, so a payload only has to look right where the SFU and its viewers
look: a valid VP8 payload descriptor with the S bit on the first packet of each frame, a
VP8 frame tag whose P bit is clear on keyframes (sfu.media.keyframes.vp8_keyframe), realistic frame
sizes and packet counts, and RTP timestamps and marker bits as an encoder sets them.

Every payload ends with a probe: magic, a per-track counter and the CLOCK_MONOTONIC time at
which the publisher handed the packet to SRTP. CLOCK_MONOTONIC is one clock for every
process of the machine, so a viewer's arrival time minus the probe is the one-way latency.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

PROBE = struct.Struct("!4sIQ")  # magic, counter, send time (ns, CLOCK_MONOTONIC)
PROBE_MAGIC = b"LSFB"
PROBE_SIZE = PROBE.size

VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000
OPUS_PTIME = 0.020
# Payload bytes per video packet: with the RTP header, the SFU's MID extension and the SRTP
# tag the datagram stays under 1200 bytes, as browsers keep it.
MAX_VIDEO_PAYLOAD = 1140
KEYFRAME_TO_DELTA = 6.0  # a keyframe is about six delta frames at these bitrates

_VP8_DESCRIPTOR_START = 0x10  # X=0, N=0, S=1, PID=0
_VP8_DESCRIPTOR_CONTINUATION = 0x00


def vp8_frame_payloads(size: int, keyframe: bool, width: int, height: int) -> list[bytes]:
    """The RTP payloads (without probe) of one VP8 frame of about `size` bytes.

    Split into equal packets as libwebrtc does; the first one carries the frame tag (P bit
    clear on a keyframe) and, for a keyframe, the start code and dimensions.
    """
    body = MAX_VIDEO_PAYLOAD - 1 - PROBE_SIZE
    count = max(1, -(-size // body))
    per_packet = max(16, size // count)
    if keyframe:
        # frame tag: P=0 (key), version 0, show_frame; then start code and 14-bit sizes
        header = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A]) + struct.pack("<HH", width, height)
    else:
        header = bytes([0x11, 0x02, 0x00])  # P=1: an inter frame
    payloads = []
    for index in range(count):
        if index == 0:
            filler = per_packet - len(header)
            payloads.append(bytes([_VP8_DESCRIPTOR_START]) + header + b"\x5a" * filler)
        else:
            payloads.append(bytes([_VP8_DESCRIPTOR_CONTINUATION]) + b"\xa5" * per_packet)
    return payloads


@dataclass
class VideoProfile:
    bitrate: int = 2_500_000
    fps: int = 30
    keyframe_interval: float = 2.0  # seconds between periodic keyframes
    width: int = 1280
    height: int = 720

    def frame_sizes(self) -> tuple[int, int]:
        """(delta frame bytes, keyframe bytes) that average to the bitrate over one GOP."""
        frames = max(1, round(self.fps * self.keyframe_interval))
        per_gop = self.bitrate / 8 * frames / self.fps
        delta = per_gop / (frames - 1 + KEYFRAME_TO_DELTA)
        return int(delta), int(delta * KEYFRAME_TO_DELTA)


class VideoSource:
    """Frame after frame of synthetic VP8: a keyframe every keyframe_interval, or on request."""

    def __init__(self, profile: VideoProfile, seed: int = 1) -> None:
        self.profile = profile
        self.delta_size, self.key_size = profile.frame_sizes()
        self.gop = max(1, round(profile.fps * profile.keyframe_interval))
        self.frame = 0
        self.since_key = 0
        self.force_key = True
        self._rng = random.Random(seed)

    def request_keyframe(self) -> None:
        self.force_key = True

    def next_frame(self) -> tuple[int, bool, list[bytes]]:
        """(RTP timestamp, keyframe?, payloads without probe) of the next frame."""
        profile = self.profile
        keyframe = self.force_key or self.since_key >= self.gop
        if keyframe:
            self.force_key = False
            self.since_key = 0
            size = self.key_size
        else:
            size = int(self.delta_size * self._rng.uniform(0.7, 1.3))
        self.since_key += 1
        timestamp = (self.frame * VIDEO_CLOCK // profile.fps) & 0xFFFFFFFF
        self.frame += 1
        return (
            timestamp,
            keyframe,
            vp8_frame_payloads(size, keyframe, profile.width, profile.height),
        )


class AudioSource:
    """Opus at 50 packets/s: a TOC byte (CELT FB 20 ms, mono) and a constant-size frame."""

    def __init__(self, bitrate: int = 48_000) -> None:
        size = max(8, int(bitrate / 8 * OPUS_PTIME) - PROBE_SIZE)
        self.payload = bytes([0xFC]) + b"\x33" * (size - 1)
        self.packet = 0

    def next_packet(self) -> tuple[int, bytes]:
        timestamp = (self.packet * int(AUDIO_CLOCK * OPUS_PTIME)) & 0xFFFFFFFF
        self.packet += 1
        return timestamp, self.payload


def read_probe(payload: bytes) -> tuple[int, int] | None:
    """(counter, send time ns) from the end of a decrypted payload, or None if absent."""
    if len(payload) < PROBE_SIZE:
        return None
    magic, counter, sent_ns = PROBE.unpack_from(payload, len(payload) - PROBE_SIZE)
    if magic != PROBE_MAGIC:
        return None
    return counter, sent_ns


def one_second_of_packets(profile: VideoProfile) -> list[bytes]:
    """The payloads (with a zero probe) of one second of video and audio, interleaved in
    send order: what the bare fan-out baseline forwards, so it moves the same bytes."""
    video = VideoSource(profile)
    audio = AudioSource()
    probe = PROBE.pack(PROBE_MAGIC, 0, 0)
    packets: list[bytes] = []
    audio_due = 0.0
    for frame in range(profile.fps):
        now = frame / profile.fps
        while audio_due <= now:
            packets.append(audio.next_packet()[1] + probe)
            audio_due += OPUS_PTIME
        packets.extend(p + probe for p in video.next_frame()[2])
    while audio_due < 1.0:
        packets.append(audio.next_packet()[1] + probe)
        audio_due += OPUS_PTIME
    return packets
