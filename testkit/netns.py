"""Hosts as Linux network namespaces, joined by veth pairs, driven by `ip` and `iptables`.

`Topology` (a context manager) builds, under names unique to the run
(`lsfu-<creator pid>-<random>-<host>`; `sweep_stale()` removes those of runs that were killed
before their teardown, at the start of every build):

    srv   10.77.0.1       the server host, on the "public" LAN (no default route: like a
                          public host, it cannot reach anybody's private addresses)
    pub   10.77.0.2       a client directly on the public LAN (its own public address)
    rtr   10.77.0.254     the clients' NAT router: ip_forward on, MASQUERADE of
          192.168.77.1    192.168.77.0/24 out of the LAN, and nothing forwarded from the LAN
                          into the private network unless it belongs to a connection from inside
    natc1 192.168.77.11   two clients behind the router: both appear as 10.77.0.254 (with
    natc2 192.168.77.12   different ports) to the server
    blk   192.168.77.20   a client behind the same router whose own firewall drops all UDP
                          (a corporate network: only TCP gets out)

With `server_nat=True` the server host is itself behind a router, as in a cloud VM with 1:1
NAT or a container with port forwards:

    srtr  10.77.0.1       holds the server's public address on the LAN, source-NATs srv to it,
          172.31.0.254    and forwards to srv everything (`server_forward_all()`, 1:1 NAT) or
                          given ports only (`server_forward_ports()`, Docker's -p)
    srv   172.31.0.1      the server host, which sees only its private address

Each LAN is a bridge inside `rtr`; veth ends are created straight inside their namespaces (no
interface ever exists in the caller's namespace), IPv6 is off (no link-local noise in ICE),
and every namespace has lo up. Deleting the namespaces removes all of it; `close()` first kills
every process still inside them (`ip netns pids`), so that none keeps a namespace alive.

`run()`/`check_output()` run commands in a host (`ip netns exec`); `firewall_server_allow_only`
closes the server host to everything but the given ports.
`start_gateway()` runs `python -m gateway` inside `srv` and waits for /readyz as seen from a
client host; `start_stun_server()` runs a STUN server (Binding only) on the public LAN.

Needs root, `ip netns` and iptables (scripts/test.sh installs it); `unavailable()` says why not.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from testkit.processes import READY_TIMEOUT, REPO, GatewayProcess, child_env

SERVER = "srv"
PUBLIC_CLIENT = "pub"
ROUTER = "rtr"
SERVER_ROUTER = "srtr"  # only with Topology(server_nat=True)
NAT_CLIENTS = ("natc1", "natc2")
UDP_BLOCKED = "blk"

LAN_PREFIX = 24
SERVER_ADDRESS = "10.77.0.1"
PUBLIC_CLIENT_ADDRESS = "10.77.0.2"
ROUTER_PUBLIC_ADDRESS = "10.77.0.254"  # what the server sees of every client behind the NAT
ROUTER_PRIVATE_ADDRESS = "192.168.77.1"
PRIVATE_NETWORK = "192.168.77.0/24"
# server_nat=True: the server host sits behind its own router, which holds SERVER_ADDRESS on
# the LAN (what clients use either way) and translates for it.
SERVER_PRIVATE_ADDRESS = "172.31.0.1"
SERVER_ROUTER_PRIVATE_ADDRESS = "172.31.0.254"
HOST_ADDRESSES = {
    SERVER: SERVER_ADDRESS,
    PUBLIC_CLIENT: PUBLIC_CLIENT_ADDRESS,
    ROUTER: ROUTER_PUBLIC_ADDRESS,
    "natc1": "192.168.77.11",
    "natc2": "192.168.77.12",
    UDP_BLOCKED: "192.168.77.20",
}
COMMAND_TIMEOUT = 30.0
KILL_GRACE = 5.0
STUN_PORT = 3478
STUN_LIFETIME = 600.0  # a STUN server exits on its own after this, should a teardown be missed

# A STUN server (RFC 5389 Binding only): answers each Binding request with the address it came
# from (XOR-MAPPED-ADDRESS) and a FINGERPRINT. argv: address, port, lifetime in seconds.
STUN_SERVER = r"""
import socket, struct, sys, time, zlib
COOKIE = 0x2112A442
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
deadline = time.monotonic() + float(sys.argv[3])
print("ready", flush=True)
while time.monotonic() < deadline:
    sock.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        data, (host, port) = sock.recvfrom(2048)
    except OSError:
        continue
    if len(data) < 20 or struct.unpack("!H", data[:2])[0] != 0x0001:
        continue
    if struct.unpack("!I", data[4:8])[0] != COOKIE:
        continue
    tid = data[8:20]
    address = struct.unpack("!I", socket.inet_aton(host))[0] ^ COOKIE
    xor = struct.pack("!HHBBHI", 0x0020, 8, 0, 1, port ^ (COOKIE >> 16), address)
    head = struct.pack("!HHI", 0x0101, len(xor) + 8, COOKIE) + tid
    crc = (zlib.crc32(head + xor) ^ 0x5354554E) & 0xFFFFFFFF
    sock.sendto(head + xor + struct.pack("!HHI", 0x8028, 4, crc), (host, port))
