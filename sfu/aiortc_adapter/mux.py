"""One UDP port and one TCP port per worker for every ICE session (aioice has neither).

aioice gives each session its own UDP socket per host address: it asks the loop for
`create_datagram_endpoint(lambda: StunProtocol(connection), local_addr=(ip, 0))`. With a mux,
that one call on the worker's loop is answered with a *virtual* datagram transport over a
socket all sessions share, so the rest of aioice and aiortc run unchanged.

Demultiplexing (UDP), per datagram:
* a known remote address goes straight to its session's StunProtocol: one dict lookup;
* an unknown address is only admitted by a STUN Binding request whose USERNAME names a
  session's local ufrag *and* whose MESSAGE-INTEGRITY verifies with that session's password
  (so a forged request cannot steal a route), or by a STUN response to a request the session
  sent (matched by transaction id). Everything else is dropped and counted.
A session may be reached from several addresses (a NAT rebinding, or a second network): each
new one must pass the same check. Two sessions behind one NAT address differ by port.

ICE-TCP (RFC 6544 passive candidates, RFC 4571 framing): a TCP listener per host address.
Each session announces a passive TCP host candidate, at a lower priority than UDP so that
UDP wins where it works. An accepted connection must open with an authenticated Binding
request for a session; it then becomes one more StunProtocol of that session, whose
transport frames what aioice sends. A slow TCP peer never blocks the fan-out: beyond a
bounded write buffer, packets for it are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aioice.ice
from aioice import stun
from aioice.candidate import Candidate, candidate_foundation

from sfu.aiortc_adapter.versions import PARSE_ERRORS

log = logging.getLogger(__name__)

Address = tuple[Any, ...]

# A session reached from more addresses than this loses its oldest route (NAT rebindings
# over a long session; a peer cannot make the table grow without bound).
MAX_ROUTES_PER_SESSION = 8
# Outstanding STUN requests the mux remembers to route responses from new addresses.
MAX_PENDING_TRANSACTIONS = 4096
# A TCP connection must authenticate within this time, and unauthenticated ones are capped.
TCP_FIRST_REQUEST_TIMEOUT_S = 5.0
MAX_UNAUTHENTICATED_TCP = 256
# Bytes queued for one TCP peer before its packets are dropped instead (about 0.5 s of a
# 4 Mbit/s stream: enough for a burst, not a standing queue that adds latency).
TCP_WRITE_LIMIT = 256 * 1024
# RFC 6544 §4.2: passive direction preference 4; a type preference below every UDP type
# (host 126, prflx 110, srflx 100) so a pair over UDP always outranks one over TCP.
TCP_TYPE_PREFERENCE = 90
TCP_LOCAL_PREFERENCE = (4 << 13) | 8191


@dataclass(frozen=True)
class MuxBinding:
    """One socket the mux listens on: what the self-test reports and candidates announce."""

    protocol: Literal["udp", "tcp"]
    address: str
    port: int


class MuxCounters:
    """Datagrams and connections refused or dropped, by reason, and the sessions moved and
    routes forgotten (cumulative)."""

    __slots__ = (
        "unknown_address",
        "unknown_username",
        "bad_integrity",
        "malformed_stun",
        "routes_evicted",
        "rebindings",
        "tcp_refused",
        "tcp_send_dropped",
    )

    def __init__(self) -> None:
        self.unknown_address = 0  # not STUN, from an address no session was reached from
        self.unknown_username = 0  # a Binding request for no session of this worker
        self.bad_integrity = 0  # a Binding request for a session, with the wrong password
        self.malformed_stun = 0
        self.routes_evicted = 0
        self.rebindings = 0  # sessions moved to a client's new address (NAT rebinding)
        self.tcp_refused = 0  # connections closed before they authenticated
        self.tcp_send_dropped = 0  # packets not queued for a TCP peer that is too slow

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


# --- sessions ----------------------------------------------------------------------------


class _Sessions:
    """The ICE sessions reachable on one host address, by local ufrag."""

    def __init__(self) -> None:
        # ufrags are 4 random characters (aioice): collisions happen among thousands of
        # sessions, so each ufrag maps to a list and the password picks the session.
        self.by_ufrag: dict[str, list[aioice.ice.StunProtocol]] = {}

    def add(self, ufrag: str, protocol: aioice.ice.StunProtocol) -> None:
        self.by_ufrag.setdefault(ufrag, []).append(protocol)

    def remove(self, ufrag: str, protocol: aioice.ice.StunProtocol) -> None:
        protocols = self.by_ufrag.get(ufrag)
        if protocols is not None and protocol in protocols:
            protocols.remove(protocol)
            if not protocols:
                del self.by_ufrag[ufrag]

    def authenticate(
        self, message: stun.Message, counters: MuxCounters
    ) -> aioice.ice.StunProtocol | None:
        """The session an authenticated Binding request is for, or None (counted)."""
        username = message.attributes.get("USERNAME")
        if not isinstance(username, str):
            counters.unknown_username += 1
            return None
        candidates = self.by_ufrag.get(username.partition(":")[0])
        if not candidates:
            counters.unknown_username += 1
            return None
        for protocol in candidates:
            password = protocol.receiver.local_password.encode("utf8")
            try:
                if message.check_message_integrity(password):
                    return protocol
            except PARSE_ERRORS:
                break
        counters.bad_integrity += 1
        return None


def _parse_stun(data: bytes, counters: MuxCounters) -> stun.Message | None:
    # RFC 7983: STUN starts with 0-3 and has a 20-byte header; anything else is media.
    if len(data) < 20 or data[0] > 3:
        return None
    try:
        return stun.parse_message(data)
    except PARSE_ERRORS:
        counters.malformed_stun += 1
        return None


# --- UDP ---------------------------------------------------------------------------------


class UdpMuxSocket(asyncio.DatagramProtocol):
    """The one UDP socket of a host address, shared by every session of the worker."""

    def __init__(self, address: str, counters: MuxCounters) -> None:
        self.address = address
        self.port = 0
        self.counters = counters
        self.sessions = _Sessions()
        self.transport: asyncio.DatagramTransport | None = None
        # The TCP listener of the same address: a session leaves both when its UDP closes.
        self.tcp_partner: TcpMuxListener | None = None
        # Told when a session moved to a client's new address (IceMux.on_rebinding).
        self.on_rebinding: RebindingHandler | None = None
        self._routes: dict[Address, aioice.ice.StunProtocol] = {}
        self._routes_of: dict[aioice.ice.StunProtocol, list[Address]] = {}
        self._transactions: dict[bytes, aioice.ice.StunProtocol] = {}

    # asyncio.DatagramProtocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's
        self.port = transport.get_extra_info("sockname")[1]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        protocol = self._routes.get(addr)
        if protocol is not None:
            protocol.datagram_received(data, addr)
            return
        self._first_contact(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (a viewer gone) are per destination; the shared socket carries on.
        pass

    # routing

    def _first_contact(self, data: bytes, addr: Address) -> None:
        message = _parse_stun(data, self.counters)
        if message is None:
            self.counters.unknown_address += 1
            return
        if message.message_class == stun.Class.REQUEST:
            protocol = self.sessions.authenticate(message, self.counters)
            if protocol is None:
                return
            self._add_route(addr, protocol)
            if "USE-CANDIDATE" not in message.attributes:
                # (A nomination moves the session through aioice itself: an ICE restart.)
                follow_rebinding(protocol, (addr[0], addr[1]), self.counters, self.on_rebinding)
        else:
            found = self._transactions.pop(message.transaction_id, None)
            if found is None:
                self.counters.unknown_address += 1
                return
            protocol = found
        protocol.datagram_received(data, addr)

    def _add_route(self, addr: Address, protocol: aioice.ice.StunProtocol) -> None:
        routes = self._routes_of.setdefault(protocol, [])
        if len(routes) >= MAX_ROUTES_PER_SESSION:
            self._routes.pop(routes.pop(0), None)
            self.counters.routes_evicted += 1
        routes.append(addr)
        self._routes[addr] = protocol

    def remember_request(self, transaction_id: bytes, protocol: aioice.ice.StunProtocol) -> None:
        if len(self._transactions) >= MAX_PENDING_TRANSACTIONS:
            del self._transactions[next(iter(self._transactions))]
        self._transactions[transaction_id] = protocol

    # sessions

    def attach(self, protocol: aioice.ice.StunProtocol) -> None:
        self.sessions.add(protocol.receiver.local_username, protocol)
        protocol.connection_made(_SharedDatagramTransport(self, protocol))
        original_send_stun = protocol.send_stun

        def send_stun(message: stun.Message, addr: tuple[str, int]) -> None:
            # Responses to our own checks may come from an address not routed yet.
            if message.message_class == stun.Class.REQUEST:
                self.remember_request(message.transaction_id, protocol)
            original_send_stun(message, addr)

        protocol.send_stun = send_stun  # type: ignore[method-assign]  # instance seam

    def detach(self, protocol: aioice.ice.StunProtocol) -> None:
        self.sessions.remove(protocol.receiver.local_username, protocol)
        if self.tcp_partner is not None:
            self.tcp_partner.sessions.remove(protocol.receiver.local_username, protocol)
        for addr in self._routes_of.pop(protocol, ()):
            if self._routes.get(addr) is protocol:
                del self._routes[addr]
        stale = [tid for tid, p in self._transactions.items() if p is protocol]
        for transaction_id in stale:
            del self._transactions[transaction_id]

    @property
    def route_count(self) -> int:
        return len(self._routes)


# Sessions whose possible NAT rebinding is being checked (one check at a time each).
_following: set[aioice.ice.Connection] = set()
# How long the client's new pair may take to pass aioice's triggered check.
REBINDING_CHECK_S = 2.0


RebindingHandler = Callable[[aioice.ice.Connection], None]


def follow_rebinding(
    protocol: aioice.ice.StunProtocol,
    addr: tuple[str, int],
    counters: MuxCounters,
    notify: RebindingHandler | None = None,
) -> None:
    """A connected session was reached, authenticated, from a new address: if the address
    in use is dead (a NAT rebinding: the client's mapping changed, the client does not know),
    move the session to the new one.

    aioice, as the controlled agent, only switches pairs when the client nominates again,
    which a client that does not know its mapping changed never does; so media would keep
    going to the dead address until consent expires (30 s). The old address gets one
    consent check of its own first: if it still answers, the new address is a second path
    (a backup the client keeps alive), not a rebinding, and nothing changes.
    """
    connection: aioice.ice.Connection = protocol.receiver
    in_use = connection._nominated.get(protocol.local_candidate.component)
    if in_use is None or in_use.remote_addr == addr or connection in _following:
        return
    _following.add(connection)
    task = asyncio.ensure_future(_follow(connection, protocol, in_use, addr, counters, notify))
    task.add_done_callback(lambda _task: _following.discard(connection))


async def _follow(
    connection: aioice.ice.Connection,
    protocol: aioice.ice.StunProtocol,
    in_use: aioice.ice.CandidatePair,
    addr: tuple[str, int],
    counters: MuxCounters,
    notify: RebindingHandler | None,
) -> None:
    password = connection.remote_password
    if password is None:
        return
    try:
        await in_use.protocol.request(
            connection.build_request(in_use, nominate=False),
            in_use.remote_addr,
            integrity_key=password.encode("utf8"),
            retransmissions=0,  # one try, 0.5 s: every second without media counts
        )
        return  # the address in use answers: keep it
    except stun.TransactionError:
        pass
    except (ConnectionError, OSError):
        return  # the session is closing
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REBINDING_CHECK_S
    while loop.time() < deadline:
        pair = next(
            (p for p in connection._check_list if p.protocol is protocol and p.remote_addr == addr),
            None,
        )
        if pair is not None and pair.state == aioice.ice.CandidatePair.State.SUCCEEDED:
            component = protocol.local_candidate.component
            if connection._nominated.get(component) is in_use:
                pair.nominated = True
                connection._nominated[component] = pair
                counters.rebindings += 1
                if notify is not None:
                    notify(connection)
            return
        await asyncio.sleep(0.05)


class _SharedDatagramTransport(asyncio.DatagramTransport):
    """What one session's StunProtocol sees as its socket: the shared one, by another name.

    `sendto` is the shared socket's own bound method, so the per-packet send path (SRTP
    egress caches `pair.protocol.transport.sendto`) costs no more than with a private socket.
    """

    def __init__(self, mux: UdpMuxSocket, protocol: aioice.ice.StunProtocol) -> None:
        super().__init__()
        assert mux.transport is not None
        self._mux = mux
        self._protocol: aioice.ice.StunProtocol | None = protocol
        self.sendto = mux.transport.sendto  # type: ignore[method-assign]  # the fast path

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return (self._mux.address, self._mux.port)
        if name == "socket":
            return None  # shared: nobody may set options on it for one session
        return default

    def is_closing(self) -> bool:
        return self._protocol is None

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            return
        self._mux.detach(protocol)
        self.sendto = _closed_sendto  # type: ignore[method-assign]
        asyncio.get_running_loop().call_soon(protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


def _closed_sendto(data: Any, addr: Any = None) -> None:
    raise ConnectionError("the session's ICE transport is closed")


# --- TCP ---------------------------------------------------------------------------------


class TcpMuxListener:
    """The ICE-TCP listener of a host address: passive candidates of every session."""

    def __init__(self, address: str, counters: MuxCounters) -> None:
        self.address = address
        self.port = 0
        self.counters = counters
        self.sessions = _Sessions()
        self.server: asyncio.AbstractServer | None = None
        self.unauthenticated = 0

    def candidate(self, component: int) -> Candidate:
        priority = (TCP_TYPE_PREFERENCE << 24) + (TCP_LOCAL_PREFERENCE << 8) + (256 - component)
        return Candidate(
            foundation=candidate_foundation("host", "tcp", self.address),
            component=component,
            transport="tcp",
            priority=priority,
            host=self.address,
            port=self.port,
            type="host",
            tcptype="passive",
        )

    def new_connection(self) -> _TcpIceConnection:
        return _TcpIceConnection(self)


class _TcpIceConnection(asyncio.Protocol):
    """One accepted ICE-TCP connection, RFC 4571 framed; a StunProtocol once authenticated."""

    def __init__(self, listener: TcpMuxListener) -> None:
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._peer: Address = ()
        self._buffer = bytearray()
        self._protocol: aioice.ice.StunProtocol | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport
        peer = transport.get_extra_info("peername")
        self._peer = (peer[0], peer[1])
        listener = self._listener
        if listener.unauthenticated >= MAX_UNAUTHENTICATED_TCP:
            listener.counters.tcp_refused += 1
            transport.close()
            return
        listener.unauthenticated += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Autotuning would let the kernel queue megabytes for a slow peer: seconds of
            # latency. Bound it like our own queue; beyond both, packets are dropped.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TCP_WRITE_LIMIT)
        self._deadline = asyncio.get_running_loop().call_later(
            TCP_FIRST_REQUEST_TIMEOUT_S, self._refuse
        )

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 2:
            length = (buffer[0] << 8) | buffer[1]
            if len(buffer) < 2 + length:
                return
            frame = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            protocol = self._protocol
            if protocol is None:
                protocol = self._authenticate(frame)
                if protocol is None:
                    return
            protocol.datagram_received(frame, self._peer)

    def _authenticate(self, frame: bytes) -> aioice.ice.StunProtocol | None:
        listener = self._listener
        message = _parse_stun(frame, listener.counters)
        target = None
        if message is not None and message.message_class == stun.Class.REQUEST:
            target = listener.sessions.authenticate(message, listener.counters)
        if target is None:
            self._refuse()
            return None
        connection: aioice.ice.Connection = target.receiver
        protocol = aioice.ice.StunProtocol(connection)
        protocol.local_candidate = listener.candidate(target.local_candidate.component)
        protocol.connection_made(_FramedTransport(self, listener.counters))
        connection._protocols.append(protocol)
        self._protocol = protocol
        self._authenticated()
        return protocol

    def _authenticated(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
            self._listener.unauthenticated -= 1

    def _refuse(self) -> None:
        if self._deadline is not None:
            self._listener.counters.tcp_refused += 1
        self._authenticated()
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._authenticated()
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connection_lost(exc)

    # used by _FramedTransport

    def write_frame(self, data: bytes, addr: Address, counters: MuxCounters) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise ConnectionError("the ICE-TCP connection is closed")
        if (addr[0], addr[1]) != self._peer:
            return  # a check aimed at a signalled active candidate (port 9): not this peer
        if transport.get_write_buffer_size() > TCP_WRITE_LIMIT:
            counters.tcp_send_dropped += 1
            return
        transport.write(len(data).to_bytes(2, "big") + data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def peer(self) -> Address:
        return self._peer


class _FramedTransport(asyncio.DatagramTransport):
    """A datagram face on one ICE-TCP connection, for aioice's StunProtocol."""

    def __init__(self, connection: _TcpIceConnection, counters: MuxCounters) -> None:
        super().__init__()
        self._connection = connection
        self._counters = counters
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        self._connection.write_frame(data, addr, self._counters)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._connection.peer
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._connection.close()

    def abort(self) -> None:
        self.close()


