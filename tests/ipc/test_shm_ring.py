"""The shared-memory ring (ipc/shm/ring.py): one writer, readers that never hold it back.

Unit tests drive an in-process writer step by step; one test runs the writer in a forked
process as fast as it can against a 16-slot ring, so that the reader is lapped and copies
are torn for real; a property test checks every drain against a model of the protocol.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipc.shm.ring import (
    DEFAULT_STRIDE,
    FLAG_KEYFRAME,
    FLAG_LEVEL,
    FLAG_MARKER,
    FLAG_PADDING,
    HEADER_SIZE,
    MAGIC,
    RECORD_HEADER_SIZE,
    VERSION,
    RingReader,
    RingWriter,
    ring_size,
    supported,
)

pytestmark = pytest.mark.skipif(not supported(), reason="the ring protocol needs x86-64")

Record = tuple[int, int, int, int, int, bytes]  # seq, timestamp, flags, epoch, level, payload

# Cache line 0 as the module docstring states it: magic, version, kind, slots, stride, ring_id.
FIXED = struct.Struct("<IHBxIIQ")

SMALL_STRIDE = 128  # the smallest slot: 96 bytes of payload
SMALL_CAPACITY = SMALL_STRIDE - RECORD_HEADER_SIZE


@dataclass
class Rings:
    """Makes writers and readers and closes them all at teardown."""

    writers: list[RingWriter]
    readers: list[RingReader]

    def writer(self, kind: str = "video", slots: int = 8, stride: int = SMALL_STRIDE) -> RingWriter:
        writer = RingWriter(kind, slots, stride)
        self.writers.append(writer)
        return writer

    def reader(self, writer: RingWriter) -> RingReader:
        reader = RingReader(writer.fd, writer.ring_id)
        self.readers.append(reader)
        return reader


@pytest.fixture
def rings() -> Iterator[Rings]:
    before = (memfds(), memfd_maps())
    made = Rings([], [])
    yield made
    for reader in made.readers:
        reader.close()
    for writer in made.writers:
        writer.close()
    assert (memfds(), memfd_maps()) == before, "a ring's memfd or mapping was left open"


class Collector:
    """A drain's deliver callback that keeps what it was handed."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def __call__(
        self, seq: int, timestamp: int, flags: int, epoch: int, level: int, payload: bytes
    ) -> None:
        self.records.append((seq, timestamp, flags, epoch, level, payload))

    def take(self) -> list[Record]:
        records, self.records = self.records, []
        return records


def record_for(index: int, keyframe: bool = False, size: int = 20) -> Record:
    """What the tests write at `index`: every field derived from it (epoch = the index)."""
    flags = FLAG_LEVEL
    flags |= FLAG_KEYFRAME if keyframe else 0
    flags |= FLAG_MARKER if index % 3 == 0 else 0
    flags |= FLAG_PADDING if index % 5 == 0 else 0
    payload = bytes((index + i) & 0xFF for i in range(size))
    return index & 0xFFFF, (index * 3000) & 0xFFFFFFFF, flags, index, index % 128, payload


def write_range(
    writer: RingWriter, start: int, end: int, keyframes: frozenset[int] = frozenset()
) -> list[Record]:
    """Write records start..end-1 (the writer must be at `start`)."""
    assert writer.write_seq == start
    written = [record_for(i, i in keyframes) for i in range(start, end)]
    for record in written:
        writer.write(*record)
    return written


def memfds() -> set[int]:
    """This process's open live-sfu memfds."""
    return {
        int(fd)
        for fd in os.listdir("/proc/self/fd")
        if "memfd:live-sfu" in _link(f"/proc/self/fd/{fd}")
    }


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def memfd_maps() -> int:
    """How many mappings of live-sfu memfds this process has."""
    with open("/proc/self/maps") as maps:
        return sum("memfd:live-sfu" in line for line in maps)


# --- one record's fields ------------------------------------------------------------------


