"""
qmtwist.local.dirsync (docs/behaviour/local.md 4.8.1): directories of several Maildir
deliveries made durable together, real directories, the sync calls counted.
"""

from __future__ import annotations

import os

import pytest

from qmtwist.local import dirsync
from tests.support import HeldRunner


@pytest.fixture
def counted(monkeypatch):
    calls: list[tuple[str, int]] = []
    realFsync = os.fsync

    def fsync(fd):
        calls.append(("fsync", fd))
        realFsync(fd)

    def syncfs(fd):
        calls.append(("syncfs", fd))

    monkeypatch.setattr(dirsync.os, "fsync", fsync)
    monkeypatch.setattr(dirsync, "syncFilesystem", syncfs)
    monkeypatch.setattr(dirsync, "canSyncFilesystem", lambda: True)
    return calls


def _dirs(tmp_path, n):
    out = []
    for i in range(n):
        d = tmp_path / f"u{i}" / "Maildir" / "new"
        d.mkdir(parents=True)
        out.append(os.fsencode(d))
    return out


def test_severalDirectoriesOfOneFilesystemShareOneSyncfs(tmp_path, counted):
    failed = dirsync.syncDirectories(_dirs(tmp_path, 3))
    assert failed == {}
    assert [kind for kind, _ in counted] == ["syncfs"]


def test_aLoneDirectoryIsFsynced(tmp_path, counted):
    (d,) = _dirs(tmp_path, 1)
    assert dirsync.syncDirectories([d, d]) == {}
    assert [kind for kind, _ in counted] == ["fsync"]


def test_withoutSyncfsEachDirectoryIsFsynced(tmp_path, counted):
    assert dirsync.syncDirectories(_dirs(tmp_path, 3), useSyncfs=False) == {}
    assert [kind for kind, _ in counted] == ["fsync"] * 3


def test_missingFileAndFifoFailWithoutBlocking(tmp_path, counted):
    (good,) = _dirs(tmp_path, 1)
    missing = os.fsencode(tmp_path / "gone")
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    failed = dirsync.syncDirectories([good, missing, os.fsencode(plain), os.fsencode(fifo)])
    assert set(failed) == {missing, os.fsencode(plain), os.fsencode(fifo)}
    assert all(isinstance(e, OSError) for e in failed.values())
    assert [kind for kind, _ in counted] == ["fsync"]


def test_syncfsFailureFailsEveryDirectoryOfThatFilesystem(tmp_path, monkeypatch):
    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(dirsync, "syncFilesystem", broken)
    monkeypatch.setattr(dirsync, "canSyncFilesystem", lambda: True)
    dirs = _dirs(tmp_path, 2)
    failed = dirsync.syncDirectories(dirs)
    assert set(failed) == set(dirs)
    assert failed[dirs[0]].errno == 5


def test_syncsAskedForDuringABatchGoTogetherInTheNext(tmp_path, counted):
    hops = HeldRunner()
    syncs = dirsync.DirectorySyncs(hops)
    a, b, c = _dirs(tmp_path, 3)
    fired: list[str] = []
    syncs.sync([a]).addCallback(lambda _: fired.append("a"))
    syncs.sync([b]).addCallback(lambda _: fired.append("b"))
    syncs.sync([c]).addCallback(lambda _: fired.append("c"))
    assert len(hops.pending) == 1 and fired == []
    hops.runOne()
    assert fired == ["a"]
    assert len(hops.pending) == 1  # b and c: one hop
    hops.runOne()
    assert fired == ["a", "b", "c"]
    assert syncs.batches == 2
    assert [kind for kind, _ in counted] == ["fsync", "syncfs"]


def test_aFailedDirectoryFailsOnlyItsWaiters(tmp_path, counted):
    hops = HeldRunner()
    syncs = dirsync.DirectorySyncs(hops)
    (good,) = _dirs(tmp_path, 1)
    bad = os.fsencode(tmp_path / "missing")
    results: dict[str, object] = {}
    syncs.sync([good]).addBoth(lambda r: results.setdefault("good", r))
    syncs.sync([good, bad]).addBoth(lambda r: results.setdefault("bad", r))
    hops.runOne()
    hops.runOne()
    assert results["good"] is None
    assert results["bad"].check(FileNotFoundError)


