"""Network reach: where a worker gathers ICE candidates, what it announces, and the check.

Both programs use it (docs/networking.md explains the settings):

* host addresses (`select_host_addresses`, pure): BIND_ADDRESSES wins; else the addresses of
  BIND_INTERFACES, or of every interface but container bridges (docker*, br-*, veth*, cni*,
  flannel*, virbr*); never link-local (169.254/16, fe80::/10), loopback only where an
  interface named in BIND_INTERFACES has it or nothing else is left;
* public addresses: PUBLIC_IP, a comma list of IPv4/IPv6 addresses and host names, the names
  resolved once when the settings are read (`parse_public_ips`);
* STUN_DISCOVER=stun:host:port: one STUN binding request at start (RFC 8489: a 20-byte
  request, the XOR-MAPPED-ADDRESS of the answer), never on a session's path. The gateway asks
  once for its local workers and hands them the result as a public address; a stand-alone
  worker asks for itself. A pure parser (`parse_binding_response`, ValueError on anything
  malformed) and a bounded client (`discover`: 3 tries, 3 s in all);
* the self-test (`self_test`): what would be announced, whether each media port binds, and
  whether the announced public address is the one the STUN server sees.

Standard library only, except the OS's interface list, which comes from `ifaddr` (what aioice
reads too) and is imported only when it is asked for.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# Interfaces of container and VM bridges: their addresses are unreachable from outside the
# host, and a candidate on them only costs the client a failed check (open-nvr#352).
BRIDGE_PREFIXES = ("docker", "br-", "veth", "cni", "flannel", "virbr")

STUN_BINDING_REQUEST = 0x0001
STUN_BINDING_SUCCESS = 0x0101
STUN_MAGIC_COOKIE = 0x2112A442
STUN_HEADER = struct.Struct("!HHI12s")
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
DEFAULT_STUN_PORT = 3478
# Per try; 3 tries: 3 s at most in all (plus the name lookup).
STUN_TIMEOUTS_S = (0.5, 1.0, 1.5)


# --- host addresses ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HostSelection:
    addresses: list[str]  # IPv4 first, then IPv6, each in the OS's order
    excluded: list[tuple[str, str, str]] = field(default_factory=list)  # (iface, addr, why)
    source: str = "interfaces"  # BIND_ADDRESSES, BIND_INTERFACES, interfaces, loopback


def _strip_scope(address: str) -> str:
    return address.split("%", 1)[0]


def system_interfaces() -> list[tuple[str, str]]:
    """(interface name, address) for every address of every interface, as the OS lists them."""
    import ifaddr  # noqa: PLC0415  (the one non-stdlib need of common/, taken only here)

    pairs: list[tuple[str, str]] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            pairs.append((str(adapter.nice_name), _strip_scope(address)))
    return pairs


def _exclusion(name: str, address: str, named: bool) -> str | None:
    """Why (interface, address) gives no host candidate; None when it does."""
    try:
        ip = ipaddress.ip_address(_strip_scope(address))
    except ValueError:
        return "not an IP address"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast or ip.is_unspecified:
        return "not a unicast address"
    if ip.is_loopback and not named:
        return "loopback"
    if not named and name.startswith(BRIDGE_PREFIXES):
        return "container or VM bridge"
    return None


def select_host_addresses(
    interfaces: Iterable[tuple[str, str]],
    bind_addresses: Sequence[str] = (),
    bind_interfaces: Sequence[str] = (),
) -> HostSelection:
    """The addresses to gather host candidates on (pure: `interfaces` as system_interfaces()
    returns them). BIND_ADDRESSES wins; an empty result without BIND_INTERFACES falls back to
    loopback (a host without network still serves itself); with BIND_INTERFACES it is empty,
    and the caller refuses it."""
    if bind_addresses:
        return HostSelection(list(bind_addresses), source="BIND_ADDRESSES")
    wanted = set(bind_interfaces)
    chosen: list[str] = []
    excluded: list[tuple[str, str, str]] = []
    for name, address in interfaces:
        if wanted and name not in wanted:
            continue
        why = _exclusion(name, address, named=bool(wanted))
        if why is not None:
            if why != "loopback":  # every host has one: not worth a line
                excluded.append((name, address, why))
            continue
        text = str(ipaddress.ip_address(_strip_scope(address)))
        if text not in chosen:
            chosen.append(text)
    chosen.sort(key=lambda a: ":" in a)  # stable: IPv4 first (ffmpeg takes the first)
    if wanted:
        return HostSelection(chosen, excluded, "BIND_INTERFACES")
    if not chosen:
        return HostSelection(["127.0.0.1"], excluded, "loopback")
    return HostSelection(chosen, excluded, "interfaces")


def check_interfaces(names: Sequence[str], interfaces: Iterable[tuple[str, str]]) -> str | None:
    """The complaint about BIND_INTERFACES (an unknown name, or no usable address); None when
    it is fine."""
    pairs = list(interfaces)
    known = {name for name, _ in pairs}
    unknown = [name for name in names if name not in known]
    if unknown:
        return f"BIND_INTERFACES: no interface named {', '.join(unknown)}"
    if names and not select_host_addresses(pairs, (), names).addresses:
        return f"BIND_INTERFACES={','.join(names)}: no usable (non link-local) address"
    return None


# --- public addresses -------------------------------------------------------------------------


def _public_address(raw: str) -> str:
    ip = ipaddress.ip_address(raw)
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        raise ValueError(f"{raw} cannot be a public address")
    return str(ip)


def parse_public_ips(raw: str) -> list[str]:
    """PUBLIC_IP: '203.0.113.9', '203.0.113.9,2001:db8::9' or 'media.example.com' (a name is
    resolved now, once: its first IPv4 and first IPv6 address). Raises ValueError."""
    found: list[str] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        try:
            addresses = [_public_address(part)]
        except ValueError as exc:
            if not _looks_like_name(part):
                raise ValueError(str(exc)) from None
            addresses = resolve_name(part)
        found += [a for a in addresses if a not in found]
    return found


def _looks_like_name(text: str) -> bool:
    return all(c.isalnum() or c in "-." for c in text) and not text.replace(".", "").isdigit()


def resolve_name(name: str) -> list[str]:
    """The first IPv4 and the first IPv6 address of `name`; ValueError if it has none."""
    try:
        infos = socket.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(f"{name!r} does not resolve ({exc})") from None
    by_family: dict[int, str] = {}
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and family not in by_family:
            by_family[family] = _public_address(_strip_scope(str(sockaddr[0])))
    if not by_family:
        raise ValueError(f"{name!r} has no IPv4 or IPv6 address")
    return [by_family[f] for f in (socket.AF_INET, socket.AF_INET6) if f in by_family]


def announced_addresses(host_addresses: Sequence[str], public_ips: Sequence[str]) -> list[str]:
    """What the answer's host candidates carry, in order: each family's public addresses
    replace nothing, they come first; the host addresses follow (a client on the same LAN
    still reaches them). The same rule as sfu/sdp.py `announce_public_ip`."""
    out: list[str] = []
    for host in host_addresses:
        v6 = ":" in host
        out += [p for p in public_ips if (":" in p) == v6 and p not in out]
    return out + [h for h in host_addresses if h not in out]


# --- STUN -------------------------------------------------------------------------------------


def parse_stun_url(raw: str) -> tuple[str, int]:
    """'stun:host[:port]' or 'stun:[v6]:port' -> (host, port). Raises ValueError."""
    scheme, sep, rest = raw.strip().partition(":")
    if not sep or scheme.lower() != "stun" or not rest or "?" in rest or "/" in rest:
        raise ValueError("expected stun:HOST:PORT, e.g. stun:stun.l.google.com:19302")
    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError("expected stun:[IPv6]:PORT")
        port_text = tail[1:]
        ipaddress.IPv6Address(host)
    else:
        host, _, port_text = rest.partition(":")
    if not host:
        raise ValueError("expected stun:HOST:PORT")
    port = int(port_text) if port_text else DEFAULT_STUN_PORT
    if not 1 <= port <= 65535:
        raise ValueError("port must be between 1 and 65535")
    return host, port


def parse_stun_discover(raw: str) -> str:
    """STUN_DISCOVER's parser: '' or a stun: URL, checked."""
    text = raw.strip()
    if text:
        parse_stun_url(text)
    return text