def test_every_field_makes_the_round_trip(rings: Rings) -> None:
    writer = rings.writer("video", slots=16, stride=DEFAULT_STRIDE)
    reader = rings.reader(writer)
    assert (reader.kind, reader.slots, reader.stride) == ("video", 16, DEFAULT_STRIDE)
    assert writer.capacity == DEFAULT_STRIDE - RECORD_HEADER_SIZE == 1504
    records: list[Record] = [
        (0, 0, 0, 0, 0, b""),
        (65535, 0xFFFFFFFF, FLAG_KEYFRAME | FLAG_MARKER, 0xFFFFFFFF, 0, b"\x00\xff" * 600),
        (1234, 90000, FLAG_LEVEL | FLAG_PADDING, 7, 127, b"opus"),
        (40000, 1, FLAG_LEVEL | FLAG_MARKER | FLAG_PADDING, 2**31, 255, bytes(range(256)) * 5),
        (1, 2, FLAG_KEYFRAME, 3, 4, bytes(writer.capacity)),  # exactly as long as a slot holds
    ]
    before = time.monotonic_ns()
    for record in records:
        writer.write(*record)
    after = time.monotonic_ns()
    got = Collector()
    assert reader.drain(got) is False
    assert got.take() == records
    assert (reader.read, reader.lost, reader.laps, reader.torn) == (5, 0, 0, 0)
    assert reader.next == reader.write_seq == writer.write_seq == 5
    assert reader.last_keyframe == 4  # the latest keyframe's index
    for index, record in enumerate(records):
        assert reader.record(index) == record
        assert before <= reader.arrival_ns(index) <= after
    assert reader.drain(got) is False and got.take() == []


def test_an_audio_ring_says_so(rings: Rings) -> None:
    writer = rings.writer("audio", slots=4)
    reader = rings.reader(writer)
    assert reader.kind == "audio"
    assert reader.last_keyframe == -1
    writer.write(5, 960, FLAG_LEVEL, 0, 42, b"\xfc" * 40)
    got = Collector()
    reader.drain(got)
    assert got.take() == [(5, 960, FLAG_LEVEL, 0, 42, b"\xfc" * 40)]


# --- laps -----------------------------------------------------------------------------------


def test_wrap_around_many_laps_with_a_reader_that_keeps_up(rings: Rings) -> None:
    writer = rings.writer(slots=8)
    reader = rings.reader(writer)
    got = Collector()
    written: list[Record] = []
    end = 0
    for lap in range(60):
        burst = 1 + lap % 8  # up to a whole ring between two drains
        written += write_range(writer, end, end + burst, frozenset({end}))
        end += burst
        assert reader.drain(got) is False
    assert got.take() == written
    assert end > 8 * 30
    assert (reader.read, reader.lost, reader.laps, reader.next) == (end, 0, 0, end)
    # Only the last 8 records are still there.
    assert [reader.record(i) for i in range(end - 8, end)] == written[-8:]
    assert all(reader.record(i) is None for i in range(end - 16, end - 8))


def test_a_reader_exactly_one_ring_behind_is_not_lapped(rings: Rings) -> None:
    writer = rings.writer(slots=8)
    reader = rings.reader(writer)
    written = write_range(writer, 0, 8)
    got = Collector()
    assert reader.drain(got) is False
    assert got.take() == written
    written = write_range(writer, 8, 17)  # nine: the first is overwritten
    assert reader.drain(got) is True
    assert got.take() == []
    assert (reader.lost, reader.laps, reader.next, reader.read) == (9, 1, 17, 8)