# --- the mux -----------------------------------------------------------------------------

DatagramEndpoint = tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]


class IceMux:
    """All ICE sessions of this worker share one UDP socket (and one TCP listener) per
    host address. Built before any session; `start` binds and installs the aioice seams on
    the running loop, and raises OSError naming address and port when a bind fails."""

    def __init__(
        self, addresses: Sequence[str], udp_port: int | None, tcp_port: int | None
    ) -> None:
        self.addresses = list(addresses)
        self.udp_port = udp_port
        self.tcp_port = tcp_port
        self.bindings: list[MuxBinding] = []
        self.stats = MuxCounters()
        # Called with a session's aioice Connection when the mux moved it to the client's
        # new address (a NAT rebinding); the worker asks a keyframe for the viewer.
        self.on_rebinding: RebindingHandler | None = None
        self._udp: dict[str, UdpMuxSocket] = {}
        self._tcp: dict[str, TcpMuxListener] = {}
        # Per session (aioice Connection): the TCP listeners whose candidates it announces.
        self._tcp_of: weakref.WeakKeyDictionary[aioice.ice.Connection, list[TcpMuxListener]]
        self._tcp_of = weakref.WeakKeyDictionary()

    async def start(self, loop: asyncio.AbstractEventLoop) -> list[MuxBinding]:
        try:
            for address in self.addresses:
                if self.udp_port is not None:
                    await self._bind_udp(loop, address, self.udp_port)
                if self.tcp_port is not None:
                    await self._bind_tcp(loop, address, self.tcp_port)
        except OSError:
            self.close()
            raise
        self._install(loop)
        _started_muxes.append(self)
        return list(self.bindings)

    async def _bind_udp(self, loop: asyncio.AbstractEventLoop, address: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"cannot bind UDP {_hostport(address, port)}: {exc.strerror}"
            ) from exc
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.setblocking(False)
        mux = UdpMuxSocket(address, self.stats)
        await loop.create_datagram_endpoint(lambda: mux, sock=sock)
        self._udp[address] = mux
        self.bindings.append(MuxBinding("udp", address, mux.port))

    async def _bind_tcp(self, loop: asyncio.AbstractEventLoop, address: str, port: int) -> None:
        listener = TcpMuxListener(address, self.stats)
        try:
            server = await loop.create_server(
                listener.new_connection, host=address, port=port, reuse_address=True
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot bind TCP {_hostport(address, port)}: {exc.strerror}"
            ) from exc
        listener.server = server
        listener.port = server.sockets[0].getsockname()[1]
        self._tcp[address] = listener
        self.bindings.append(MuxBinding("tcp", address, listener.port))

    def _install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Answer aioice's per-session host socket with the shared one (the loop seam), and
        announce the TCP candidates once a session has gathered (the Connection seam)."""
        original = loop.create_datagram_endpoint
        udp = self._udp
        for mux in udp.values():
            mux.on_rebinding = self._rebound
        for address, listener in self._tcp.items():
            if address in udp:
                udp[address].tcp_partner = listener

        async def create_datagram_endpoint(
            protocol_factory: Callable[[], asyncio.DatagramProtocol],
            local_addr: tuple[str, int] | None = None,
            **kwargs: Any,
        ) -> DatagramEndpoint:
            if local_addr is None or local_addr[1] != 0 or kwargs:
                return await original(protocol_factory, local_addr=local_addr, **kwargs)
            mux = udp.get(local_addr[0])
            protocol = protocol_factory()
            if mux is None or not isinstance(protocol, aioice.ice.StunProtocol):
                return await original(lambda: protocol, local_addr=local_addr, **kwargs)
            mux.attach(protocol)
            listener = mux.tcp_partner
            if listener is not None:
                self._tcp_of.setdefault(protocol.receiver, []).append(listener)
                listener.sessions.add(protocol.receiver.local_username, protocol)
            return protocol.transport, protocol

        loop.create_datagram_endpoint = create_datagram_endpoint  # type: ignore[method-assign,assignment]  # per-loop seam
        if any(mux.tcp_partner is not None for mux in udp.values()):
            _install_tcp_candidates()

    def tcp_candidates(self, connection: aioice.ice.Connection) -> list[Candidate]:
        return [
            listener.candidate(component)
            for listener in self._tcp_of.get(connection, ())
            for component in sorted(connection._components)
        ]

    def _rebound(self, connection: aioice.ice.Connection) -> None:
        if self.on_rebinding is not None:
            self.on_rebinding(connection)

    def rekey(self, connection: aioice.ice.Connection, old_ufrag: str) -> None:
        """File `connection`'s protocols under its new local ufrag (an ICE restart)."""
        tables = [mux.sessions for mux in self._udp.values()]
        tables += [listener.sessions for listener in self._tcp.values()]
        for sessions in tables:
            for protocol in list(sessions.by_ufrag.get(old_ufrag, ())):
                if protocol.receiver is connection:
                    sessions.remove(old_ufrag, protocol)
                    sessions.add(connection.local_username, protocol)

    def counters(self) -> dict[str, int]:
        """MuxCounters as a dict: refusals and drops by reason, rebindings, evicted routes."""
        return self.stats.as_dict()

    @property
    def route_count(self) -> int:
        return sum(mux.route_count for mux in self._udp.values())

    def close(self) -> None:
        for mux in self._udp.values():
            if mux.transport is not None:
                mux.transport.close()
        for listener in self._tcp.values():
            if listener.server is not None:
                listener.server.close()
        self._udp.clear()
        self._tcp.clear()
        if self in _started_muxes:
            _started_muxes.remove(self)


# The muxes started in this process (a worker has one; tests may start several).
_started_muxes: list[IceMux] = []


def rekey_session(connection: aioice.ice.Connection, old_ufrag: str) -> None:
    """After an ICE restart gave `connection` a new local ufrag: route its new checks."""
    for mux in _started_muxes:
        mux.rekey(connection, old_ufrag)


def _install_tcp_candidates() -> None:
    """Append each muxed session's passive TCP candidates after its UDP ones (ffmpeg takes
    the first candidate). Class-level: aiortc builds the Connection inside
    setLocalDescription, before an instance could be wrapped; it only adds to connections a
    mux registered, so other peer connections in the process are untouched."""
    if getattr(aioice.ice.Connection, "_live_sfu_tcp_seam", False):
        return
    original_gather = aioice.ice.Connection.gather_candidates

    async def gather_candidates(self: aioice.ice.Connection) -> None:
        await original_gather(self)
        for mux in _started_muxes:
            self._local_candidates += mux.tcp_candidates(self)

    aioice.ice.Connection.gather_candidates = gather_candidates  # type: ignore[method-assign]
    aioice.ice.Connection._live_sfu_tcp_seam = True  # type: ignore[attr-defined]


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
