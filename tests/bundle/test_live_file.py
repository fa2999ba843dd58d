"""bundle.live_file: an incoming live transfer checked, hashed and written by a worker thread
(docs/live-protocol.md §4.4). The agent and the hub use it against real sockets in
tests/agent/test_live.py, tests/e2e/test_live.py and tests/e2e/test_live_hostile.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path

import pytest

from bundle.live_file import INLINE_BYTES, FileReceiver
from bundle.sync import Offer, Part
from bundle.sync.errors import OutOfOrderError, TransferError
from tests.e2e.conftest import wait_for

MiB = 1024 * 1024


def _offer(data: bytes, parts: list[bytes] | None = None, transfer: str = "t-1") -> Offer:
    split = tuple(Part(len(p), hashlib.sha256(p).hexdigest()) for p in parts or [])
    return Offer(transfer, "big.tgb", len(data), hashlib.sha256(data).hexdigest(), split)


def _chunks(data: bytes, size: int = MiB) -> list[tuple[int, bytes]]:
    return [(i, data[i:i + size]) for i in range(0, len(data), size)]


def _hold_writes(file: FileReceiver) -> threading.Event:
    """Make ``file``'s worker wait before each write until the returned event is set."""
    gate = threading.Event()
    real_write = file._receiver.write

    def slow(offset: int, chunk: bytes) -> None:
        gate.wait(60)
        real_write(offset, chunk)

    file._receiver.write = slow  # type: ignore[method-assign,assignment]
    return gate


async def _receive(file: FileReceiver, data: bytes, start: int = 0) -> list[int]:
    """Hand over every chunk from ``start`` with an fsync after each, as the agent does;
    returns the durable offsets the fsyncs reported, then finishes."""
    syncs = []
    for offset, chunk in _chunks(data[start:]):
        file.write(start + offset, chunk)
        syncs.append(file.sync())
        await file.room()
    durable = [await file.wait(f) for f in syncs]
    await file.wait(file.finish())
    file.close()
    return durable


