"""Would sendmmsg(2) make the fan-out cheaper? The send side of one packet to N viewers.

Issue 18 names the system call per viewer-packet as the lever left. With the ICE mux a
worker reaches all its viewers through one socket, so the N copies of a packet could leave
in one sendmmsg. This probe measures, on one uvloop loop and one UDP socket, the sending
process's CPU per datagram (`time.process_time` around the sends only; receivers drained
outside the timed part) for N datagrams of `--size` bytes to N loopback receivers:

* `sendto`: the transport's `sendto` per datagram (today's path);
* `cffi-abi`: sendmmsg through cffi's ABI mode (nothing compiled), the mmsghdr vector
  filled from Python, field by field;
* `cffi-api`: a compiled helper (cffi API mode, gcc): Python hands it one joined buffer,
  the lengths and a destination index per datagram, and C fills the vector.

Run: `.venv/bin/python -m bench.sendmmsg_probe --viewers 50 --rounds 400` (needs gcc and
python3-dev for `cffi-api`, which scripts/test.sh installs; skipped without them).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import os
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import cffi
import uvloop

SOCKADDR_IN = struct.Struct("=H2s4s8x")
HEADERS = """
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr {
    void *msg_name; unsigned int msg_namelen;
    struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen;
    int msg_flags;
};
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
"""
PACKED_SOURCE = r"""
#include <sys/socket.h>
#include <string.h>
static int send_packed(int fd, const char *buf, const unsigned int *lens,
                       const unsigned short *idx, const char *names, unsigned int namelen,
                       unsigned int count) {
    struct mmsghdr msgs[1024]; struct iovec iov[1024];
    size_t off = 0;
    if (count > 1024) count = 1024;
    for (unsigned int i = 0; i < count; i++) {
        iov[i].iov_base = (void *)(buf + off); iov[i].iov_len = lens[i]; off += lens[i];
        memset(&msgs[i].msg_hdr, 0, sizeof(struct msghdr));
        msgs[i].msg_hdr.msg_name = (void *)(names + (size_t)idx[i] * namelen);
        msgs[i].msg_hdr.msg_namelen = namelen;
        msgs[i].msg_hdr.msg_iov = &iov[i]; msgs[i].msg_hdr.msg_iovlen = 1;
    }
    return sendmmsg(fd, msgs, count, 0);
}
"""


def compiled_helper() -> Any | None:
    ffi = cffi.FFI()
    ffi.cdef(
        "int send_packed(int fd, const char *buf, const unsigned int *lens,"
        " const unsigned short *idx, const char *names, unsigned int namelen,"
        " unsigned int count);"
    )
    ffi.set_source("_sendmmsg_probe", PACKED_SOURCE)
    directory = tempfile.mkdtemp(prefix="sendmmsg-probe-")
    try:
        ffi.compile(tmpdir=directory, verbose=False)
    except Exception as exc:  # noqa: BLE001 - no compiler: that variant is skipped
        print(f"cffi-api skipped: {exc}", file=sys.stderr)
        return None
    sys.path.insert(0, directory)
    import _sendmmsg_probe

    return _sendmmsg_probe


async def probe(viewers: int, rounds: int, size: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock)
    receivers = []
    for _ in range(viewers):
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        receivers.append(receiver)
    addrs = [receiver.getsockname() for receiver in receivers]
    names = [
        SOCKADDR_IN.pack(socket.AF_INET, port.to_bytes(2, "big"), socket.inet_aton(host))
        for host, port in addrs
    ]
    payloads = [os.urandom(size) for _ in range(viewers)]  # one protected copy per viewer

    abi = cffi.FFI()
    abi.cdef(HEADERS)
    libc = abi.dlopen(None)
    messages = abi.new("struct mmsghdr[]", viewers)
    iovecs = abi.new("struct iovec[]", viewers)
    name_buffers = [abi.new("char[]", name) for name in names]
    for index in range(viewers):
        messages[index].msg_hdr.msg_iov = iovecs + index
        messages[index].msg_hdr.msg_iovlen = 1

    def send_sendto() -> None:
        for index, addr in enumerate(addrs):
            transport.sendto(payloads[index], addr)

    def send_abi() -> None:
        keep = []
        for index in range(viewers):
            buffer = abi.from_buffer(payloads[index])
            keep.append(buffer)
            iovecs[index].iov_base = buffer
            iovecs[index].iov_len = size
            header = messages[index].msg_hdr
            header.msg_name = name_buffers[index]
            header.msg_namelen = 16
        libc.sendmmsg(sock.fileno(), messages, viewers, 0)

    variants: dict[str, Callable[[], None]] = {"sendto": send_sendto, "cffi-abi": send_abi}
    helper = compiled_helper()
    if helper is not None:
        table = b"".join(names)

        def send_api() -> None:
            data = []
            order = array.array("H")
            for index in range(viewers):
                data.append(payloads[index])
                order.append(index)
            lengths = array.array("I", map(len, data))
            helper.lib.send_packed(
                sock.fileno(),
                b"".join(data),
                helper.ffi.from_buffer("unsigned int[]", lengths),
                helper.ffi.from_buffer("unsigned short[]", order),
                table,
                16,
                viewers,
            )

        variants["cffi-api"] = send_api

    def drain() -> None:
        for receiver in receivers:
            while True:
                try:
                    receiver.recv(65536)
                except BlockingIOError:
                    break

    results: dict[str, list[float]] = {name: [] for name in variants}
    for _repeat in range(3):
        for name, send in variants.items():
            spent = 0.0
            for round_index in range(rounds):
                started = time.process_time()
                send()
                spent += time.process_time() - started
                if round_index % 10 == 0:
                    drain()
            drain()
            results[name].append(spent / (rounds * viewers) * 1e6)
    transport.close()
    for receiver in receivers:
        receiver.close()
    return {name: sorted(values)[1] for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sendmmsg_probe", description=__doc__)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--size", type=int, default=1100)
    args = parser.parse_args()
    figures = uvloop.run(probe(args.viewers, args.rounds, args.size))
    base = figures["sendto"]
    print("| variant | µs per datagram (median of 3) | / sendto |")
    print("| --- | --- | --- |")
    for name, value in figures.items():
        print(f"| {name} | {value:.2f} | {value / base:.2f} |")


if __name__ == "__main__":
    main()