@pytest.mark.parametrize(
    ("keyframes", "resume"),
    [
        pytest.param(frozenset(), 30, id="no keyframe: live edge"),
        pytest.param(frozenset({5}), 30, id="keyframe behind the reader: live edge"),
        pytest.param(frozenset({23}), 30, id="keyframe 7 from the edge: too old"),
        pytest.param(frozenset({24}), 30, id="keyframe 6 from the edge: too old"),
        pytest.param(frozenset({25}), 25, id="keyframe 5 from the edge"),
        pytest.param(frozenset({22, 26}), 26, id="the latest keyframe"),
        pytest.param(frozenset({29}), 29, id="keyframe at the edge"),
    ],
)
def test_a_lapped_reader_counts_its_losses_and_resyncs(
    rings: Rings, keyframes: frozenset[int], resume: int
) -> None:
    writer = rings.writer(slots=8)
    reader = rings.reader(writer)
    got = Collector()
    for start, end in ((0, 8), (8, 10)):  # the reader keeps up with the first 10
        write_range(writer, start, end, keyframes & frozenset(range(start, end)))
        assert reader.drain(got) is False
    assert len(got.take()) == 10
    written = write_range(writer, 10, 30, keyframes & frozenset(range(10, 30)))
    assert reader.drain(got) is True
    assert got.take() == written[resume - 10 :]
    assert reader.lost == resume - 10
    assert reader.laps == 1
    assert reader.read == 10 + 30 - resume
    assert reader.next == 30
    # After the resync the reader follows the writer again.
    written = write_range(writer, 30, 33)
    assert reader.drain(got) is False
    assert got.take() == written
    assert reader.read + reader.lost == reader.next == 33


def test_a_new_reader_starts_at_the_live_edge(rings: Rings) -> None:
    writer = rings.writer(slots=8)
    write_range(writer, 0, 5, frozenset({2}))
    reader = rings.reader(writer)
    assert reader.next == 5
    got = Collector()
    assert reader.drain(got) is False
    assert got.take() == []
    written = write_range(writer, 5, 7)
    reader.drain(got)
    assert got.take() == written
    assert (reader.read, reader.lost) == (2, 0)


def test_drain_limit_and_a_failing_deliver(rings: Rings) -> None:
    writer = rings.writer(slots=8)
    reader = rings.reader(writer)
    written = write_range(writer, 0, 7)
    got = Collector()
    assert reader.drain(got, limit=3) is False
    assert got.take() == written[:3] and reader.next == 3

    def explode(seq: int, timestamp: int, flags: int, epoch: int, level: int, data: bytes) -> None:
        raise RuntimeError(f"viewer gone at {epoch}")

    with pytest.raises(RuntimeError, match="at 3"):
        reader.drain(explode)
    # The record handed on counts as read; the next drain goes on after it.
    assert (reader.next, reader.read) == (4, 4)
    reader.drain(got)
    assert got.take() == written[4:]


# --- lookups --------------------------------------------------------------------------------


def test_record_finds_what_is_still_in_the_ring(rings: Rings) -> None:
    writer = rings.writer(slots=8)
    reader = rings.reader(writer)
    assert all(reader.record(i) is None for i in (-1, 0, 7, 8))  # nothing written yet
    written = write_range(writer, 0, 12)
    for index in range(12):
        expected = written[index] if index >= 4 else None  # 0-3 were overwritten
        assert reader.record(index) == expected
    for index in (-1, -9, 12, 13, 20, 1 << 40):
        assert reader.record(index) is None
    assert reader.arrival_ns(3) == -1 and reader.arrival_ns(12) == -1
    assert reader.arrival_ns(11) > 0


def test_arrival_ns_of_index_minus_one_on_a_fresh_ring(rings: Rings) -> None:
    """A latency probe on "the last record read" (next - 1) before anything was written
    asks for index -1: the answer must be -1, not the writer's clock of an unwritten slot.
    (Fails today: arrival_ns has no `index < 0` guard, unlike record(); index -1 maps to the
    last slot whose stamp, 0, equals index + 1.)"""
    writer = rings.writer(slots=8)
    reader = rings.reader(writer)
    assert reader.record(-1) is None
    assert reader.arrival_ns(-1) == -1


