"""The pure RTP helpers of the forwarding path."""

import struct

import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

from sfu.rtp import (
    AUDIO_LEVEL_SLOT,
    AUDIO_LEVEL_URI,
    MID_URI,
    extension_element,
    header_template,
    is_rtcp,
    parse_nack_fci,
    payload_offset,
    seq_newer,
)


def _packet(**kwargs: object) -> bytes:
    packet = RtpPacket(payload_type=96, sequence_number=7, timestamp=1234, ssrc=42)
    packet.payload = b"\x01\x02\x03"
    for key, value in kwargs.items():
        setattr(packet, key, value)
    return packet.serialize()


def test_payload_offset_plain_header() -> None:
    data = _packet()
    assert payload_offset(data) == 12
    assert data[payload_offset(data) :] == b"\x01\x02\x03"


def test_payload_offset_skips_csrcs_and_extension() -> None:
    packet = RtpPacket(payload_type=96, sequence_number=1, timestamp=2, ssrc=3)
    packet.csrc = [10, 11]
    packet.payload = b"xyz"
    ext_map = HeaderExtensionsMap()
    ext_map.configure(
        RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=4, uri=MID_URI)])
    )
    packet.extensions.mid = "video0"
    data = packet.serialize(ext_map)
    assert data[payload_offset(data) :] == b"xyz"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80" * 11,
        b"\x40" + b"\x00" * 20,  # version 1
        b"\x8f" + b"\x00" * 20,  # 15 CSRCs announced, 21 bytes present
        b"\x90" + b"\x00" * 11,  # extension bit, no extension header
        b"\x90" + b"\x00" * 11 + b"\xbe\xde\xff\xff",  # extension longer than the packet
    ],
)
def test_payload_offset_rejects_truncated_headers(data: bytes) -> None:
    with pytest.raises(ValueError):
        payload_offset(data)


def test_header_template_carries_mid_in_one_byte_extension() -> None:
    header = header_template(9, "1")
    header[1] = 100
    data = bytes(header) + b"payload"
    ext_map = HeaderExtensionsMap()
    ext_map.configure(
        RTCRtpParameters(headerExtensions=[RTCRtpHeaderExtensionParameters(id=9, uri=MID_URI)])
    )
    parsed = RtpPacket.parse(data, ext_map)
    assert parsed.extensions.mid == "1"
    assert parsed.payload == b"payload"
    assert parsed.payload_type == 100


def test_header_template_without_mid_is_bare() -> None:
    assert bytes(header_template(None, None)) == b"\x80" + b"\x00" * 11


def _extensions_map(**ids: int) -> HeaderExtensionsMap:
    uris = {"mid": MID_URI, "audio_level": AUDIO_LEVEL_URI}
    ext_map = HeaderExtensionsMap()
    ext_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=uris[name]) for name, i in ids.items()
            ]
        )
    )
    return ext_map


def test_audio_level_slot_is_padding_until_filled_then_parses() -> None:
    header = header_template(3, "0", audio_level_id=5)
    ext_map = _extensions_map(mid=3, audio_level=5)
    blank = RtpPacket.parse(bytes(header) + b"opus", ext_map)
    assert blank.extensions.mid == "0" and blank.extensions.audio_level is None
    header[AUDIO_LEVEL_SLOT] = 5 << 4
    header[AUDIO_LEVEL_SLOT + 1] = 0x80 | 42
    filled = RtpPacket.parse(bytes(header) + b"opus", ext_map)
    assert filled.extensions.mid == "0"
    assert filled.extensions.audio_level == (True, 42)
    assert filled.payload == b"opus"


@pytest.mark.parametrize("two_byte", [False, True])
def test_extension_element_finds_a_value_among_others(two_byte: bool) -> None:
    packet = RtpPacket(payload_type=111, sequence_number=1, timestamp=2, ssrc=3)
    packet.extensions.mid = "audio-mid"
    packet.extensions.audio_level = (False, 77)
    packet.payload = b"xyz"
    data = packet.serialize(_extensions_map(mid=1, audio_level=12 if two_byte else 2))
    if two_byte:  # id 12 is fine in one-byte form too; rebuild the block in two-byte form
        data = (
            data[:12]
            + b"\x10\x00\x00\x04"
            + b"\x01\x09audio-mid"
            + b"\x0c\x01\x4d"
            + b"\x00\x00"
            + b"xyz"
        )
    position = extension_element(data, 12 if two_byte else 2)
    assert position > 0 and data[position] == 77
    assert extension_element(data, 7) == -1


@pytest.mark.parametrize(
    "data",
    [
        b"\x80" + b"\x00" * 11 + b"\x20\x4d",  # no extension bit
        b"\x90" + b"\x00" * 11,  # extension bit, nothing after the fixed header
        b"\x90" + b"\x00" * 11 + b"\xbe\xde\x00\x05\x20\x4d",  # block longer than the packet
        b"\x90" + b"\x00" * 11 + b"\xbe\xde\x00\x01\x00\x00\x00\x20",  # element cut at the end
        b"\x90" + b"\x00" * 11 + b"\xbe\xde\x00\x01\xf0\x20\x4d\x00",  # id 15 stops parsing
        b"\x9f" + b"\x00" * 11,  # 15 CSRCs announced, none present
    ],
)
def test_extension_element_never_raises_on_malformed_blocks(data: bytes) -> None:
    assert extension_element(data, 2) == -1


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


def test_public_ip_replaces_host_candidate_addresses() -> None:
    from sfu.sdp import announce_public_ip

    answer = "a=candidate:abc 1 udp 2130706431 10.0.0.5 40001 typ host\r\na=end-of-candidates\r\n"
    assert "203.0.113.9 40001 typ host" in announce_public_ip(answer, "203.0.113.9")
    assert announce_public_ip(answer, None) == answer
