"""SourceState: SSRC switching with the silence rule, RTX unwrapping, epochs (`now` passed in)."""

from __future__ import annotations

import struct

from sfu.media.packet import RtpView
from sfu.media.source import (
    REJECTED,
    REPLAY_WINDOW,
    RTX_EMPTY,
    RTX_STALE,
    SAME,
    SOURCE_SWITCH_SILENCE,
    SWITCHED,
    SourceState,
)


def _rtx(osn: int, payload: bytes = b"media", padding: int = 0) -> RtpView:
    """An RTX packet (PT 97, SSRC 2222) carrying original sequence number `osn`."""
    first = 0x80 | (0x20 if padding else 0)
    body = struct.pack("!H", osn) + payload if osn >= 0 else payload
    if padding:
        body += bytes(padding - 1) + bytes([padding])
    return RtpView(struct.pack("!BBHII", first, 97, 500, 100, 2222) + body)


def test_the_first_ssrc_starts_an_epoch_and_is_kept() -> None:
    state = SourceState()
    state.restart()
    assert state.epoch == 1 and state.ssrc is None
    assert state.accept(1111, 10, now=5.0) == SWITCHED
    assert state.epoch == 2 and state.ssrc == 1111
    assert state.accept(1111, 11, now=5.01) == SAME
    assert state.epoch == 2


def test_a_stray_ssrc_is_rejected_while_the_source_is_live() -> None:
    state = SourceState()
    state.accept(1, 1, now=10.0)
    assert state.accept(666, 9000, now=10.0 + SOURCE_SWITCH_SILENCE / 2) == REJECTED
    assert state.accept(1, 2, now=10.0 + SOURCE_SWITCH_SILENCE) == SAME  # still live
    assert state.ssrc == 1 and state.epoch == 1


def test_a_new_ssrc_takes_over_after_the_silence() -> None:
    """An encoder restart under a new SSRC (no re-negotiation)."""
    state = SourceState()
    state.accept(1, 1, now=10.0)
    assert state.accept(2, 700, now=10.0 + SOURCE_SWITCH_SILENCE + 0.01) == SWITCHED
    assert state.ssrc == 2 and state.epoch == 2


def test_forget_lets_the_next_ssrc_in_at_once() -> None:
    state = SourceState()
    state.accept(1, 1, now=10.0)
    state.forget()
    assert state.accept(2, 5, now=10.0) == SWITCHED
    assert state.epoch == 2


def test_rtx_is_unwrapped_to_its_original_sequence_number() -> None:
    state = SourceState()
    state.accept(1111, 13, now=1.0)
    assert state.unwrap_rtx(_rtx(12)) == 12
    oldest = (13 - REPLAY_WINDOW + 1) & 0xFFFF  # across the wrap
    assert state.unwrap_rtx(_rtx(oldest)) == oldest


def test_rtx_outside_the_replay_window_is_stale() -> None:
    """Junk RTX must not jump viewers' sequence numbers (their SRTP would drop what follows)."""
    state = SourceState()
    state.accept(1111, 5000, now=1.0)
    for original in (5001, 5000 + 0x8000, 5000 - 2000, 5000 - REPLAY_WINDOW):
        assert state.unwrap_rtx(_rtx(original)) == RTX_STALE


def test_rtx_window_follows_the_highest_sequence_number_across_the_wrap() -> None:
    state = SourceState()
    state.accept(1111, 65530, now=1.0)
    state.accept(1111, 4, now=1.0)  # wrapped: newer
    state.accept(1111, 65000, now=1.0)  # older: the window does not move back
    assert state.unwrap_rtx(_rtx(65535)) == 65535
    assert state.unwrap_rtx(_rtx(5)) == RTX_STALE


def test_padding_only_and_empty_rtx_carry_nothing() -> None:
    state = SourceState()
    state.accept(1111, 10, now=1.0)
    assert state.unwrap_rtx(_rtx(-1, payload=b"", padding=200)) == RTX_EMPTY  # a probe
    assert state.unwrap_rtx(_rtx(9, payload=b"")) == RTX_EMPTY  # an OSN and no media