def binding_request(transaction_id: bytes) -> bytes:
    """A STUN binding request without attributes (RFC 8489 §6)."""
    if len(transaction_id) != 12:
        raise ValueError("a transaction id is 12 bytes")
    return STUN_HEADER.pack(STUN_BINDING_REQUEST, 0, STUN_MAGIC_COOKIE, transaction_id)


def parse_binding_response(data: bytes, transaction_id: bytes) -> tuple[str, int]:
    """The (address, port) a binding success response maps us to. Raises ValueError for
    anything else: another message, another transaction, a truncated or odd attribute."""
    if len(data) < STUN_HEADER.size:
        raise ValueError("shorter than a STUN header")
    kind, length, cookie, tid = STUN_HEADER.unpack_from(data)
    if cookie != STUN_MAGIC_COOKIE or kind & 0xC000:
        raise ValueError("not a STUN message")
    if tid != transaction_id:
        raise ValueError("another transaction")
    if kind != STUN_BINDING_SUCCESS:
        raise ValueError(f"not a binding success response (type 0x{kind:04x})")
    if length % 4 or STUN_HEADER.size + length > len(data):
        raise ValueError("bad message length")
    end = STUN_HEADER.size + length
    offset = STUN_HEADER.size
    mapped: tuple[str, int] | None = None
    while offset + 4 <= end:
        attr_type, attr_length = struct.unpack_from("!HH", data, offset)
        value = data[offset + 4 : offset + 4 + attr_length]
        if len(value) != attr_length:
            raise ValueError("truncated attribute")
        if attr_type == ATTR_XOR_MAPPED_ADDRESS:
            return _address(value, xor=STUN_HEADER.pack(0, 0, STUN_MAGIC_COOKIE, tid)[4:])
        if attr_type == ATTR_MAPPED_ADDRESS and mapped is None:
            mapped = _address(value, xor=None)
        offset += 4 + attr_length + (-attr_length % 4)
    if mapped is None:
        raise ValueError("no (XOR-)MAPPED-ADDRESS attribute")
    return mapped


