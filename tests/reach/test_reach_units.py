"""Network reach, the pure parts: host address filters, PUBLIC_IP, STUN messages, the
announce rule for several public addresses, and the settings' hand-off to local workers."""

from __future__ import annotations

import struct

import pytest

from common import reach
from common.worker_settings import load_worker_settings
from gateway.config import load_config
from gateway.placement.supervisor import Slot, Supervisor, local_worker_settings, worker_command
from sfu.sdp import announce_public_ip

# What ifaddr lists on a typical Docker host with IPv6.
INTERFACES = [
    ("lo", "127.0.0.1"),
    ("lo", "::1"),
    ("eth0", "192.0.2.10"),
    ("eth0", "2001:db8::10"),
    ("eth0", "fe80::1"),
    ("eth1", "10.1.2.3"),
    ("eth1", "169.254.9.9"),
    ("docker0", "172.17.0.1"),
    ("br-3f2a1b", "172.18.0.1"),
    ("veth12ab", "fe80::2"),
    ("cni0", "10.244.0.1"),
    ("flannel.1", "10.244.0.0"),
    ("virbr0", "192.168.122.1"),
]


def test_default_host_addresses_skip_bridges_link_local_and_loopback() -> None:
    chosen = reach.select_host_addresses(INTERFACES)
    assert chosen.addresses == ["192.0.2.10", "10.1.2.3", "2001:db8::10"]  # IPv4 first
    assert chosen.source == "interfaces"
    excluded = {address: why for _name, address, why in chosen.excluded}
    assert excluded["172.17.0.1"] == excluded["10.244.0.1"] == "container or VM bridge"
    assert excluded["192.168.122.1"] == "container or VM bridge"
    assert excluded["169.254.9.9"] == excluded["fe80::1"] == "link-local"


def test_bind_interfaces_and_bind_addresses() -> None:
    assert reach.select_host_addresses(INTERFACES, (), ["eth1"]).addresses == ["10.1.2.3"]
    # A bridge or loopback named explicitly is the operator's choice.
    named = reach.select_host_addresses(INTERFACES, (), ["docker0", "lo"])
    assert named.addresses == ["127.0.0.1", "172.17.0.1", "::1"]
    # BIND_ADDRESSES wins over everything.
    assert reach.select_host_addresses(INTERFACES, ["10.9.9.9"], ["eth1"]).addresses == [
        "10.9.9.9"
    ]
    # Nothing usable and nothing named: loopback, as before.
    only_bridges = reach.select_host_addresses([("docker0", "172.17.0.1"), ("lo", "127.0.0.1")])
    assert only_bridges.addresses == ["127.0.0.1"] and only_bridges.source == "loopback"
    unknown = reach.check_interfaces(["eth9"], INTERFACES)
    assert unknown == "BIND_INTERFACES: no interface named eth9"
    assert "no usable" in (reach.check_interfaces(["veth12ab"], INTERFACES) or "")
    assert reach.check_interfaces(["eth0"], INTERFACES) is None


def test_public_ip_list() -> None:
    assert reach.parse_public_ips("203.0.113.9") == ["203.0.113.9"]  # live-webrtc-go's form
    assert reach.parse_public_ips(" 203.0.113.9 , 2001:DB8::9,203.0.113.9") == [
        "203.0.113.9",
        "2001:db8::9",
    ]
    assert reach.parse_public_ips("") == []
    for bad in ("127.0.0.1", "fe80::1", "0.0.0.0", "300.1.1.1", "host name"):
        with pytest.raises(ValueError):
            reach.parse_public_ips(bad)
    with pytest.raises(ValueError, match="does not resolve"):
        reach.parse_public_ips("no-such-host.invalid")


def test_stun_url() -> None:
    assert reach.parse_stun_url("stun:stun.example.com:19302") == ("stun.example.com", 19302)
    assert reach.parse_stun_url("stun:192.0.2.1") == ("192.0.2.1", 3478)
    assert reach.parse_stun_url("stun:[2001:db8::1]:3479") == ("2001:db8::1", 3479)
    for bad in ("turn:x:1", "stun:", "stun:x:0", "stun:x:99999", "stun:[::1", "x"):
        with pytest.raises(ValueError):
            reach.parse_stun_url(bad)


