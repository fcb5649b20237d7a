"""One track's packets in shared memory: written once by the home worker, read by every
local worker with viewers of the room.

A ring lives in an anonymous memfd (no name: nothing to leak in /dev/shm, nothing for
Python's resource_tracker to unlink, freed by the kernel when the last process holding it
exits, SIGKILL included); its file descriptor travels to readers over the plane's Unix
socket (ipc/shm/link.py, SCM_RIGHTS).

Layout (little-endian):

* cache line 0, written once: magic, version, kind, slot count (a power of two), stride,
  and `ring_id`, 64 random bits that the writer also names in its answer to a reader, who
  refuses a mapping whose id differs (a stale or foreign ring is never attached);
* cache line 1, written by the writer only: `write_seq` (records written so far: the
  next record's index), `last_keyframe` (index + 1 of the latest keyframe record, 0 if
  none), `generation` (bumped when the publisher changes) and `closed`;
* then `slots` slots of `stride` bytes: a 32-byte record header, the payload.

Record header: `stamp` (u64: index + 1 once the record is complete, STAMP_BUSY while it is
being written, 0 never written), arrival time (ns), RTP timestamp, the source epoch, the RTP
sequence number, payload length, flags, the audio level, the simulcast layer.

Writer protocol: stamp BUSY, header, payload, stamp, then `write_seq`. Reader protocol:
read `write_seq`; per record, read the stamp, copy the header and payload out, read the
stamp again; equal stamps mean an intact copy. A record overwritten while it was copied,
or a reader more than one ring behind, is a *lap*: the reader counts what it lost and
resumes at the latest keyframe (or the live edge). The writer never waits for a reader.

Ordering: on x86-64 (TSO) stores become visible in program order, which is all the protocol
needs; `supported()` says whether this machine is one. Another architecture would need
barriers (a small C helper), and the plane is off there.
"""

from __future__ import annotations

import mmap
import os
import platform
import secrets
import struct
import time
from collections.abc import Callable

MAGIC = 0x4C535246  # "FRSL"
VERSION = 1
HEADER_SIZE = 128
RECORD_HEADER_SIZE = 32
STAMP_BUSY = 0xFFFFFFFFFFFFFFFF

# Record flags. PADDING and MARKER are the RTP header's own bits, so the fan-out takes them
# as they are (CachedPacket's padding flag, RTP byte 1's marker).
FLAG_KEYFRAME = 0x01  # the first packet of a keyframe: a place to start decoding
FLAG_LEVEL = 0x02  # the level field holds the packet's audio level (RFC 6464)
FLAG_SKIPPED = 0x04  # a packet too long for a slot: counted as lost by readers
FLAG_PADDING = 0x20
FLAG_MARKER = 0x80

KIND_AUDIO = 0
KIND_VIDEO = 1
KINDS = {"audio": KIND_AUDIO, "video": KIND_VIDEO}

DEFAULT_STRIDE = 1536  # a 1500-byte MTU's packet fits: 1504 bytes of payload
# Video: 2048 x 1.5 KiB = 3 MiB, about 2.4 MB of payload: one group of pictures at 2.5 Mbit/s
# with a 4 s keyframe interval (1.25 MB) with room to spare. Audio: 512 packets, 10 s of Opus.
DEFAULT_SLOTS = {"audio": 512, "video": 2048}

_FIXED = struct.Struct("<IHBxIIQ")  # magic, version, kind, slots, stride, ring_id
_WRITE_SEQ = struct.Struct("<Q")
_WRITER_LINE = struct.Struct("<QQQQ")  # write_seq, last_keyframe, generation, closed
_STAMP = struct.Struct("<Q")
# arrival_ns, timestamp, epoch, seq, length, flags, level, layer
_RECORD = struct.Struct("<qIIHHHBB")
_WRITER_OFFSET = 64
_WRITE_SEQ_OFFSET = _WRITER_OFFSET
_LAST_KEYFRAME_OFFSET = _WRITER_OFFSET + 8
_GENERATION_OFFSET = _WRITER_OFFSET + 16
_CLOSED_OFFSET = _WRITER_OFFSET + 24

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux

# What a reader hands on per record: (seq, timestamp, flags, epoch, level, payload).
Deliver = Callable[[int, int, int, int, int, bytes], None]


def supported() -> bool:
    """The slot protocol relies on x86-64's store ordering."""
    return platform.machine().lower() in ("x86_64", "amd64")


def ring_size(slots: int, stride: int) -> int:
    return HEADER_SIZE + slots * stride


def _check_geometry(slots: int, stride: int) -> None:
    if slots < 2 or slots & (slots - 1):
        raise ValueError(f"slot count {slots} is not a power of two >= 2")
    if stride < RECORD_HEADER_SIZE + 64 or stride % 64:
        raise ValueError(f"stride {stride} is not a multiple of 64 of at least 128")