def test_aWaiterThatAsksAgainStartsOneBatch(tmp_path, counted):
    """A callback that asks for another sync while its batch is answered starts exactly one
    next batch, which also takes what was already waiting."""
    hops = HeldRunner()
    syncs = dirsync.DirectorySyncs(hops)
    a, b = _dirs(tmp_path, 2)
    fired: list[str] = []
    syncs.sync([a]).addCallback(
        lambda _: syncs.sync([b]).addCallback(lambda _: fired.append("b")))
    syncs.sync([a]).addCallback(lambda _: fired.append("a2"))
    hops.runOne()
    assert len(hops.pending) == 1
    hops.runOne()
    assert hops.pending == [] and sorted(fired) == ["a2", "b"] and syncs.batches == 2


def test_coveringDataEveryBatchIsOneSyncfsThroughAHeldDescriptor(tmp_path, counted):
    """With coverData even a lone directory gets a syncfs (it must cover the file's data), and
    the descriptor opened for a filesystem the first time is kept for every later batch."""
    hops = HeldRunner()
    syncs = dirsync.DirectorySyncs(hops, coverData=True)
    assert syncs.coverData and syncs.watched == frozenset()
    a, b = _dirs(tmp_path, 2)
    fired: list[str] = []
    syncs.sync([a]).addCallback(lambda _: fired.append("a"))
    hops.runOne()
    assert fired == ["a"]
    assert syncs.watched == {os.stat(a).st_dev}
    syncs.sync([b]).addCallback(lambda _: fired.append("b"))
    hops.runOne()
    assert fired == ["a", "b"]
    assert [kind for kind, _ in counted] == ["syncfs", "syncfs"]
    assert counted[0][1] == counted[1][1]  # the same held descriptor
    held = counted[0][1]
    os.fstat(held)
    syncs.close()
    assert syncs.watched == frozenset()
    with pytest.raises(OSError):
        os.fstat(held)


def test_coveringDataAWritebackErrorFailsEveryDeliveryWrittenSinceItsBatch(
        tmp_path, monkeypatch):
    """syncfs reports a writeback error once, to the batch running when it is checked, which
    may not be the batch of the delivery whose data it was: every delivery handed out before
    that check (its token) fails too, and one handed out after does not."""
    calls: list[int] = []

    def syncfs(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(dirsync, "syncFilesystem", syncfs)
    monkeypatch.setattr(dirsync, "canSyncFilesystem", lambda: True)
    hops = HeldRunner()
    syncs = dirsync.DirectorySyncs(hops, coverData=True)
    a, b, c = _dirs(tmp_path, 3)
    results: dict[str, object] = {}
    syncs.sync([a]).addBoth(lambda r: results.setdefault("a", r))
    early = syncs.token()  # handed out while batch 1 runs: its data may be in that error
    assert early == 1
    syncs.sync([b], since=early).addBoth(lambda r: results.setdefault("b", r))
    hops.runOne()
    assert results["a"].check(OSError)
    late = syncs.token()  # batch 2 runs, after batch 1's check: not concerned
    assert late == 2
    syncs.sync([c], since=late).addBoth(lambda r: results.setdefault("c", r))
    hops.runOne()  # batch 2 (b, started as batch 1 was answered): its syncfs succeeds
    assert results["b"].value is dirsync.WRITEBACK
    hops.runOne()  # batch 3: c
    assert results["c"] is None


def test_coveringDataAMissingDirectoryFailsOnlyItsOwnWaiter(tmp_path, counted):
    hops = HeldRunner()
    syncs = dirsync.DirectorySyncs(hops, coverData=True)
    (good,) = _dirs(tmp_path, 1)
    gone = os.fsencode(tmp_path / "gone")
    results: dict[str, object] = {}
    syncs.sync([gone]).addBoth(lambda r: results.setdefault("gone", r))
    since = syncs.token()
    syncs.sync([good], since=since).addBoth(lambda r: results.setdefault("good", r))
    hops.runOne()
    hops.runOne()
    assert results["gone"].check(FileNotFoundError)
    assert results["good"] is None