def binding_success(tid: bytes, address: str, port: int, xor: bool = True) -> bytes:
    """What a STUN server answers (RFC 8489), written independently of common/reach.py."""
    import ipaddress

    raw = ipaddress.ip_address(address).packed
    family = 1 if len(raw) == 4 else 2
    if xor:
        mask = struct.pack("!I", 0x2112A442) + tid
        raw = bytes(a ^ b for a, b in zip(raw, mask, strict=False))
        port ^= 0x2112
    value = struct.pack("!BBH", 0, family, port) + raw
    attr = struct.pack("!HH", 0x0020 if xor else 0x0001, len(value)) + value
    software = struct.pack("!HH", 0x8022, 5) + b"tests\x00\x00\x00"  # padded attribute first
    body = software + attr
    return struct.pack("!HHI", 0x0101, len(body), 0x2112A442) + tid + body


def test_stun_binding_messages() -> None:
    tid = bytes(range(12))
    request = reach.binding_request(tid)
    assert len(request) == 20 and request[:2] == b"\x00\x01" and request[8:] == tid
    assert reach.parse_binding_response(binding_success(tid, "203.0.113.7", 50000), tid) == (
        "203.0.113.7",
        50000,
    )
    answer = binding_success(tid, "2001:db8::7", 3478)
    assert reach.parse_binding_response(answer, tid) == ("2001:db8::7", 3478)
    plain = binding_success(tid, "198.51.100.1", 1234, xor=False)
    assert reach.parse_binding_response(plain, tid) == ("198.51.100.1", 1234)
    good = binding_success(tid, "203.0.113.7", 50000)
    bad_inputs = [
        b"",
        good[:19],
        good[:-2],  # truncated attribute
        good[:4] + b"\x00\x00\x00\x00" + good[8:],  # no magic cookie
        good[:8] + bytes(12) + good[20:],  # another transaction
        b"\x01\x11" + good[2:],  # an error response
        struct.pack("!HHI", 0x0101, 0, 0x2112A442) + tid,  # no address
    ]
    for data in bad_inputs:
        with pytest.raises(ValueError):
            reach.parse_binding_response(data, tid)


def test_discovered_address_and_the_warning() -> None:
    hosts = ["10.0.0.5"]
    seen = reach.Discovery("stun:s:1", "203.0.113.7", 8189, 8189)
    assert reach.with_discovered([], hosts, seen) == ["203.0.113.7"]
    assert reach.with_discovered(["198.51.100.1"], hosts, seen) == ["198.51.100.1"]
    assert reach.with_discovered(["2001:db8::1"], hosts, seen) == ["2001:db8::1", "203.0.113.7"]
    assert reach.with_discovered([], ["203.0.113.7"], seen) == []  # a public host
    assert reach.discovery_warning(["203.0.113.7"], hosts, seen) is None
    warning = reach.discovery_warning(["198.51.100.1"], hosts, seen)
    assert warning is not None and "set PUBLIC_IP=203.0.113.7" in warning
    failed = reach.Discovery("stun:s:1", None, error="no answer within 3 s")
    assert "not checked" in (reach.discovery_warning([], hosts, failed) or "")
    assert reach.port_warning(seen, 8189, 2) is None
    moved = reach.Discovery("stun:s:1", "203.0.113.7", 61000, 8189)
    assert "8189-8190 is forwarded" in (reach.port_warning(moved, 8189, 2) or "")


ANSWER = (
    "v=0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "a=mid:0\r\n"
    "a=candidate:f1 1 tcp 1518214911 10.0.0.5 8289 typ host tcptype passive\r\n"
    "a=candidate:f2 1 udp 2130706431 10.0.0.5 8189 typ host\r\n"
    "a=candidate:f3 1 udp 2130706175 2001:db8::5 8189 typ host\r\n"
    "a=end-of-candidates\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=mid:1\r\n"
    "a=candidate:f2 1 udp 2130706431 10.0.0.5 8189 typ host\r\n"
)


