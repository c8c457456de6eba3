"""
LocalAgent as root: many deliveries for new (uid, gid) pairs starting at once, while other
threads of the daemon look users up; a helper that dies says how, and is replaced.
CI runs as root; elsewhere these tests skip.
"""

from __future__ import annotations

import grp
import os
import pwd
import sys
import threading

import pytest
import pytest_twisted

from qmtwist.delivery import Outcome, Report
from qmtwist.home import virtualAccount
from qmtwist.local.program import CRASHED
from tests.integration.local.helpers import World, deliverOne, maildirFiles
from tests.support import until

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root (CI runs as root)")


@pytest.fixture
def world():
    w = World.make()
    yield w
    w.cleanup()


def _pairs() -> list[tuple[int, int]]:
    """Three (uid, gid) pairs, two sharing a uid: three helpers."""
    uid, gid = virtualAccount()
    nobody = pwd.getpwnam("nobody")
    other = grp.getgrnam("nogroup").gr_gid if nobody.pw_gid == gid else nobody.pw_gid
    assert other != gid and 0 not in (uid, nobody.pw_uid)
    return [(uid, gid), (uid, other), (nobody.pw_uid, nobody.pw_gid)]


class _Lookups:
    """Threads doing passwd and group lookups nonstop, as the daemon's pool does."""

    def __init__(self, n: int = 2) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self) -> None:
        names = [p.pw_name for p in pwd.getpwall()]
        while not self.stop.is_set():
            for name in names:
                pw = pwd.getpwnam(name)
                os.getgrouplist(name, pw.pw_gid)
                pwd.getpwuid(pw.pw_uid)

    def __enter__(self) -> _Lookups:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


@pytest_twisted.ensureDeferred
async def test_manyDeliveriesForNewUidsAtOnce(world):
    pairs = _pairs()
    users = []
    for i, (uid, gid) in enumerate(pairs):
        for j in range(2):
            name = f"u{i}x{j}"
            h = world.userHome(name, uid, gid)
            world.dotqmail(h, ".qmail", b"./Maildir/\n")
            users.append((name, h))
    spawned = []
    with _Lookups():
        for rnd in range(4):
            agent = world.agent(root=True)
            agent.reactor = _Reactor(agent.reactor, spawned)
            try:
                reqs = [world.request(b"%s@test.example" % name.encode(), position=100 * rnd + k)
                        for k, (name, h) in enumerate(users * 2)]
                reports = [await d for d in agent.deliver(reqs)]
                assert reports == [Report(Outcome.SUCCESS, b"did 1+0+0\n")] * len(reqs)
                assert sorted(agent.helpers) == sorted(pairs)
            finally:
                await agent.stop()
            assert agent.helpers == {}
    # one helper per pair per round, each started as root and dropping itself after exec:
    # never spawnProcess(uid=, gid=), whose user lookups between fork and exec crashed
    assert len(spawned) == 4 * len(pairs)
    for kw in spawned:
        assert kw.get("uid") is None and kw.get("gid") is None
    for k, (name, h) in enumerate(users):
        uid, gid = pairs[k // 2]
        md = os.path.join(h, "Maildir")
        assert len(maildirFiles(md)) == 8
        for n in os.listdir(os.path.join(md, "new")):
            st = os.stat(os.path.join(md, "new", n))
            assert (st.st_uid, st.st_gid) == (uid, gid)


class _Reactor:
    """The reactor, with the keyword arguments of each spawnProcess call kept in C{spawned}."""

    def __init__(self, reactor, spawned: list) -> None:
        self._reactor = reactor
        self.spawned = spawned

    def spawnProcess(self, *a, **kw):
        self.spawned.append(kw)
        return self._reactor.spawnProcess(*a, **kw)

    def __getattr__(self, name):
        return getattr(self._reactor, name)


@pytest_twisted.ensureDeferred
async def test_deadHelperSaysHowAndIsReplaced(world):
    uid, gid = virtualAccount()
    h = world.userHome("dead", uid, gid)
    world.dotqmail(h, ".qmail", b"./Maildir/\n")
    fake = os.path.join(world.base, "fake-python")
    with open(fake, "wb") as f:
        f.write(b"#!/bin/sh\necho 'first line' >&2\necho 'helper: cannot start' >&2\nexit 3\n")
    os.chmod(fake, 0o755)
    agent = world.agent(root=True)
    agent.python = fake
    try:
        r = await deliverOne(agent, world.request(b"dead@test.example"))
        assert r == Report(Outcome.DEFERRAL,
                           b"local helper for uid %d exited with status 3; its stderr:\n"
                           b"first line\nhelper: cannot start\n" % uid + CRASHED)
        assert agent.helpers == {}
        agent.python = sys.executable
        r = await deliverOne(agent, world.request(b"dead@test.example"))
        assert r == Report(Outcome.SUCCESS, b"did 1+0+0\n")
        # killed while a job runs: that job defers naming the signal; the next gets a new helper
        world.dotqmail(h, ".qmail", b"|touch ./running; i=0; while [ ! -e ./go ] && "
                                    b"[ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n")
        [d] = agent.deliver([world.request(b"dead@test.example")])
        await until(lambda: os.path.exists(os.path.join(h, "running")), "the program to start")
        helper = agent.helpers[(uid, gid)]
        helper.transport.signalProcess("KILL")
        r = await d
        assert r == Report(Outcome.DEFERRAL,
                           b"local helper for uid %d exited with signal 9\n" % uid + CRASHED)
        with open(os.path.join(h, "go"), "wb"):
            pass
        world.dotqmail(h, ".qmail", b"./Maildir/\n")
        r = await deliverOne(agent, world.request(b"dead@test.example"))
        assert r == Report(Outcome.SUCCESS, b"did 1+0+0\n")
        assert agent.helpers[(uid, gid)] is not helper
    finally:
        await agent.stop()
    assert len(maildirFiles(os.path.join(h, "Maildir"))) == 2