def test_a_payload_too_long_for_a_slot_is_skipped_and_counted_lost(rings: Rings) -> None:
    writer = rings.writer(slots=8)
    reader = rings.reader(writer)
    fits = (1, 10, FLAG_KEYFRAME, 0, 0, b"x" * SMALL_CAPACITY)
    writer.write(*fits)
    writer.write(2, 20, FLAG_KEYFRAME | FLAG_MARKER, 0, 0, b"y" * (SMALL_CAPACITY + 1))
    writer.write(3, 30, 0, 0, 0, b"z")
    assert writer.skipped == 1
    assert writer.write_seq == 3
    got = Collector()
    assert reader.drain(got) is False  # only a lap returns True
    assert got.take() == [fits, (3, 30, 0, 0, 0, b"z")]
    assert (reader.read, reader.lost, reader.laps, reader.next) == (2, 1, 0, 3)
    assert reader.record(1) is None
    assert reader.last_keyframe == 0  # a skipped keyframe is no place to start


# --- the writer's line ----------------------------------------------------------------------


def test_a_new_generation_is_visible_to_readers(rings: Rings) -> None:
    writer = rings.writer(slots=8)
    reader = rings.reader(writer)
    assert reader.generation == 0
    assert writer.new_generation() == 1
    assert reader.generation == 1
    write_range(writer, 0, 3, frozenset({1}))  # a keyframe rewrites the whole line
    assert reader.generation == 1
    assert reader.last_keyframe == 1 and reader.write_seq == 3
    assert writer.new_generation() == 2
    assert reader.generation == 2
    assert reader.writer_closed is False


def test_close_is_seen_by_a_reader_that_can_still_read(rings: Rings) -> None:
    writer = rings.writer(slots=8)
    reader = rings.reader(writer)
    written = write_range(writer, 0, 5, frozenset({0}))
    assert reader.writer_closed is False
    writer.close()
    assert writer.closed
    writer.close()  # idempotent
    with pytest.raises((ValueError, TypeError)):  # no write into an unmapped ring
        writer.write(*record_for(5))
    assert reader.writer_closed is True
    got = Collector()
    assert reader.drain(got) is False
    assert got.take() == written
    assert reader.record(4) == written[4]
    assert reader.generation == 0 and reader.last_keyframe == 0
    assert not reader.closed
    reader.close()
    assert reader.closed


# --- refusals -------------------------------------------------------------------------------


