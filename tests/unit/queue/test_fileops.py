"""
qmtwist/queue/fileops.py (docs/behaviour/queue.md 5.12): the queue service's batched file
operations; the D marks of a batch made durable with one sync before anything depends on them.
Real channel files; the thread hop is a runner that holds each batch until told.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred

from qmtwist.queue import clean, fileops
from qmtwist.queue.envelope import encodeChannel
from qmtwist.queue.fileops import FileOps
from qmtwist.queue.store import Syncer
from tests.conftest import logLines
from tests.unit.queue.test_service import makeHarness, ok


class HeldRunner:
    """runInThread that runs a batch only when told: batch boundaries become visible."""

    def __init__(self):
        self.pending: list[tuple[object, Deferred]] = []

    def __call__(self, f):
        d = Deferred()
        self.pending.append((f, d))
        return d

    def runOne(self):
        f, d = self.pending.pop(0)
        try:
            r = f()
        except Exception as e:
            d.errback(e)
        else:
            d.callback(r)


class CountingSyncer(Syncer):
    """Counts syncfs calls and records what had happened when each was made."""

    def __init__(self, group=True, fail=False, seen=None):
        super().__init__()
        self.group, self.fail = group, fail
        self.calls = 0
        self.seen = seen if seen is not None else []
        self.snapshot: list[list[object]] = []

    @property
    def canGroup(self):
        return self.group

    def syncFilesystem(self, path):
        self.calls += 1
        self.snapshot.append(list(self.seen))
        if self.fail:
            raise OSError(5, "Input/output error")


def _channels(tmp_path, n):
    paths = []
    for i in range(n):
        p = tmp_path / f"c{i}"
        p.write_bytes(encodeChannel([b"a@x.example", b"b@x.example"]))
        paths.append(str(p))
    return paths


def test_marksOfOneBatchShareOneSyncBeforeAnyFollowUp(tmp_path):
    runner = HeldRunner()
    seen: list[object] = []
    syncer = CountingSyncer(seen=seen)
    ops = FileOps(runner, syncer, str(tmp_path))
    paths = _channels(tmp_path, 4)
    fired: list[int] = []
    ops.submit(lambda: None)  # a batch running: the marks below wait for the next one
    for i, p in enumerate(paths):
        ops.submitDurable(lambda p=p: clean.writeDone(p, [0]),
                          lambda i=i: seen.append(("then", i))).addCallback(
            lambda _, i=i: fired.append(i))
    runner.runOne()
    assert len(runner.pending) == 1 and fired == []
    runner.runOne()
    assert syncer.calls == 1 and ops.durableSyncs == 1
    assert syncer.snapshot == [[]]  # no follow-up ran before the sync
    assert seen == [("then", i) for i in range(4)] and fired == [0, 1, 2, 3]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(1) == b"D"


def test_withoutSyncfsEachMarkedFileIsFsyncedOnce(tmp_path, monkeypatch):
    runner = HeldRunner()
    fsyncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(fileops.os, "fsync", lambda fd: (fsyncs.append(fd), real(fd)))
    ops = FileOps(runner, CountingSyncer(group=False), str(tmp_path))
    ops.submit(lambda: None)  # a batch running: the marks below wait for the next one
    for p in _channels(tmp_path, 3):
        ops.submitDurable(lambda p=p: clean.writeDone(p, [0]))
    runner.runOne()
    runner.runOne()
    assert len(fsyncs) == 3 and ops.durableSyncs == 1


def test_aFailedSyncFailsEveryMarkAndRunsNoFollowUp(tmp_path):
    runner = HeldRunner()
    seen: list[object] = []
    ops = FileOps(runner, CountingSyncer(fail=True), str(tmp_path))
    results: list[object] = []
    ops.submit(lambda: None)
    for p in _channels(tmp_path, 2):
        ops.submitDurable(lambda p=p: clean.writeDone(p, [0]),
                          lambda: seen.append("then")).addBoth(results.append)
    runner.runOne()
    runner.runOne()
    assert seen == []
    assert len(results) == 2 and all(r.check(OSError) for r in results)


def test_aMarkThatCannotBeWrittenFailsAloneAndPlainOpsKeepTheirResults(tmp_path):
    runner = HeldRunner()
    syncer = CountingSyncer()
    ops = FileOps(runner, syncer, str(tmp_path))
    [good] = _channels(tmp_path, 1)
    results: dict[str, object] = {}
    ops.submit(lambda: None)
    ops.submitDurable(lambda: clean.writeDone(good, [0])).addBoth(
        lambda r: results.setdefault("good", r))
    ops.submitDurable(lambda: clean.writeDone(str(tmp_path / "missing"), [0])).addBoth(
        lambda r: results.setdefault("missing", r))
    ops.submit(lambda: 42).addBoth(lambda r: results.setdefault("plain", r))
    runner.runOne()
    runner.runOne()
    assert results["good"] is None and results["plain"] == 42
    assert results["missing"].check(FileNotFoundError)
    assert syncer.calls == 1


def test_serviceReportsArrivingTogetherCostOneSync(home):
    """Ten local deliveries answered at once: ten D marks, one sync, all recorded done."""
    h = makeHarness(home, local=None)
    syncer = CountingSyncer()
    runner = HeldRunner()
    h.service.ops.syncer, h.service.ops.runInThread = syncer, runner
    h.inject(b"joe@test.example", [b"u%d@test.example" % i for i in range(10)])
    assert len(h.local.held) == 10
    h.service.ops.submit(lambda: None)  # the file thread is busy while the reports arrive
    for d in h.local.held:
        d.callback(ok(None))
    runner.runOne()
    runner.runOne()
    assert syncer.calls == 1
    while runner.pending:  # channel file and message removal
        runner.runOne()
    assert h.queueFiles() == []  # every D durable, the message finished


def test_serviceLogsTroubleMarkingForEachMarkOfAFailedBatch(home, logEvents):
    h = makeHarness(home, local=None)
    h.service.ops.syncer = CountingSyncer(fail=True)
    h.inject(b"joe@test.example", [b"a@test.example", b"b@test.example"])
    for d in h.local.held:
        d.callback(ok(None))
    warnings = [line for line in logLines(logEvents) if "trouble marking" in line]
    assert len(warnings) == 2
    assert all("message will be delivered twice!" in w for w in warnings)