"""


# Deletes every conntrack entry of the namespace it runs in (ctnetlink IPCTNL_MSG_CT_DELETE
# without attributes: a flush, as `conntrack -F` does); prints the kernel's error code (0: ok).
CONNTRACK_FLUSH = r"""
import socket, struct
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
sock.settimeout(5)
body = struct.pack("!BBH", socket.AF_INET, 0, 0)  # nfgenmsg: family, NFNETLINK_V0, res_id
kind = (1 << 8) | 2  # NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_DELETE
sock.send(struct.pack("=IHHII", 16 + len(body), kind, 0x1 | 0x4, 1, 0) + body)  # REQUEST|ACK
reply = sock.recv(4096)
print(struct.unpack("=i", reply[16:20])[0] if struct.unpack("=H", reply[4:6])[0] == 2 else 0)
"""


class NetnsError(RuntimeError):
    """A command that builds or drives the topology failed; carries its argv and output."""


def unavailable() -> str | None:
    """Why network namespaces cannot be built here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"lsfu-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        nat = subprocess.run(
            ["ip", "netns", "exec", probe, "iptables", "-t", "nat", "-L", "-n"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        if nat.returncode != 0:
            return f"iptables cannot work in a namespace: {nat.stderr.strip()[-300:]}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT, input: str | None = None) -> str:
    """Run a command, check=True, raising NetnsError with its output when it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input
        )
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"timed out after {timeout:g} s: {' '.join(argv)}") from exc
    except OSError as exc:
        raise NetnsError(f"cannot run {' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise NetnsError(
            f"exit {done.returncode}: {' '.join(argv)}\n{done.stderr.strip()}{done.stdout.strip()}"
        )
    return done.stdout


def sweep_stale(prefix: str = "lsfu") -> list[str]:
    """Delete the namespaces `<prefix>-<pid>-*` whose creating process is gone (a run killed
    before its teardown), with whatever still runs in them; returns their names."""
    try:
        listed = _run(["ip", "netns", "list"])
    except NetnsError:
        return []
    swept = []
    for line in listed.splitlines():
        name = line.split(" ", 1)[0]
        parts = name.split("-")
        if len(parts) < 4 or parts[0] != prefix or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue  # its creator still runs: not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        for pid in Topology._pids(name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            _run(["ip", "netns", "del", name])
            swept.append(name)
        except NetnsError:
            pass
    return swept


@dataclass(frozen=True)
class Host:
    name: str  # srv, rtr, natc1, ...
    netns: str  # the namespace's real name, unique to this run
    address: str  # its address on its LAN


class Topology:
    """The namespaces described in the module docstring; `with Topology() as net:`."""

    def __init__(self, prefix: str = "lsfu", server_nat: bool = False) -> None:
        self.prefix = prefix
        # The creator's pid in the name: sweep_stale() can tell an aborted run's namespaces.
        self.tag = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        addresses = dict(HOST_ADDRESSES)
        self.server_nat = server_nat
        if server_nat:
            addresses[SERVER] = SERVER_PRIVATE_ADDRESS
            addresses[SERVER_ROUTER] = SERVER_ADDRESS
        self.hosts = {
            name: Host(name, f"{self.tag}-{name}", address) for name, address in addresses.items()
        }
        self._created: list[str] = []
        self._processes: list[tuple[subprocess.Popen[Any], bool]] = []  # (it, own session)

    # --- life cycle --------------------------------------------------------------------

    def __enter__(self) -> Topology:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def build(self) -> None:
        sweep_stale(self.prefix)
        for host in self.hosts.values():
            _run(["ip", "netns", "add", host.netns])
            self._created.append(host.netns)
            self._ns(host.name, "ip", "link", "set", "lo", "up")
            for key in ("all", "default"):
                self.sysctl(host.name, f"net.ipv6.conf.{key}.disable_ipv6", "1")
        # The two LANs are bridges inside the router.
        self._ns(ROUTER, "ip", "link", "add", "lan", "type", "bridge")
        self._ns(ROUTER, "ip", "link", "add", "cli", "type", "bridge")
        self._ns(ROUTER, "ip", "addr", "add", f"{ROUTER_PUBLIC_ADDRESS}/{LAN_PREFIX}", "dev", "lan")
        self._ns(ROUTER, "ip", "addr", "add", f"{ROUTER_PRIVATE_ADDRESS}/24", "dev", "cli")
        for bridge in ("lan", "cli"):
            self._ns(ROUTER, "ip", "link", "set", bridge, "up")
        if self.server_nat:
            self._build_server_router()
        else:
            self._attach(SERVER, "lan", gateway=None)
        self._attach(PUBLIC_CLIENT, "lan", gateway=None)
        for name in (*NAT_CLIENTS, UDP_BLOCKED):
            self._attach(name, "cli", gateway=ROUTER_PRIVATE_ADDRESS)
        # The NAT: masquerade the private network; from the LAN, only replies come in.
        self.sysctl(ROUTER, "net.ipv4.ip_forward", "1")
        self.iptables(
            ROUTER, "-t", "nat", "-A", "POSTROUTING", "-s", PRIVATE_NETWORK, "-o", "lan",
            "-j", "MASQUERADE",
        )  # fmt: skip
        self.iptables(ROUTER, "-P", "FORWARD", "DROP")
        self.iptables(ROUTER, "-A", "FORWARD", "-i", "cli", "-o", "lan", "-j", "ACCEPT")
        # Within one LAN (seen by iptables only where the kernel has br_netfilter loaded).
        for bridge in ("lan", "cli"):
            self.iptables(ROUTER, "-A", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT")
        self.iptables(
            ROUTER, "-A", "FORWARD", "-i", "lan", "-o", "cli", "-m", "conntrack",
            "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT",
        )  # fmt: skip
        # The UDP-blocked client: nothing UDP in or out (no DNS is needed by anything here).
        self.iptables(UDP_BLOCKED, "-A", "OUTPUT", "-p", "udp", "!", "-o", "lo", "-j", "DROP")
        self.iptables(UDP_BLOCKED, "-A", "INPUT", "-p", "udp", "!", "-i", "lo", "-j", "DROP")

    def _build_server_router(self) -> None:
        """srv behind srtr: srtr holds SERVER_ADDRESS on the LAN and source-NATs srv's traffic
        to it; what comes in for it is forwarded by server_forward_all/server_forward_ports."""
        self._attach(SERVER_ROUTER, "lan", gateway=None)
        self._ns(
            SERVER_ROUTER, "ip", "link", "add", "dmz", "type", "veth", "peer", "name", "eth0",
            "netns", self.hosts[SERVER].netns,
        )  # fmt: skip
        self._ns(
            SERVER_ROUTER, "ip", "addr", "add", f"{SERVER_ROUTER_PRIVATE_ADDRESS}/24", "dev", "dmz"
        )
        self._ns(SERVER_ROUTER, "ip", "link", "set", "dmz", "up")
        self._ns(SERVER, "ip", "addr", "add", f"{SERVER_PRIVATE_ADDRESS}/24", "dev", "eth0")
        self._ns(SERVER, "ip", "link", "set", "eth0", "up")
        self._ns(SERVER, "ip", "route", "add", "default", "via", SERVER_ROUTER_PRIVATE_ADDRESS)
        self.sysctl(SERVER_ROUTER, "net.ipv4.ip_forward", "1")
        self.iptables(
            SERVER_ROUTER, "-t", "nat", "-A", "POSTROUTING", "-s", f"{SERVER_PRIVATE_ADDRESS}/32",
            "-o", "eth0", "-j", "SNAT", "--to-source", SERVER_ADDRESS,
        )  # fmt: skip

    def server_forward_all(self) -> None:
        """1:1 NAT (a cloud VM's public address): everything for SERVER_ADDRESS goes to srv."""
        self._require_server_nat()
        self.iptables(
            SERVER_ROUTER, "-t", "nat", "-A", "PREROUTING", "-i", "eth0", "-d", SERVER_ADDRESS,
            "-j", "DNAT", "--to-destination", SERVER_PRIVATE_ADDRESS,
        )  # fmt: skip

    def server_forward_ports(self, udp_ports: range, tcp_ports: range) -> None:
        """Port forwards only (Docker's `-p`): those ports of SERVER_ADDRESS go to srv, with
        the same numbers; nothing else does."""
        self._require_server_nat()
        for proto, ports in (("udp", udp_ports), ("tcp", tcp_ports)):
            if len(ports):
                self.iptables(
                    SERVER_ROUTER, "-t", "nat", "-A", "PREROUTING", "-i", "eth0", "-d",
                    SERVER_ADDRESS, "-p", proto, "--dport", f"{ports[0]}:{ports[-1]}",
                    "-j", "DNAT", "--to-destination", SERVER_PRIVATE_ADDRESS,
                )  # fmt: skip

    def _require_server_nat(self) -> None:
        if not self.server_nat:
            raise NetnsError("the server host is not behind a router: Topology(server_nat=True)")

    def _attach(self, name: str, bridge: str, gateway: str | None) -> None:
        """A veth from host `name` (eth0) to a port of the router's `bridge`."""
        port = f"{bridge}-{name}"[:15]
        host = self.hosts[name]
        self._ns(
            ROUTER, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", host.netns,
        )  # fmt: skip
        self._ns(ROUTER, "ip", "link", "set", port, "master", bridge, "up")
        self._ns(name, "ip", "addr", "add", f"{host.address}/{LAN_PREFIX}", "dev", "eth0")
        self._ns(name, "ip", "link", "set", "eth0", "up")
        if gateway is not None:
            self._ns(name, "ip", "route", "add", "default", "via", gateway)

    def close(self) -> None:
        """Kill what runs in the namespaces (ours first, by process group), delete them."""
        for process, own_session in self._processes:
            if process.poll() is None:
                if own_session:
                    _signal_group(process.pid, signal.SIGTERM)
                else:
                    process.terminate()
        deadline = time.monotonic() + KILL_GRACE
        for process, own_session in self._processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            if own_session:  # its children too, even when it has exited itself
                _signal_group(process.pid, signal.SIGKILL)
            elif process.poll() is None:
                process.kill()
            try:
                process.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                pass
        self._processes.clear()
        errors = []
        for netns in reversed(self._created):
            for pid in self._pids(netns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                _run(["ip", "netns", "del", netns])
            except NetnsError as exc:
                errors.append(str(exc))
        self._created.clear()
        if errors:
            raise NetnsError("teardown left namespaces behind:\n" + "\n".join(errors))

    @staticmethod
    def _pids(netns: str) -> list[int]:
        try:
            out = _run(["ip", "netns", "pids", netns])
        except NetnsError:
            return []
        return [int(pid) for pid in out.split() if pid.isdigit()]

    # --- commands in a host ------------------------------------------------------------

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` as run inside `host`."""
        return ["ip", "netns", "exec", self.hosts[host].netns, *argv]

    def run(self, host: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Popen `argv` inside `host`, in a session of its own (the topology's close kills its
        process group); cwd defaults to the repository root."""
        popen_kwargs.setdefault("cwd", REPO)
        popen_kwargs.setdefault("start_new_session", True)
        process: subprocess.Popen[Any] = subprocess.Popen(self.argv(host, argv), **popen_kwargs)
        self._processes.append((process, bool(popen_kwargs["start_new_session"])))
        return process

    def check_output(self, host: str, argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
        """Run `argv` inside `host` to completion; NetnsError with its output if it fails."""
        return _run(self.argv(host, argv), timeout=timeout)

    def _ns(self, host: str, *argv: str) -> str:
        return self.check_output(host, argv)

    def sysctl(self, host: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        self._ns(host, "sh", "-c", f"echo {value} > {path}")

    def iptables(self, host: str, *args: str) -> str:
        return self._ns(host, "iptables", "-w", "5", *args)

    def pids(self, host: str) -> list[int]:
        """Processes running inside `host`."""
        return self._pids(self.hosts[host].netns)

    # --- the server's firewall, links ---------------------------------------------------

    def firewall_server_allow_only(
        self, udp_ports: range, tcp_ports: range, http_port: int
    ) -> None:
        """Drop everything coming into `srv` except replies, lo, TCP `http_port` and the given
        ports (ranges of consecutive ports; an empty range allows none)."""
        self.firewall_server_open()
        rules: list[list[str]] = [
            ["-i", "lo", "-j", "ACCEPT"],
            ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
            ["-p", "tcp", "--dport", str(http_port), "-j", "ACCEPT"],
        ]
        for proto, ports in (("udp", udp_ports), ("tcp", tcp_ports)):
            if len(ports):
                span = f"{ports[0]}:{ports[-1]}"
                rules.append(["-p", proto, "--dport", span, "-j", "ACCEPT"])
        for rule in rules:
            self.iptables(SERVER, "-A", "INPUT", *rule)
        self.iptables(SERVER, "-P", "INPUT", "DROP")

    def firewall_server_open(self) -> None:
        """Back to no firewall on `srv`."""
        self.iptables(SERVER, "-P", "INPUT", "ACCEPT")
        self.iptables(SERVER, "-F", "INPUT")

    def nat_rebind(self, client: str) -> None:
        """The router gives `client` new public ports, as a NAT does when its mappings time
        out or it restarts: from now on its UDP leaves from random ports (MASQUERADE --random),
        and every mapping (conntrack entry) of the router is dropped, so that the next
        datagram of each flow gets a new one (the other clients keep their ports: their
        rules preserve them where free)."""
        address = self.hosts[client].address
        self.iptables(
            ROUTER, "-t", "nat", "-I", "POSTROUTING", "1", "-s", address, "-o", "lan", "-p",
            "udp", "-j", "MASQUERADE", "--random",
        )  # fmt: skip
        code = self.check_output(ROUTER, [sys.executable, "-c", CONNTRACK_FLUSH]).strip()
        if code != "0":
            raise NetnsError(f"flushing the router's conntrack table failed: error {code}")

    def firewall_report(self, host: str = SERVER) -> str:
        """`iptables -L -v -n -x` of a host: the packet counts of each rule (for messages)."""
        return self.iptables(host, "-L", "INPUT", "-v", "-n", "-x")

    # No netem delay/loss helper: this kernel has no sch_netem ("Specified qdisc kind is
    # unknown"), and a container cannot load it.

    def start_stun_server(self, host: str = PUBLIC_CLIENT, port: int = STUN_PORT) -> str:
        """A STUN server on `host` (the public LAN by default: what clients behind the NAT
        reach, as they would a public one); returns its URL for STUN_URLS/STUN_DISCOVER."""
        address = self.hosts[host].address
        argv = [sys.executable, "-c", STUN_SERVER, address, str(port), str(STUN_LIFETIME)]
        process = self.run(host, argv, stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise NetnsError(f"the STUN server on {host} did not start (exit {process.wait()})")
        return f"stun:{address}:{port}"

    # --- the gateway inside srv ---------------------------------------------------------

    def start_gateway(
        self,
        log_dir: Path,
        *,
        http_port: int = 8080,
        workers: int = 2,
        env: Mapping[str, str] | None = None,
        args: Iterable[str] = (),
        probe_from: str = "natc1",
        ready_timeout: float = READY_TIMEOUT,
    ) -> NetnsGateway:
        """`python -m gateway` inside `srv` on its own address:http_port (media on
        BIND_ADDRESSES=that address unless `env` says otherwise), ready once /readyz answers
        200 to a request from `probe_from` to http://SERVER_ADDRESS:http_port (through srtr's
        forwards with server_nat: set them up first)."""
        log_path = log_dir / f"gateway-{self.tag}-{http_port}.log"
        own = self.hosts[SERVER].address  # SERVER_ADDRESS, or its private one behind srtr
        command = [sys.executable, "-m", "gateway", "--http-addr", f"{own}:{http_port}"]
        command += ["--workers", str(workers), *args]
        settings = {"BIND_ADDRESSES": own, **(env or {})}
        with log_path.open("wb") as log_file:
            process = self.run(
                SERVER, command, env=child_env(settings), stdout=log_file, stderr=subprocess.STDOUT
            )
        gateway = NetnsGateway(self, process, http_port, log_path, probe_from)
        try:
            gateway.wait_ready(ready_timeout)
        except BaseException:
            gateway.stop()
            raise
        return gateway

    def http_status(self, host: str, url: str, within: float = 0.0) -> int | None:
        """The status of GET `url` from `host` (None: nothing answered), retried until 200 or
        `within` seconds have passed: one process in the namespace does the polling."""
        script = (
            "import sys, time, urllib.request, urllib.error\n"
            "deadline = time.monotonic() + float(sys.argv[2])\n"
            "while True:\n"
            "    try:\n"
            "        status = urllib.request.urlopen(sys.argv[1], timeout=1).status\n"
            "    except urllib.error.HTTPError as exc:\n"
            "        status = exc.code\n"
            "    except OSError:\n"
            "        status = None\n"
            "    if status == 200 or time.monotonic() > deadline:\n"
            "        print(status)\n"
            "        break\n"
            "    time.sleep(0.1)\n"
        )
        out = self.check_output(
            host, [sys.executable, "-c", script, url, str(within)], timeout=within + 10
        )
        text = out.strip()
        return int(text) if text.isdigit() else None

    def http_text(self, host: str, url: str, timeout: float = 5.0) -> str:
        """The body of GET `url` from `host` (NetnsError unless it answers 200)."""
        script = (
            "import sys, urllib.request\n"
            "with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:\n"
            "    sys.stdout.write(r.read().decode())\n"
        )
        return self.check_output(
            host, [sys.executable, "-c", script, url, str(timeout)], timeout=timeout + 10
        )


class NetnsGateway(GatewayProcess):
    """A gateway running inside the topology's `srv`; `url` is its address on the LAN."""

    def __init__(
        self,
        topology: Topology,
        process: subprocess.Popen[bytes],
        port: int,
        log_path: Path,
        probe_from: str,
    ) -> None:
        super().__init__(process, port, log_path, None)
        self.topology = topology
        self.url = f"http://{SERVER_ADDRESS}:{port}"
        self.probe_from = probe_from

    def wait_ready(self, timeout: float = READY_TIMEOUT, path: str = "/readyz") -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"gateway exited with {self.process.returncode} before {path}:\n{self.log()}"
                )
            status = self.topology.http_status(self.probe_from, self.url + path, within=2.0)
            if status == 200:
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{path} of the gateway in {self.topology.hosts[SERVER].netns} did not "
                    f"answer 200 from {self.probe_from} in {timeout:g} s (last: {status}):\n"
                    f"{self.log(4000)}"
                )


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