def _candidates(sdp: str, section: int) -> list[list[str]]:
    sections = sdp.split("m=")[1:]
    return [
        line.split()
        for line in sections[section].splitlines()
        if line.startswith("a=candidate:")
    ]


def test_announce_several_public_addresses() -> None:
    out = announce_public_ip(ANSWER, ["203.0.113.7", "2001:db8:ffff::7"])
    first = _candidates(out, 0)
    # (transport, address, port) in order: public UDP first (ffmpeg takes the first), then
    # public TCP, then the answer's own, UDP first.
    assert [(c[2], c[4], c[5]) for c in first] == [
        ("udp", "203.0.113.7", "8189"),
        ("udp", "2001:db8:ffff::7", "8189"),
        ("tcp", "203.0.113.7", "8289"),
        ("udp", "10.0.0.5", "8189"),
        ("udp", "2001:db8::5", "8189"),
        ("tcp", "10.0.0.5", "8289"),
    ]
    priorities = [int(c[3]) for c in first]
    udp = [p for c, p in zip(first, priorities, strict=True) if c[2] == "udp"]
    assert udp == sorted(udp, reverse=True) and len(set(priorities)) == len(priorities)
    assert first[0][3] == "2130706431"  # the public address keeps the host priority
    assert first[0][0] != first[3][0]  # a foundation of its own
    assert all(c[6:8] == ["typ", "host"] for c in first)
    assert first[2][8:] == ["tcptype", "passive"]
    assert "a=end-of-candidates" in out.split("m=")[1]
    assert [c[4] for c in _candidates(out, 1)] == ["203.0.113.7", "10.0.0.5"]
    # Only IPv4 given: the IPv6 host candidate gets no public twin.
    v4 = [c[4] for c in _candidates(announce_public_ip(ANSWER, "203.0.113.7"), 0)]
    assert v4 == ["203.0.113.7", "203.0.113.7", "10.0.0.5", "2001:db8::5", "10.0.0.5"]
    assert announce_public_ip(ANSWER, None) == ANSWER
    assert announce_public_ip(ANSWER, []) == ANSWER
    assert reach.announced_addresses(["10.0.0.5", "2001:db8::5"], ["2001:db8:ffff::7"]) == [
        "2001:db8:ffff::7",
        "10.0.0.5",
        "2001:db8::5",
    ]


def test_local_workers_get_their_mux_ports_and_the_public_addresses() -> None:
    config = load_config(
        ["--workers", "3"],
        environ={
            "UDP_MUX_PORT": "8189",
            "TCP_MUX_PORT": "8443",
            "PUBLIC_IP": "203.0.113.7,2001:db8::7",
            "BIND_ADDRESSES": "127.0.0.1",
            "STUN_DISCOVER": "stun:127.0.0.1:3478",
        },
    )
    supervisor = Supervisor(config, "ipc:///tmp/x/gateway.sock", lambda _w, _p: None)
    slot = supervisor.slots[2]
    assert (slot.udp_mux_port, slot.tcp_mux_port, slot.udp_ports) == (8191, 8445, None)
    expected = local_worker_settings(config, slot, "ipc:///tmp/x/gateway.sock", "p", ["1.2.3.4"])
    command = worker_command(config, slot, "ipc:///tmp/x/gateway.sock", "p", ["1.2.3.4"])
    parsed = load_worker_settings(command[3:], environ={})
    assert parsed == expected
    assert parsed.udp_mux_port == 8191 and parsed.tcp_mux_port == 8445
    assert parsed.public_ip == ["1.2.3.4"] and parsed.stun_discover == ""  # asked once, above
    default = local_worker_settings(config, Slot(0, None), "ipc:///x", "p")
    assert default.public_ip == ["203.0.113.7", "2001:db8::7"]
