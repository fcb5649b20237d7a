"""The fan-out: header templates, Output (rebase, forward, retransmit), audio-level slots.

Outputs send into lists; the bytes are compared whole, against fixtures.
"""

from __future__ import annotations

from aiortc.rtp import RtpPacket

from sfu.aiortc_adapter import SenderState
from sfu.codecs import CodecKey
from sfu.media.fanout import AUDIO_LEVEL_SLOT, Fanout, Output, header_template
from sfu.media.stats import ForwardingStats
from tests.sfu.media import extensions_map
from tests.support.outputs import list_output

VP8 = CodecKey("video/vp8", 90000, "")
OPUS = CodecKey("audio/opus", 48000, "")


def _output(
    sent: list[bytes], stats: ForwardingStats | None = None, *, rtx_pt: int | None = None
) -> Output:
    output = list_output(sent, stats, rtx_pt=rtx_pt)
    output.last_seq = 999  # instead of a random start: fixed bytes
    output.rtx_seq = 7
    return output


# --- header templates ----------------------------------------------------------------------


def test_header_template_carries_mid_in_one_byte_extension() -> None:
    # V=2 X=1, then the one-byte profile, 1 word: id 9 length 1 "1", two padding bytes.
    expected = bytes.fromhex("90000000 00000000 00000000 bede0001 9031 0000")
    assert bytes(header_template(9, "1")) == expected
    header = header_template(9, "1")
    header[1] = 100
    parsed = RtpPacket.parse(bytes(header) + b"payload", extensions_map(mid=9))
    assert parsed.extensions.mid == "1"
    assert parsed.payload == b"payload"
    assert parsed.payload_type == 100


def test_header_template_without_mid_is_bare() -> None:
    assert bytes(header_template(None, None)) == b"\x80" + b"\x00" * 11


def test_audio_level_slot_is_padding_until_filled_then_parses() -> None:
    header = header_template(3, "0", audio_level_id=5)
    ext_map = extensions_map(mid=3, audio_level=5)
    blank = RtpPacket.parse(bytes(header) + b"opus", ext_map)
    assert blank.extensions.mid == "0" and blank.extensions.audio_level is None
    header[AUDIO_LEVEL_SLOT] = 5 << 4
    header[AUDIO_LEVEL_SLOT + 1] = 0x80 | 42
    filled = RtpPacket.parse(bytes(header) + b"opus", ext_map)
    assert filled.extensions.mid == "0"
    assert filled.extensions.audio_level == (True, 42)
    assert filled.payload == b"opus"


# --- Output --------------------------------------------------------------------------------

# seq 1000 -> 1000 (offset 0 after last_seq 999), ts 90000 + ts offset, PT 120 + marker,
# SSRC 0xabcdef01, then the MID block: id 4, "0".
FORWARDED = bytes.fromhex("90f803e8 0001d4c0 abcdef01 bede0001 40300000") + b"frame"


def test_output_rewrites_the_header_byte_exact() -> None:
    sent: list[bytes] = []
    output = _output(sent)
    output.epoch, output.seq_offset, output.ts_offset = 1, 0, 30000
    output.forward(1000, 90000, 0, 0x80, b"frame", 5.0, 1)
    assert sent == [FORWARDED]
    report = output.report
    assert (report.packets, report.octets, report.sr_rtp_timestamp) == (1, 5, 120000)
    assert report.sr_wallclock == 5.0 and output.last_seq == 1000
    output.forward(1001, 90000, 0x20, 0, b"pad\x00\x02", 5.0, 1)  # padding flag follows
    assert sent[1][:4] == bytes.fromhex("b07803e9")