def _address(value: bytes, xor: bytes | None) -> tuple[str, int]:
    if len(value) < 4:
        raise ValueError("truncated address attribute")
    family, port = value[1], struct.unpack_from("!H", value, 2)[0]
    size = {1: 4, 2: 16}.get(family)
    if size is None or len(value) != 4 + size:
        raise ValueError("bad address family or length")
    raw = value[4:]
    if xor is not None:
        port ^= STUN_MAGIC_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, xor, strict=False))
    return str(ipaddress.ip_address(raw)), port


@dataclass(frozen=True)
class Discovery:
    url: str
    address: str | None  # what the STUN server sees; None when it did not answer
    port: int | None = None
    local_port: int | None = None  # the port the request left from
    error: str = ""


def discover(
    url: str, local_port: int = 0, timeouts: Sequence[float] = STUN_TIMEOUTS_S
) -> Discovery:
    """Ask the STUN server at `url` which address it sees (blocking; at most sum(timeouts)
    plus the name lookup). Failure is a Discovery with an error, never an exception."""
    try:
        host, port = parse_stun_url(url)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (ValueError, OSError, UnicodeError) as exc:
        return Discovery(url, None, error=f"cannot resolve the STUN server: {exc}")
    family, _type, _proto, _name, server = infos[0]
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        return Discovery(url, None, error=str(exc))
    with sock:
        try:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", local_port))
            bound = sock.getsockname()[1]
            for timeout in timeouts:
                tid = os.urandom(12)
                sock.sendto(binding_request(tid), server)
                sock.settimeout(timeout)
                try:
                    while True:  # ends with an answer or socket.timeout
                        data, _ = sock.recvfrom(2048)
                        try:
                            address, mapped_port = parse_binding_response(data, tid)
                        except ValueError:
                            continue  # a stray or stale datagram: keep waiting
                        return Discovery(url, address, mapped_port, bound)
                except TimeoutError:
                    continue
        except OSError as exc:
            return Discovery(url, None, error=f"{exc.strerror or exc}")
    return Discovery(url, None, error=f"no answer within {sum(timeouts):g} s")


def discover_from(url: str, udp_mux_port: int | None) -> Discovery:
    """`discover` from UDP_MUX_PORT (worker 0's port) when there is one and it is free, so
    that the answer also shows whether the NAT keeps the port; else from any port."""
    if udp_mux_port is not None:
        found = discover(url, local_port=udp_mux_port)
        if found.address is not None or found.error.startswith(("no answer", "cannot")):
            return found
    return discover(url)


