"""
The local agent reports a Maildir delivery only after the batched sync of its directory
(docs/behaviour/local.md 4.8.1): real homes, real Maildirs, in-process and (as root) through
the per-uid helper, whose answer names the directory.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater

from qmtwist.delivery import Outcome, Report
from qmtwist.home import virtualAccount
from tests.integration.local.helpers import World, maildirFiles


@pytest.fixture
def world():
    w = World.make()
    yield w
    w.cleanup()


class _GatedSyncs:
    """Stands for the agent's DirectorySyncs: records each request and answers when told."""

    watched: frozenset[int] = frozenset()

    def __init__(self, fail: bool = False):
        self.asked: list[tuple[bytes, ...]] = []
        self.gates: list[Deferred[None]] = []
        self.fail = fail

    def token(self) -> int:
        return 1

    def close(self) -> None:
        pass

    def sync(self, paths, since=None):
        self.asked.append(tuple(paths))
        if self.fail:
            return fail(OSError(5, "Input/output error"))
        d: Deferred[None] = Deferred()
        self.gates.append(d)
        return d


async def _untilAsked(gated: _GatedSyncs, n: int = 1) -> None:
    for _ in range(500):
        if len(gated.asked) >= n:
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the agent never asked for the directory sync")


async def _reportWaitsForTheSync(world: World, root: bool, uid=None, gid=None) -> None:
    h = world.userHome("ann", uid, gid)
    agent = world.agent(root=root)
    gated = _GatedSyncs()
    agent.dirSyncs = gated
    try:
        [d] = agent.deliver([world.request(b"ann@test.example")])
        await _untilAsked(gated)
        new = os.path.realpath(os.path.join(h, "Maildir", "new"))
        assert [tuple(os.path.realpath(p) for p in ps) for ps in gated.asked] == [
            (os.fsencode(new),)]
        assert len(os.listdir(new)) == 1  # linked, not yet reported
        assert not d.called
        gated.gates[0].callback(None)
        assert await d == Report(Outcome.SUCCESS, b"did 1+0+0\n")
    finally:
        await agent.stop()


@pytest_twisted.ensureDeferred
async def test_reportWaitsForTheDirectorySync(world):
    await _reportWaitsForTheSync(world, root=False)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root (CI runs as root)")
@pytest_twisted.ensureDeferred
async def test_reportWaitsForTheDirectorySyncThroughTheHelper(world):
    uid, gid = virtualAccount()
    await _reportWaitsForTheSync(world, root=True, uid=uid, gid=gid)


class _OkSyncs(_GatedSyncs):
    def sync(self, paths, since=None):
        self.asked.append(tuple(paths))
        return succeed(None)


@pytest_twisted.ensureDeferred
async def test_failedSyncDefersAndTheRetryWritesTheCopyAgain(world):
    """A copy whose sync failed may be cached but not on the disk: its retry removes it and
    writes it again (one copy, a new name), instead of counting it."""
    h = world.userHome("bob")
    world.dotqmail(h, ".qmail", b"./Maildir/\n")
    agent = world.agent()
    agent.dirSyncs = _GatedSyncs(fail=True)
    mess = world.mess()
    try:
        [d] = agent.deliver([world.request(b"bob@test.example", mess)])
        r = await d
        assert r == Report(Outcome.DEFERRAL,
                           b"Temporary error on maildir delivery. (#4.3.0)\n")
        new = os.path.join(h, "Maildir", "new")
        [first] = os.listdir(new)
        firstData = maildirFiles(os.path.join(h, "Maildir"))
        agent.dirSyncs = _OkSyncs()
        [d] = agent.deliver([world.request(b"bob@test.example", mess, repeat=True)])
        assert await d == Report(Outcome.SUCCESS, b"did 1+0+0\n")
        [again] = os.listdir(new)
        assert again != first
        assert maildirFiles(os.path.join(h, "Maildir")) == firstData
        # and a later retry (the queue lost the result) counts the copy now on the disk
        [d] = agent.deliver([world.request(b"bob@test.example", mess, repeat=True)])
        assert await d == Report(Outcome.SUCCESS, b"did 1+0+0\n")
        assert os.listdir(new) == [again]
    finally:
        await agent.stop()


@pytest_twisted.ensureDeferred
async def test_twoMaildirLinesNameBothDirectories(world):
    h = world.userHome("cat")
    os.makedirs(os.path.join(h, "Other", "tmp"))
    os.makedirs(os.path.join(h, "Other", "new"))
    world.dotqmail(h, ".qmail", b"./Maildir/\n./Other/\n")
    agent = world.agent()
    gated = _GatedSyncs()
    agent.dirSyncs = gated
    try:
        [d] = agent.deliver([world.request(b"cat@test.example")])
        await _untilAsked(gated)
        assert sorted(os.path.realpath(p) for p in gated.asked[0]) == sorted(
            os.fsencode(os.path.realpath(os.path.join(h, m, "new")))
            for m in ("Maildir", "Other"))
        gated.gates[0].callback(None)
        assert await d == Report(Outcome.SUCCESS, b"did 2+0+0\n")
    finally:
        await agent.stop()


@pytest_twisted.ensureDeferred
async def test_onceItsFilesystemIsWatchedAMaildirFileIsLeftToTheBatchSyncfs(world, monkeypatch):
    """The first delivery to a filesystem fsyncs its file (nothing watched it before the
    write); after its batch the agent holds a descriptor of that filesystem, and the next
    delivery's file is made durable by the batch's syncfs alone (docs/behaviour/local.md
    4.8.1)."""
    from qmtwist.durable import canSyncFilesystem
    from qmtwist.local import maildir as maildirModule

    if not canSyncFilesystem():
        pytest.skip("no syncfs(2) here")
    fsyncs: list[int] = []
    real = os.fsync

    def fsync(fd):
        fsyncs.append(fd)
        real(fd)

    monkeypatch.setattr(maildirModule.os, "fsync", fsync)
    h = world.userHome("dan")
    agent = world.agent()
    try:
        assert agent.dirSyncs.coverData
        [d] = agent.deliver([world.request(b"dan@test.example")])
        assert await d == Report(Outcome.SUCCESS, b"did 1+0+0\n")
        assert len(fsyncs) == 1
        dev = os.stat(os.path.join(h, "Maildir", "new")).st_dev
        assert agent.dirSyncs.watched == {dev}
        [d] = agent.deliver([world.request(b"dan@test.example")])
        assert await d == Report(Outcome.SUCCESS, b"did 1+0+0\n")
        assert len(fsyncs) == 1
        assert len(os.listdir(os.path.join(h, "Maildir", "new"))) == 2
    finally:
        await agent.stop()
    assert agent.dirSyncs.watched == frozenset()