@pytest.mark.parametrize("size", [1, INLINE_BYTES, INLINE_BYTES + 1, 5 * MiB + 123])
def test_bytes_are_written_in_order_and_checked(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "x.part"
    file = FileReceiver.open(path, _offer(data))
    assert (file.offset, file.resumed_at) == (0, 0)
    durable = asyncio.run(_receive(file, data))
    assert path.read_bytes() == data
    assert durable == sorted(durable) and durable[-1] == size  # an ACK never claims more


def test_a_large_transfer_is_hashed_and_written_off_the_callers_thread(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    seen: set[str] = set()
    file = FileReceiver.open(tmp_path / "x.part", _offer(data))
    real_write = file._receiver.write

    def spy(offset: int, chunk: bytes) -> None:
        seen.add(threading.current_thread().name)
        real_write(offset, chunk)

    file._receiver.write = spy  # type: ignore[method-assign,assignment]
    asyncio.run(_receive(file, data))
    assert seen and threading.current_thread().name not in seen


def test_a_partial_file_resumes_and_its_bytes_count(tmp_path: Path) -> None:
    data = os.urandom(4 * MiB + 7)
    path = tmp_path / "x.part"
    path.write_bytes(data[:MiB + 3])  # what a dropped connection left
    file = FileReceiver.open(path, _offer(data))
    assert (file.offset, file.resumed_at, file.durable) == (MiB + 3, MiB + 3, MiB + 3)
    asyncio.run(_receive(file, data, start=MiB + 3))
    assert path.read_bytes() == data


def test_opening_fsyncs_only_bytes_a_dropped_connection_left(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new partial file is empty: nothing for RESUME to claim, so no fsync (the hub opens
    one per result offered on its event loop: under load an fsync took up to 95 ms there,
    1.2 s per 200 results); a partial file with bytes is fsynced before they count."""
    import bundle.live_file as live_file_mod

    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(live_file_mod.os, "fsync",
                        lambda fd: (synced.append(os.fstat(fd).st_size), real(fd))[1])
    data = os.urandom(3 * MiB)
    FileReceiver.open(tmp_path / "new.part", _offer(data)).close()
    assert synced == []
    (tmp_path / "old.part").write_bytes(data[:MiB])
    FileReceiver.open(tmp_path / "old.part", _offer(data)).close()
    assert synced == [MiB]


def test_a_partial_file_of_another_offer_is_started_again(tmp_path: Path) -> None:
    data = os.urandom(2 * MiB)
    path = tmp_path / "x.part"
    path.write_bytes(os.urandom(3 * MiB))  # longer than this offer: not its bytes
    file = FileReceiver.open(path, _offer(data))
    assert file.offset == 0 and path.stat().st_size == 0
    asyncio.run(_receive(file, data))
    assert path.read_bytes() == data


@pytest.mark.parametrize("size", [MiB // 2, 6 * MiB])  # inline and in the worker
def test_a_flipped_byte_fails_finish(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    bad = bytearray(data)
    bad[size // 3] ^= 1
    file = FileReceiver.open(tmp_path / "x.part", _offer(data))

    async def run() -> None:
        for offset, chunk in _chunks(bytes(bad)):
            file.write(offset, chunk)
        synced = file.sync()
        with pytest.raises(TransferError, match="SHA-256 does not match"):
            await file.wait(file.finish())
        assert await file.wait(synced) == size  # written, but never accepted
        file.close()

    asyncio.run(run())
    assert isinstance(file.error, TransferError)


def test_a_bad_part_is_refused_when_it_completes_and_nothing_after_it_is_written(
        tmp_path: Path) -> None:
    parts = [os.urandom(2 * MiB), os.urandom(2 * MiB), os.urandom(MiB)]
    data = b"".join(parts)
    bad = bytearray(data)
    bad[3 * MiB] ^= 1  # inside part 001
    path = tmp_path / "x.part"
    file = FileReceiver.open(path, _offer(data, parts))

    async def run() -> None:
        failed_at = None
        for offset, chunk in _chunks(bytes(bad)):
            try:
                file.write(offset, chunk)
                await file.wait(file.sync())  # the worker caught up: no error yet
            except TransferError:
                failed_at = offset
                break
        assert failed_at == 3 * MiB  # the chunk holding part 001's last byte
        with pytest.raises(TransferError):  # and every chunk after it
            file.write(4 * MiB, bytes(bad[4 * MiB:]))
        file.close()

    asyncio.run(run())
    assert isinstance(file.error, TransferError) and "part 001" in str(file.error)
    assert path.read_bytes() == bytes(bad[:4 * MiB])  # nothing after the bad part


def test_a_chunk_out_of_order_is_refused(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    file = FileReceiver.open(tmp_path / "x.part", _offer(data))

    async def run() -> None:
        file.write(0, data[:MiB])
        file.write(2 * MiB, data[2 * MiB:])  # a gap
        with pytest.raises(OutOfOrderError):
            await file.wait(file.sync())
        file.close()

    asyncio.run(run())
    assert (tmp_path / "x.part").read_bytes() == data[:MiB]


def test_reading_waits_while_the_worker_is_behind(tmp_path: Path) -> None:
    data = os.urandom(6 * MiB)
    file = FileReceiver.open(tmp_path / "x.part", _offer(data), max_pending=2 * MiB)
    gate = _hold_writes(file)

    async def run() -> None:
        for offset, chunk in _chunks(data)[:4]:
            file.write(offset, chunk)
        assert file.pending_bytes == 4 * MiB
        waiting = asyncio.ensure_future(file.room())
        await asyncio.sleep(0)
        assert not waiting.done()  # over max_pending: the caller stops reading
        gate.set()
        await asyncio.wait_for(waiting, 60)
        assert file.pending_bytes <= 2 * MiB
        file.close()

    asyncio.run(run())


def test_close_keeps_what_was_fsynced_for_a_resume(tmp_path: Path) -> None:
    data = os.urandom(4 * MiB)
    path = tmp_path / "x.part"
    file = FileReceiver.open(path, _offer(data))

    async def run() -> int:
        file.write(0, data[:MiB])
        durable = await file.wait(file.sync())
        file.close()
        return durable

    assert asyncio.run(run()) == MiB
    again = FileReceiver.open(path, _offer(data))
    assert again.offset == MiB
    again.close()


def test_checked_and_dropped_without_a_path() -> None:
    data = os.urandom(3 * MiB)
    file = FileReceiver.open(None, _offer(data))
    asyncio.run(_receive(file, data))
    file = FileReceiver.open(None, _offer(data))

    async def bad() -> None:
        file.write(0, b"\0" * len(data))
        with pytest.raises(TransferError):
            await file.wait(file.finish())
        file.close()

    asyncio.run(bad())


def test_work_dropped_by_close_raises_a_transfer_error_not_a_cancellation(
        tmp_path: Path) -> None:
    """The agent's read loop may wait for finish() while a failed fsync's ACK task closes
    the receiver: the dropped finish must raise a SyncError the loop handles, never cancel
    the loop itself."""
    data = os.urandom(4 * MiB)
    file = FileReceiver.open(tmp_path / "x.part", _offer(data))
    gate = _hold_writes(file)
    file.write(0, data[:MiB])
    finished = file.finish()
    closing = threading.Thread(target=file.close)
    closing.start()
    wait_for(finished.cancelled, 60, "close() to drop the queued finish")
    gate.set()
    closing.join(60)
    with pytest.raises(TransferError, match="ended before"):
        asyncio.run(file.wait(finished))
    assert (tmp_path / "x.part").read_bytes() == data[:MiB]


def _hold_syncer(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> threading.Event:
    """Make every fsync of a receiver's syncer thread wait until the returned event is set
    (then raise EIO when ``fail``); other fsyncs run as usual."""
    return _SyncerGate(monkeypatch, fail).release


class _SyncerGate:
    """Every fsync of a receiver's syncer thread waits for :attr:`release` (then raises EIO
    when ``fail``); :attr:`started` is set when the first one began, :attr:`calls` counts
    them. Other fsyncs run as usual."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0
        real = os.fsync

        def fsync(fd: int) -> None:
            if threading.current_thread().name.startswith("live-sync"):
                self.calls += 1
                self.started.set()
                self.release.wait(60)
                if fail:
                    raise OSError(5, "Input/output error (test)")
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)


def _writes_after(file: FileReceiver, offset: int, gate: threading.Event) -> None:
    """Make ``file``'s worker wait before writing a chunk at ``offset`` or later until
    ``gate`` is set."""
    real_write = file._receiver.write

    def held(at: int, chunk: bytes) -> None:
        if at >= offset:
            gate.wait(60)
        real_write(at, chunk)

    file._receiver.write = held  # type: ignore[method-assign,assignment]


async def _written(file: FileReceiver) -> None:
    """Return once the worker wrote every chunk handed over."""
    deadline = asyncio.get_running_loop().time() + 60
    while file.pending_bytes and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert file.pending_bytes == 0


def test_writing_goes_on_while_an_fsync_runs_and_an_ack_claims_only_what_it_covered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync runs in the syncer: the worker writes the chunks behind it meanwhile, and
    the sync's result is the bytes written before the fsync began, not those after."""
    fsyncs = _SyncerGate(monkeypatch)
    data = os.urandom(4 * MiB)
    path = tmp_path / "x.part"
    file = FileReceiver.open(path, _offer(data))
    _writes_after(file, 2 * MiB, fsyncs.started)  # the last two chunks: after it began

    async def run() -> tuple[int, int]:
        chunks = _chunks(data)
        for offset, chunk in chunks[:2]:
            file.write(offset, chunk)
        synced = file.sync()
        for offset, chunk in chunks[2:]:
            file.write(offset, chunk)
        await _written(file)
        assert path.stat().st_size == 4 * MiB  # not held up by the fsync
        assert not synced.done() and file.durable == 0  # the fsync still runs
        fsyncs.release.set()
        durable = await file.wait(synced)
        await file.wait(file.finish())
        file.close()
        return durable, file.durable

    assert asyncio.run(run()) == (2 * MiB, 4 * MiB)
    assert path.read_bytes() == data


def test_a_syncer_behind_catches_up_in_one_fsync_that_claims_what_it_covered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Syncs queued behind a slow fsync: the next fsync covers every chunk written before
    it began, its result (the ACK) claims them all, and a sync it covered needs no fsync
    of its own — two fsyncs for three syncs, and never a byte claimed before it was
    written."""
    fsyncs = _SyncerGate(monkeypatch)
    data = os.urandom(4 * MiB)
    path = tmp_path / "x.part"
    file = FileReceiver.open(path, _offer(data))
    _writes_after(file, MiB, fsyncs.started)  # the first fsync begins with 1 MiB written

    async def run() -> list[int]:
        syncs = []
        for offset, chunk in _chunks(data):
            file.write(offset, chunk)
            if offset < 3 * MiB:
                syncs.append(file.sync())  # after 1, 2 and 3 MiB
        await _written(file)
        assert fsyncs.calls == 1 and not any(f.done() for f in syncs)
        fsyncs.release.set()
        durable = [await file.wait(f) for f in syncs]
        assert fsyncs.calls == 2  # the third sync was covered by the second fsync
        await file.wait(file.finish())
        file.close()
        return durable

    assert asyncio.run(run()) == [MiB, 4 * MiB, 4 * MiB]
    assert path.read_bytes() == data


def test_a_failed_fsync_fails_the_transfer_and_nothing_more_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = _hold_syncer(monkeypatch, fail=True)
    data = os.urandom(4 * MiB)
    path = tmp_path / "x.part"
    file = FileReceiver.open(path, _offer(data))

    async def run() -> None:
        file.write(0, data[:2 * MiB])
        synced = file.sync()
        gate.set()
        with pytest.raises(OSError, match="Input/output error"):
            await file.wait(synced)
        assert file.durable == 0  # no ACK may claim a byte
        with pytest.raises(OSError, match="Input/output error"):
            file.write(2 * MiB, data[2 * MiB:])
        with pytest.raises(OSError, match="Input/output error"):
            await file.wait(file.finish())
        file.close()

    asyncio.run(run())
    assert path.read_bytes() == data[:2 * MiB]  # nothing after the failure


def test_no_fsync_thread_for_a_file_never_synced_before_finish(tmp_path: Path) -> None:
    """A hub's result of 1–8 MiB gets no sync() before DONE: finish() fsyncs it in the
    worker, and no second thread is started for nothing."""
    data = os.urandom(3 * MiB)
    path = tmp_path / "x.part"
    file = FileReceiver.open(path, _offer(data))

    async def run() -> None:
        for offset, chunk in _chunks(data):
            file.write(offset, chunk)
        await file.wait(file.finish())

    asyncio.run(run())
    names = {t.name for t in threading.enumerate()}
    file.close()
    assert not any(n.startswith("live-sync") for n in names)
    assert file.durable == len(data) and path.read_bytes() == data
