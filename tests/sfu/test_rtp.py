"""The pure RTP/RTCP helpers beside the per-packet path (sfu.rtp) and SDP candidate edits.

RTP header parsing is tested in test_media_packet.py, header templates in
test_media_fanout.py.
"""

import struct

from aiortc.rtp import RtpPacket

from sfu.rtp import is_rtcp, parse_nack_fci, seq_newer


def _packet() -> bytes:
    packet = RtpPacket(payload_type=96, sequence_number=7, timestamp=1234, ssrc=42)
    packet.payload = b"\x01\x02\x03"
    return packet.serialize()


def test_nack_lost_list_wraps_at_16_bits() -> None:
    assert parse_nack_fci([(65535, 0b11)]) == [65535, 0, 1]


def test_rtcp_demultiplexing() -> None:
    assert is_rtcp(struct.pack("!BBH", 0x80, 200, 6))
    assert not is_rtcp(_packet())


def test_sequence_arithmetic_wraps() -> None:
    assert seq_newer(1, 65535)
    assert not seq_newer(65535, 1)
    assert not seq_newer(5, 5)


def test_mdns_candidates_are_stripped_and_others_kept() -> None:
    from sfu.sdp import strip_mdns_candidates

    offer = (
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
        "a=candidate:1 1 udp 2122260223 3f1c2a4e-1b2c-4d5e-8f90.local 54321 typ host\r\n"
        "a=candidate:2 1 udp 2122260223 192.0.2.7 54322 typ host\r\n"
    )
    stripped = strip_mdns_candidates(offer)
    assert ".local" not in stripped
    assert "192.0.2.7 54322 typ host" in stripped


def test_public_ip_is_announced_before_the_host_candidate() -> None:
    from sfu.sdp import announce_public_ip

    answer = "a=candidate:abc 1 udp 2130706431 10.0.0.5 40001 typ host\r\na=end-of-candidates\r\n"
    assert "203.0.113.9 40001 typ host" in announce_public_ip(answer, "203.0.113.9")
    assert announce_public_ip(answer, None) == answer