def fake_ring(size: int, header: bytes = b"") -> int:
    fd = os.memfd_create("live-sfu-test-fake", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    os.pwrite(fd, header, 0)
    return fd


@pytest.mark.parametrize(
    ("size", "fields", "ring_id", "error"),
    [
        pytest.param(64, None, 1, "too small", id="too small"),
        pytest.param(ring_size(8, 128), None, 0, "magic", id="zeros"),
        pytest.param(
            ring_size(8, 128), (0xDEADBEEF, VERSION, 1, 8, 128, 5), 5, "magic", id="magic"
        ),
        pytest.param(ring_size(8, 128), (MAGIC, 2, 1, 8, 128, 5), 5, "version", id="version"),
        pytest.param(ring_size(8, 128), (MAGIC, VERSION, 1, 8, 128, 5), 6, "stale", id="id"),
        pytest.param(ring_size(8, 128), (MAGIC, VERSION, 1, 6, 128, 5), 5, "power", id="slots 6"),
        pytest.param(ring_size(8, 128), (MAGIC, VERSION, 1, 1, 128, 5), 5, "power", id="slots 1"),
        pytest.param(ring_size(8, 128), (MAGIC, VERSION, 1, 8, 100, 5), 5, "stride", id="stride"),
        pytest.param(ring_size(8, 128) - 1, (MAGIC, VERSION, 1, 8, 128, 5), 5, "shorter", id="cut"),
        pytest.param(ring_size(8, 128), (MAGIC, VERSION, 9, 8, 128, 5), 5, "kind", id="kind"),
    ],
)
def test_a_reader_refuses_what_is_not_the_ring_announced(
    size: int, fields: tuple[int, ...] | None, ring_id: int, error: str
) -> None:
    fd = fake_ring(size, FIXED.pack(*fields) if fields else b"")
    maps = memfd_maps()
    try:
        with pytest.raises(ValueError, match=error) as refused:
            RingReader(fd, ring_id)
        # Unmapped at once, not when the traceback (which holds the mmap) goes.
        assert refused.traceback and memfd_maps() == maps
    finally:
        os.close(fd)


def test_a_reader_refuses_a_stale_id_of_a_real_ring(rings: Rings) -> None:
    writer = rings.writer(slots=8)
    other = rings.writer(slots=8)
    assert writer.ring_id != other.ring_id
    with pytest.raises(ValueError, match="stale"):
        RingReader(writer.fd, other.ring_id)
    eventfd = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        with pytest.raises(ValueError):
            RingReader(eventfd, writer.ring_id)
    finally:
        os.close(eventfd)


def test_the_header_is_laid_out_as_documented(rings: Rings) -> None:
    writer = rings.writer("audio", slots=16, stride=256)
    with mmap.mmap(writer.fd, HEADER_SIZE, prot=mmap.PROT_READ) as mm:
        assert FIXED.unpack_from(mm, 0) == (MAGIC, VERSION, 0, 16, 256, writer.ring_id)
    assert os.fstat(writer.fd).st_size == ring_size(16, 256) == HEADER_SIZE + 16 * 256


@pytest.mark.parametrize(("slots", "stride"), [(1, 128), (12, 128), (8, 64), (8, 1000)])
def test_a_writer_refuses_bad_geometry(slots: int, stride: int) -> None:
    with pytest.raises(ValueError):
        RingWriter("video", slots, stride)


# --- a real writer in another process -------------------------------------------------------

CONCURRENT_SLOTS = 16
CONCURRENT_RECORDS = 3_000_000
CONCURRENT_SECONDS = 1.0


def _concurrent_payload(index: int) -> bytes:
    return (index & 0xFFFF).to_bytes(2, "little") * (1 + index % 300)


def _write_flat_out(writer: RingWriter) -> None:
    deadline = time.monotonic() + CONCURRENT_SECONDS
    for index in range(CONCURRENT_RECORDS):
        if index & 1023 == 0 and time.monotonic() > deadline:
            break
        flags = FLAG_KEYFRAME if index % 8 == 0 else 0
        payload = _concurrent_payload(index)
        writer.write(index & 0xFFFF, (index * 7) & 0xFFFFFFFF, flags, index, index & 0x7F, payload)


def test_a_reader_against_a_writer_in_another_process_never_delivers_a_torn_record(
    rings: Rings,
) -> None:
    writer = rings.writer(slots=CONCURRENT_SLOTS, stride=DEFAULT_STRIDE)
    reader = rings.reader(writer)
    bad: list[tuple[int, int, int]] = []
    last = -1

    def check(seq: int, timestamp: int, flags: int, epoch: int, level: int, data: bytes) -> None:
        nonlocal last
        if (
            epoch <= last
            or seq != epoch & 0xFFFF
            or timestamp != (epoch * 7) & 0xFFFFFFFF
            or flags != (FLAG_KEYFRAME if epoch % 8 == 0 else 0)
            or level != epoch & 0x7F
            or data != _concurrent_payload(epoch)
        ):
            bad.append((epoch, seq, len(data)))
        last = epoch

    pid = os.fork()
    if pid == 0:  # the writer: no pytest machinery from here on
        code = 1
        try:
            _write_flat_out(writer)
            code = 0
        finally:
            os._exit(code)
    lapped = 0
    status = 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        lapped += reader.drain(check)
        if done:
            break
    while reader.next < reader.write_seq:  # what the writer left
        lapped += reader.drain(check)
    assert os.waitstatus_to_exitcode(status) == 0
    total = reader.write_seq
    assert total >= 10_000, "the writer hardly ran"
    assert bad == []
    assert reader.read > 0
    assert reader.laps >= 1 and lapped >= 1, "a 16-slot ring never lapped its reader"
    assert lapped <= reader.laps  # one drain may resync twice (lapped, then torn)
    assert reader.read + reader.lost == reader.next == total
    print(
        f"\n{total} written, {reader.read} read, {reader.lost} lost, {reader.laps} laps, "
        f"{reader.torn} torn"
    )


# --- property: any interleaving of bursts and drains ------------------------------------------

PROPERTY_SLOTS = 8


@dataclass(frozen=True)
class Burst:
    packets: tuple[tuple[bool, int], ...]  # (keyframe, payload size; > capacity: skipped)


@dataclass(frozen=True)
class Drain:
    limit: int | None


packets = st.tuples(st.integers(0, 3).map(lambda n: n == 0), st.integers(0, SMALL_CAPACITY + 6))
steps = st.one_of(
    st.builds(Burst, st.lists(packets, min_size=1, max_size=20).map(tuple)),
    st.builds(Drain, st.none() | st.integers(1, 12)),
)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(prefix=st.integers(0, 20), script=st.lists(steps, max_size=40))
def test_any_interleaving_of_writes_and_drains(prefix: int, script: list[Burst | Drain]) -> None:
    writer = RingWriter("video", PROPERTY_SLOTS, SMALL_STRIDE)
    try:
        written: list[Record | None] = []  # None: too long, skipped
        last_keyframe = -1

        def write(keyframe: bool, size: int) -> None:
            nonlocal last_keyframe
            index = len(written)
            record = record_for(index, keyframe, size)
            writer.write(*record)
            if size > SMALL_CAPACITY:
                written.append(None)
            else:
                written.append(record)
                last_keyframe = index if keyframe else last_keyframe

        for _ in range(prefix):
            write(False, 4)
        reader = RingReader(writer.fd, writer.ring_id)
        try:
            start = reader.next
            assert start == prefix
            delivered: list[int] = []
            for step in script + [Drain(None)]:
                if isinstance(step, Burst):
                    for keyframe, size in step.packets:
                        write(keyframe, size)
                    continue
                before_next, before_lost = reader.next, reader.lost
                end = len(written)
                got = Collector()
                lapped = reader.drain(got, step.limit if step.limit is not None else 1 << 30)
                # Where it should have resumed: the live edge, or a recent enough keyframe.
                resume = before_next
                if end - before_next > PROPERTY_SLOTS:
                    if (
                        before_next < last_keyframe
                        and end - last_keyframe < PROPERTY_SLOTS * 3 // 4
                    ):
                        resume = last_keyframe
                    else:
                        resume = end
                stop = min(end, resume + (step.limit or 1 << 30))
                expected = [i for i in range(resume, stop) if written[i] is not None]
                indexes = [record[3] for record in got.records]
                assert indexes == expected
                assert all(
                    written[i] == record for i, record in zip(indexes, got.records, strict=True)
                )
                assert reader.next == stop
                skipped = stop - resume - len(expected)
                assert reader.lost - before_lost == (resume - before_next) + skipped
                # True exactly when records were lost to a lap (not merely skipped).
                assert lapped == (reader.lost - before_lost - skipped > 0)
                assert lapped == (end - before_next > PROPERTY_SLOTS)
                assert not delivered or not indexes or indexes[0] > delivered[-1]
                delivered += indexes
                assert reader.read + reader.lost == reader.next - start
                assert reader.read == len(delivered)
                for index in range(max(0, end - 2 * PROPERTY_SLOTS), end + 2):
                    held = end - PROPERTY_SLOTS <= index < end
                    assert reader.record(index) == (written[index] if held else None)
            assert len(set(delivered)) == len(delivered)
            assert reader.next == len(written)
        finally:
            reader.close()
    finally:
        writer.close()
