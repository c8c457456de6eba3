"""
qmtwist.local.dirsync (docs/behaviour/local.md 4.8.1): directories of several Maildir
deliveries made durable together, real directories, the sync calls counted.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.defer import Deferred

from qmtwist.local import dirsync


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


class _Hops:
    """A runInThread that runs nothing until told: the batch boundaries become visible."""

    def __init__(self):
        self.pending: list[tuple[object, Deferred]] = []

    def __call__(self, f):
        d = Deferred()
        self.pending.append((f, d))
        return d

    def runOne(self):
        f, d = self.pending.pop(0)
        try:
            result = f()
        except Exception as e:
            d.errback(e)
        else:
            d.callback(result)


def test_syncsAskedForDuringABatchGoTogetherInTheNext(tmp_path, counted):
    hops = _Hops()
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
    hops = _Hops()
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
    hops = _Hops()
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