def test_a_new_epoch_continues_the_viewers_numbering() -> None:
    sent: list[bytes] = []
    output = _output(sent)
    output.forward(50000, 5000, 0, 0, b"a", 1.0, 1)  # first epoch: random timestamp origin
    first = RtpPacket.parse(sent[0])
    assert first.sequence_number == 1000
    output.forward(50001, 8000, 0, 0, b"b", 1.0, 1)
    output.forward(7, 999, 0, 0, b"c", 1.5, 2)  # a republish: unrelated numbers
    third = RtpPacket.parse(sent[2])
    assert third.sequence_number == 1002
    # 0.5 s after the last packet, at 90 kHz: the timestamp runs on by 45000.
    assert (third.timestamp - first.timestamp) & 0xFFFFFFFF == 3000 + 45000
    assert output.source_seq(1002) == 7


def test_retransmit_as_rtx_byte_exact() -> None:
    sent: list[bytes] = []
    output = _output(sent, rtx_pt=121)
    output.epoch, output.seq_offset, output.ts_offset = 1, 0, 30000
    assert output.retransmit((1000, 90000, 0, 0x80, b"frame", 1))
    rtx_header = bytes.fromhex("90f90007 0001d4c0 12345678 bede0001 40300000")
    assert sent == [rtx_header + b"\x03\xe8" + b"frame"]  # RTX seq 7, OSN 1000
    assert output.rtx_seq == 8
    assert not output.retransmit((1000, 90000, 0, 0x80, b"frame", 0))  # another epoch
    assert len(sent) == 1


def test_retransmit_without_rtx_repeats_the_packet() -> None:
    sent: list[bytes] = []
    output = _output(sent)
    output.epoch, output.seq_offset, output.ts_offset = 1, 0, 30000
    assert output.retransmit((1000, 90000, 0, 0x80, b"frame", 1))
    assert sent == [FORWARDED]


def test_send_errors_are_counted_not_raised() -> None:
    stats = ForwardingStats()

    def broken(packet: bytes) -> None:
        raise ConnectionError("gone")

    output = _output([], stats)
    output.send = broken
    output.forward(1, 1, 0, 0, b"x", 1.0, 1)
    assert not output.retransmit((1, 1, 0, 0, b"x", 1))
    assert stats.send_errors == 2 and output.report.packets == 0


# --- Fanout --------------------------------------------------------------------------------


def test_fanout_counts_and_sends_to_live_viewers_only() -> None:
    stats = ForwardingStats()
    fanout = Fanout(stats)
    live: list[bytes] = []
    joining: list[bytes] = []
    fanout.attach(_output(live, stats))
    fanout.attach(_output(joining, stats), live=False)
    fanout.forward(1, 2, 0, 0, b"12345", 1.0, 1)
    assert len(live) == 1 and joining == []
    assert (stats.packets_out, stats.bytes_out) == (1, 5)


def test_audio_level_goes_into_each_viewers_slot_under_its_id() -> None:
    stats = ForwardingStats()
    fanout = Fanout(stats)
    sent: dict[int, list[bytes]] = {10: [], 3: []}
    for level_id, packets in sent.items():
        output = Output(
            send=packets.append,
            report=SenderState(),
            codec=OPUS,
            ssrc=5,
            payload_type=111,
            rtx_ssrc=6,
            rtx_payload_type=None,
            header=header_template(4, "1", audio_level_id=level_id),
            stats=stats,
            audio_level_id=level_id,
        )
        fanout.attach(output)
    without = _output([], stats)
    fanout.attach(without)
    assert len(fanout.level_slots) == 2
    for level in (0x80 | 30, 127, -1):
        fanout.set_audio_level(level)
        fanout.forward(1, 960, 0, 0, b"opus", 1.0, 1)
    for level_id, packets in sent.items():
        received = [
            RtpPacket.parse(p, extensions_map(mid=4, audio_level=level_id)) for p in packets
        ]
        assert [p.extensions.audio_level for p in received] == [(True, 30), (False, 127), None]
        assert {p.extensions.mid for p in received} == {"1"}
    assert packets[0][12:20] == bytes.fromhex("bede0001 309e 4031")  # id 3: V + level 30; MID
    fanout.detach(without)
    fanout.detach(fanout.outputs[0])
    assert len(fanout.level_slots) == 1 and len(fanout.outputs) == 1