class RingWriter:
    """The home worker's side of one ring: it owns the memfd and is its only writer."""

    __slots__ = (
        "kind",
        "slots",
        "stride",
        "ring_id",
        "fd",
        "capacity",
        "write_seq",
        "last_keyframe",
        "generation",
        "skipped",
        "_mm",
        "_mask",
        "_pack_stamp",
        "_pack_record",
        "_pack_seq",
    )

    def __init__(self, kind: str, slots: int | None = None, stride: int = DEFAULT_STRIDE) -> None:
        slots = slots if slots is not None else DEFAULT_SLOTS[kind]
        _check_geometry(slots, stride)
        self.kind = kind
        self.slots = slots
        self.stride = stride
        self.capacity = stride - RECORD_HEADER_SIZE  # the longest payload a slot holds
        self.ring_id = secrets.randbits(64)
        self.fd = os.memfd_create(f"live-sfu-ring-{kind}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, ring_size(slots, stride))
            # Populated at once: first-touch page faults would otherwise land on the
            # per-packet path for the whole first lap (several µs a packet, measured).
            self._mm = mmap.mmap(
                self.fd, ring_size(slots, stride), flags=mmap.MAP_SHARED | _POPULATE
            )
        except BaseException:
            os.close(self.fd)
            raise
        _FIXED.pack_into(self._mm, 0, MAGIC, VERSION, KINDS[kind], slots, stride, self.ring_id)
        self.write_seq = 0
        self.last_keyframe = 0
        self.generation = 0
        self.skipped = 0
        self._mask = slots - 1
        self._pack_stamp = _STAMP.pack_into
        self._pack_record = _RECORD.pack_into
        self._pack_seq = _WRITE_SEQ.pack_into

    def write(
        self,
        seq: int,
        timestamp: int,
        flags: int,
        epoch: int,
        level: int,
        payload: bytes,
    ) -> None:
        """Append one record; never waits. flags: FLAG_* bits; level: 0-255 with FLAG_LEVEL."""
        index = self.write_seq
        mm = self._mm
        offset = HEADER_SIZE + (index & self._mask) * self.stride
        length = len(payload)
        pack_stamp = self._pack_stamp
        pack_stamp(mm, offset, STAMP_BUSY)
        if length > self.capacity:
            flags = FLAG_SKIPPED
            length = 0
            self.skipped += 1
        else:
            start = offset + RECORD_HEADER_SIZE
            mm[start : start + length] = payload
        self._pack_record(
            mm, offset + 8, time.monotonic_ns(), timestamp, epoch, seq, length, flags, level, 0
        )
        pack_stamp(mm, offset, index + 1)
        self.write_seq = index + 1
        if flags & FLAG_KEYFRAME:
            self.last_keyframe = index + 1
            _WRITER_LINE.pack_into(mm, _WRITER_OFFSET, index + 1, index + 1, self.generation, 0)
        else:
            self._pack_seq(mm, _WRITE_SEQ_OFFSET, index + 1)

    def new_generation(self) -> int:
        """A new publisher feeds the track: readers may tell (monitoring, stale checks)."""
        self.generation += 1
        _WRITE_SEQ.pack_into(self._mm, _GENERATION_OFFSET, self.generation)
        return self.generation

    def close(self) -> None:
        """Mark the ring closed for readers, unmap it and close the memfd (idempotent). The
        memory goes when the last reader has unmapped it too."""
        if self._mm.closed:
            return
        _WRITE_SEQ.pack_into(self._mm, _CLOSED_OFFSET, 1)
        self._mm.close()
        os.close(self.fd)

    @property
    def closed(self) -> bool:
        return self._mm.closed


class RingReader:
    """A reader's side of one ring, mapped read-only from the writer's memfd.

    `next` is the index of the next record to hand on. `drain(deliver)` hands on every
    complete record from there up to the writer's position, in order.
    """

    __slots__ = (
        "kind",
        "slots",
        "stride",
        "ring_id",
        "next",
        "read",
        "lost",
        "torn",
        "laps",
        "_mm",
        "_mask",
    )

    def __init__(self, fd: int, ring_id: int) -> None:
        """Map the ring behind `fd` (the caller keeps ownership of the fd and may close it
        afterwards); ValueError when it is not a live-sfu ring or not the one named."""
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE:
            raise ValueError("not a live-sfu ring: too small")
        mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
        try:
            magic, version, kind, slots, stride, found_id = _FIXED.unpack_from(mm, 0)
            if magic != MAGIC or version != VERSION:
                raise ValueError("not a live-sfu ring (magic or version)")
            if found_id != ring_id:
                raise ValueError("stale ring: its id is not the one its writer announced")
            _check_geometry(slots, stride)
            if size < ring_size(slots, stride):
                raise ValueError("ring is shorter than its geometry")
            names = {v: k for k, v in KINDS.items()}
            if kind not in names:
                raise ValueError(f"unknown ring kind {kind}")
        except BaseException:
            mm.close()
            raise
        self._mm = mm
        self.kind = names[kind]
        self.slots = slots
        self.stride = stride
        self.ring_id = ring_id
        self._mask = slots - 1
        self.read = 0  # records handed on
        self.lost = 0  # records skipped because the reader was lapped (or too long)
        self.torn = 0  # copies found overwritten while they were made
        self.laps = 0
        self.next = self.write_seq

    # --- the writer's line ----------------------------------------------------------------

    @property
    def write_seq(self) -> int:
        return int(_WRITE_SEQ.unpack_from(self._mm, _WRITE_SEQ_OFFSET)[0])

    @property
    def last_keyframe(self) -> int:
        """Index of the latest keyframe record, or -1."""
        return int(_WRITE_SEQ.unpack_from(self._mm, _LAST_KEYFRAME_OFFSET)[0]) - 1

    @property
    def generation(self) -> int:
        return int(_WRITE_SEQ.unpack_from(self._mm, _GENERATION_OFFSET)[0])

    @property
    def writer_closed(self) -> bool:
        return bool(_WRITE_SEQ.unpack_from(self._mm, _CLOSED_OFFSET)[0])

    # --- reading ------------------------------------------------------------------------------

    def record(self, index: int) -> tuple[int, int, int, int, int, bytes] | None:
        """The record at `index` as (seq, timestamp, flags, epoch, level, payload), if it is
        still in the ring and intact; None otherwise (for NACKs and backlogs)."""
        if index < 0:
            return None
        mm = self._mm
        offset = HEADER_SIZE + (index & self._mask) * self.stride
        stamp = _STAMP.unpack_from(mm, offset)[0]
        if stamp != index + 1:
            return None
        _arrival, ts, epoch, seq, length, flags, level, _layer = _RECORD.unpack_from(mm, offset + 8)
        start = offset + RECORD_HEADER_SIZE
        payload = mm[start : start + length]
        if _STAMP.unpack_from(mm, offset)[0] != stamp or flags & FLAG_SKIPPED:
            return None
        return seq, ts, flags, epoch, level, payload

    def arrival_ns(self, index: int) -> int:
        """The writer's clock when it wrote record `index` (latency probes), or -1."""
        if index < 0:
            return -1
        offset = HEADER_SIZE + (index & self._mask) * self.stride
        if _STAMP.unpack_from(self._mm, offset)[0] != index + 1:
            return -1
        return int(struct.unpack_from("<q", self._mm, offset + 8)[0])

    def drain(self, deliver: Deliver, limit: int = 1 << 30) -> bool:
        """Hand on every complete record from `next` on (at most `limit`).

        While `deliver` runs, `next - 1` is the index of the record it was given.
        Returns True when the reader was lapped (records were lost): it has resumed at the
        latest keyframe still in the ring, or at the live edge, and the caller should ask the
        source for a keyframe.
        """
        mm = self._mm
        unpack_stamp = _STAMP.unpack_from
        unpack_record = _RECORD.unpack_from
        mask = self._mask
        stride = self.stride
        index = self.next
        end = unpack_stamp(mm, _WRITE_SEQ_OFFSET)[0]
        lapped = False
        if end - index > self.slots:
            index = self._resync(index, end)
            lapped = True
        stop = min(end, index + limit)
        while index < stop:
            offset = HEADER_SIZE + (index & mask) * stride
            stamp = unpack_stamp(mm, offset)[0]
            if stamp != index + 1:
                # Overwritten since `end` was read: the writer lapped us meanwhile.
                index = self._resync(index, unpack_stamp(mm, _WRITE_SEQ_OFFSET)[0])
                lapped = True
                stop = index  # start afresh on the next drain
                break
            _arrival, ts, epoch, seq, length, flags, level, _layer = unpack_record(mm, offset + 8)
            start = offset + RECORD_HEADER_SIZE
            payload = mm[start : start + length]
            if unpack_stamp(mm, offset)[0] != stamp:
                self.torn += 1
                index = self._resync(index, unpack_stamp(mm, _WRITE_SEQ_OFFSET)[0])
                lapped = True
                break
            index += 1
            if flags & FLAG_SKIPPED:
                self.lost += 1
                continue
            self.read += 1
            self.next = index
            deliver(seq, ts, flags, epoch, level, payload)
        self.next = index
        return lapped

    def _resync(self, index: int, end: int) -> int:
        """Lapped at `index` with the writer at `end`: where to resume, losses counted."""
        self.laps += 1
        keyframe = self.last_keyframe
        # The latest keyframe, if it is ahead of us and far enough from being overwritten.
        if index < keyframe and end - keyframe < self.slots * 3 // 4:
            resume = keyframe
        else:
            resume = end
        self.lost += max(resume - index, 0)
        return resume

    def close(self) -> None:
        self._mm.close()

    @property
    def closed(self) -> bool:
        return self._mm.closed
