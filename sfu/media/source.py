"""Where a track's packets come from: the source, its SSRC, its epochs and its RTX.

A track outlives publishers. Each new source, and each SSRC change of a source, starts a
new *epoch*: viewers' outputs re-base their sequence numbers and timestamps on the first
packet of an epoch (sfu.media.fanout), so what a viewer receives stays monotonic.

SSRC switching follows the silence rule: a publisher may restart its encoder under a new
SSRC, but a stray packet with another SSRC must not hijack the stream, so the source
switches only after the current SSRC has been quiet for SOURCE_SWITCH_SILENCE.

RTX is unwrapped here (RFC 4588: a 2-byte original sequence number starts the payload),
bounded by the viewers' SRTP replay window: a "retransmission" of anything but the recent
past would move viewers' sequence numbers far ahead, and their SRTP would then drop the
live stream as replayed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sfu.codecs import CodecKey
from sfu.media.packet import RtpView

SOURCE_SWITCH_SILENCE = 1.0  # seconds
# aiortc's SRTP sessions keep a replay window of 1024 packets.
REPLAY_WINDOW = 1024

# SourceState.accept answers one of these.
SAME = 0
SWITCHED = 1  # a new SSRC: a new epoch has started
REJECTED = -1  # another SSRC while the current one is live: drop the packet

# SourceState.unwrap_rtx answers the original sequence number, or one of these.
RTX_EMPTY = -1  # a padding-only probe or an empty retransmission: nothing to forward
RTX_STALE = -2  # outside the replay window: drop and count


class PacketSource(Protocol):
    """What a track needs from whatever feeds it packets.

    Today the publisher's ingress (sfu.session.PublisherSession: decrypted RTP from its
    DTLS transport); tomorrow a reader of another worker's shared-memory ring, or a relay
    from another node. A source calls `TrackForwarder.connect(self)`, then hands every
    packet to `TrackForwarder.receive(RtpView(data), rtx)`, and `disconnect(self)` when it
    goes; the track asks it for keyframes (already rate-limited, sfu.media.keyframes).
    """

    @property
    def codec(self) -> CodecKey: ...

    @property
    def audio_level_id(self) -> int:
        """The source's ssrc-audio-level extension id (RFC 6464), 0 when it has none."""
        ...

    def request_keyframe(self) -> None: ...


@dataclass(frozen=True)
class SourceInfo:
    """A PacketSource made of plain values (what `TrackForwarder.set_source` builds)."""

    codec: CodecKey
    request_keyframe: Callable[[], None]
    audio_level_id: int = 0


class SourceState:
    """The current SSRC of a track's source, its highest sequence number, and the epoch;
    and what the room stats read of the ingest leg (`packets`, `bytes`, `loss`)."""

    __slots__ = (
        "ssrc",
        "epoch",
        "silence",
        "_seen",
        "_highest_seq",
        "packets",
        "bytes",
        "_cycles",
        "_base_seq",
        "_base_packets",
        "_lost_before",
        "_expected_before",
    )

    def __init__(self, silence: float = SOURCE_SWITCH_SILENCE) -> None:
        self.ssrc: int | None = None
        self.epoch = 0
        self.silence = silence
        self._seen = 0.0
        self._highest_seq = 0  # bounds what a retransmission may be
        # Since the track began (never reset): media packets of the current SSRC accepted
        # (padding-only ones included, RTX not: RFC 3550's "received"), and the bytes of the
        # packets forwarded (TrackForwarder.receive counts those, RTX included).
        self.packets = 0
        self.bytes = 0
        # Loss (RFC 3550 A.3) per SSRC epoch: wraps of the highest sequence number (in units
        # of 65536), the epoch's first sequence number and the packets before it; the lost
        # and expected packets of the epochs before.
        self._cycles = 0
        self._base_seq = 0
        self._base_packets = 0
        self._lost_before = 0
        self._expected_before = 0

    def restart(self) -> None:
        """A new source: a new epoch, and the next packet's SSRC is taken whatever it is."""
        self.ssrc = None
        self.epoch += 1

    def forget(self) -> None:
        """The source went away: the next packet's SSRC is taken whatever it is."""
        self.ssrc = None

    def accept(self, ssrc: int, seq: int, now: float) -> int:
        """Per media packet: SAME, SWITCHED (a new epoch started) or REJECTED."""
        if ssrc == self.ssrc:
            self._seen = now
            self.packets += 1
            highest = self._highest_seq
            if (seq - highest) & 0xFFFF < 0x8000:
                if seq < highest:  # wrapped
                    self._cycles += 0x10000
                self._highest_seq = seq
            return SAME
        if self.ssrc is not None and now - self._seen < self.silence:
            return REJECTED
        if self.packets:  # close the previous epoch's account
            expected, lost = self._epoch_loss()
            self._expected_before += expected
            self._lost_before += lost
        self.ssrc = ssrc
        self.epoch += 1
        self._seen = now
        self._highest_seq = seq
        self._cycles = 0
        self._base_seq = seq
        self._base_packets = self.packets
        self.packets += 1
        return SWITCHED

    def _epoch_loss(self) -> tuple[int, int]:
        expected = self._cycles + self._highest_seq - self._base_seq + 1
        received = self.packets - self._base_packets
        return expected, max(expected - received, 0)  # duplicates count as received

    def loss(self) -> tuple[int, int]:
        """(expected, lost) media packets since the track began: sequence gaps of each SSRC
        the source used, before any retransmission; off the per-packet path."""
        if self.packets == 0:
            return 0, 0
        expected, lost = self._epoch_loss()
        return self._expected_before + expected, self._lost_before + lost

    def unwrap_rtx(self, packet: RtpView) -> int:
        """Per RTX packet: the original sequence number, RTX_EMPTY or RTX_STALE."""
        data = packet.data
        offset = packet.payload_offset
        if len(data) - offset - packet.padding < 3:  # padding-only probe or empty
            return RTX_EMPTY
        seq = (data[offset] << 8) | data[offset + 1]
        if (self._highest_seq - seq) & 0xFFFF >= REPLAY_WINDOW:
            return RTX_STALE
        return seq