def with_discovered(
    public_ips: Sequence[str], host_addresses: Sequence[str], found: Discovery | None
) -> list[str]:
    """The public addresses to announce: PUBLIC_IP, and the discovered address where PUBLIC_IP
    has none of its family and it is not one of the host's own (a host with a public
    address needs none)."""
    if found is None or found.address is None:
        return list(public_ips)
    v6 = ":" in found.address
    if found.address in host_addresses or any((":" in p) == v6 for p in public_ips):
        return list(public_ips)
    return [*public_ips, found.address]


def discovery_warning(
    public_ips: Sequence[str], host_addresses: Sequence[str], found: Discovery
) -> str | None:
    """A warning naming the setting to change, when what is announced is not what the STUN
    server sees; None when they agree (or nothing was discovered)."""
    if found.address is None:
        return f"STUN_DISCOVER={found.url}: {found.error}; the public address is not checked"
    if found.address in public_ips or found.address in host_addresses:
        return None
    v6 = ":" in found.address
    same_family = [p for p in public_ips if (":" in p) == v6]
    if same_family:
        return (
            f"PUBLIC_IP={','.join(public_ips)} but {found.url} sees this host as "
            f"{found.address}: set PUBLIC_IP={found.address}"
        )
    return None


def port_warning(found: Discovery, udp_mux_port: int | None, workers: int) -> str | None:
    """A warning when the request left from UDP_MUX_PORT and the NAT mapped it to another
    port: clients reach the workers only through a port forward then."""
    if udp_mux_port is None or found.address is None or found.local_port != udp_mux_port:
        return None
    if found.port == udp_mux_port:
        return None
    span = _port_span(udp_mux_port, workers)
    return (
        f"the NAT maps UDP port {udp_mux_port} to {found.port} ({found.url}): clients reach "
        f"the workers only if UDP {span} is forwarded to this host unchanged (UDP_MUX_PORT)"
    )


# --- ports, the summary and the self-test -----------------------------------------------------


@dataclass(frozen=True)
class MediaPorts:
    """Which ports the local workers use: a mux port each, or a range, or the OS's choice."""

    workers: int
    udp_mux_port: int | None = None  # base: worker k listens on base + k
    tcp_mux_port: int | None = None
    udp_ports: tuple[int, int] | None = None

    def udp_text(self) -> str:
        if self.udp_mux_port is not None:
            return _port_span(self.udp_mux_port, self.workers) + " (UDP_MUX_PORT)"
        if self.udp_ports is not None:
            return f"{self.udp_ports[0]}-{self.udp_ports[1]} (UDP_PORTS, a port per session)"
        return "chosen by the OS per session (set UDP_MUX_PORT or UDP_PORTS)"

    def tcp_text(self) -> str:
        if self.tcp_mux_port is None:
            return "off (TCP_MUX_PORT)"
        return _port_span(self.tcp_mux_port, self.workers) + " (TCP_MUX_PORT)"


def _port_span(base: int, workers: int) -> str:
    return str(base) if workers <= 1 else f"{base}-{base + workers - 1}"


def public_source(configured: Sequence[str], announced: Sequence[str]) -> str:
    """Which setting the announced public addresses come from, for the summary line."""
    if not configured:
        return "STUN_DISCOVER"
    return "PUBLIC_IP" if list(announced) == list(configured) else "PUBLIC_IP, STUN_DISCOVER"


def summary_line(
    host: HostSelection, public_ips: Sequence[str], ports: MediaPorts, public_source: str
) -> str:
    """The one start-up log line: what clients are told and where media arrives."""
    announced = announced_addresses(host.addresses, public_ips)
    public = f"public {','.join(public_ips)} ({public_source}); " if public_ips else ""
    return (
        f"media: announcing {', '.join(announced)}; {public}"
        f"host addresses {','.join(host.addresses)} ({host.source}); "
        f"udp {ports.udp_text()}; tcp {ports.tcp_text()}"
    )


def probe(protocol: str, address: str, port: int) -> str | None:
    """Whether `port` can be bound on `address`; None if so, else why not."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    try:
        with socket.socket(family, kind) as sock:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(1)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return "in use"
        return exc.strerror or str(exc)
    return None


def _free_in_range(address: str, low: int, high: int) -> int:
    return sum(1 for port in range(low, high + 1) if probe("udp", address, port) is None)


@dataclass
class SelfTest:
    lines: list[str] = field(default_factory=list)
    failed: bool = False

    def ok(self, text: str) -> None:
        self.lines.append(f"ok       {text}")

    def info(self, text: str) -> None:
        self.lines.append(f"         {text}")

    def warn(self, text: str) -> None:
        self.lines.append(f"WARNING  {text}")

    def fail(self, text: str) -> None:
        self.lines.append(f"FAIL     {text}")
        self.failed = True


def self_test(
    host: HostSelection,
    public_ips: Sequence[str],
    ports: MediaPorts,
    found: Discovery | None,
) -> SelfTest:
    """What would be announced, whether every media port binds on every host address, and
    whether the announced address is the discovered one. `failed`: a port cannot be bound or
    an announced address is wrong (exit 1)."""
    test = SelfTest()
    for iface, address, reason in host.excluded:
        test.info(f"not gathering on {iface} {address} ({reason})")
    test.info(f"host addresses: {', '.join(host.addresses)} ({host.source})")
    if not host.addresses:
        test.fail("no host address to gather on (BIND_INTERFACES, BIND_ADDRESSES)")
    effective = with_discovered(public_ips, host.addresses, found)
    if public_ips:
        test.info(f"public addresses: {', '.join(public_ips)} (PUBLIC_IP)")
    elif effective:
        test.info(f"public addresses: {', '.join(effective)} (discovered by STUN_DISCOVER)")
    announced = announced_addresses(host.addresses, effective)
    test.info(f"announced in candidates: {', '.join(announced)}")
    if all(ipaddress.ip_address(a).is_loopback for a in announced):
        test.warn("only loopback is announced: no other host can reach the media")
    for k in range(ports.workers):
        for protocol, base in (("udp", ports.udp_mux_port), ("tcp", ports.tcp_mux_port)):
            if base is None:
                continue
            setting = "UDP_MUX_PORT" if protocol == "udp" else "TCP_MUX_PORT"
            for address in host.addresses:
                why = probe(protocol, address, base + k)
                where = f"worker {k}: {protocol} {_join(address, base + k)}"
                if why is None:
                    test.ok(f"{where} can be bound")
                else:
                    test.fail(f"{where} cannot be bound: {why} ({setting})")
    if ports.udp_mux_port is None and ports.udp_ports is not None:
        low, high = ports.udp_ports
        for address in host.addresses:
            free = _free_in_range(address, low, high)
            text = f"udp {address} ports {low}-{high}: {free} of {high - low + 1} free"
            if free:
                test.ok(text)
            else:
                test.fail(text + " (UDP_PORTS)")
    elif ports.udp_mux_port is None:
        test.info("udp ports: chosen by the OS per session (UDP_MUX_PORT for one per worker)")
    if ports.tcp_mux_port is None:
        test.info("ICE-TCP: off (TCP_MUX_PORT)")
    if found is not None:
        warning = discovery_warning(public_ips, host.addresses, found)
        if found.address is None:
            test.warn(warning or "")
        elif warning is None:
            test.ok(f"{found.url} sees this host as {found.address}: it is announced")
        else:
            test.warn(warning)
            test.failed = True
        moved = port_warning(found, ports.udp_mux_port, ports.workers)
        if moved is not None:
            test.warn(moved)
    return test


def check_and_print(
    title: str,
    bind_addresses: Sequence[str],
    bind_interfaces: Sequence[str],
    public_ips: Sequence[str],
    stun_discover: str,
    ports: MediaPorts,
) -> int:
    """The self-test of both programs (`--self-test`): prints its lines on stdout and
    returns the exit code: 0 fine, 1 a port cannot be bound or an address is wrong."""
    host = select_host_addresses(system_interfaces(), bind_addresses, bind_interfaces)
    found = discover_from(stun_discover, ports.udp_mux_port) if stun_discover else None
    test = self_test(host, public_ips, ports, found)
    lines = [title, *test.lines, "result: FAILED" if test.failed else "result: ok"]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return 1 if test.failed else 0


def _join(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
