"""The remote host timeout table and qmail-tcpto / qmail-tcpok (docs/behaviour/remote.md 11.6)."""

from __future__ import annotations

import io
import random
import time

from twisted.internet.task import Clock

from qmtwist.remote import tcpto
from qmtwist.remote.tcpto import Entry, TimeoutTable
from qmtwist.tools import tcpok as tcpokTool
from qmtwist.tools import tcpto as tcptoTool
from qmtwist.tools.base import ProgramEnv


def table(tmp_path) -> tuple[TimeoutTable, Clock]:
    clock = Clock()
    clock.advance(1_000_000)
    return TimeoutTable(str(tmp_path / "tcpto"), clock, random.Random(1)), clock


def test_twoSpacedTimeoutsSkip(tmp_path) -> None:
    t, clock = table(tmp_path)
    t.timedOut("10.0.0.1")
    assert not t.skip("10.0.0.1")
    clock.advance(119)
    t.timedOut("10.0.0.1")  # under 120 s after the last: not counted
    assert tcpto.read(t.path)["10.0.0.1"].count == 1
    clock.advance(2)
    t.timedOut("10.0.0.1")
    assert tcpto.read(t.path)["10.0.0.1"] == Entry("10.0.0.1", 2, 1_000_121)
    assert t.skip("10.0.0.1")
    assert not t.skip("10.0.0.2")
    clock.advance(3839)
    assert t.skip("10.0.0.1")
    clock.advance(1985)
    assert not t.skip("10.0.0.1")


def test_counterStopsAtTenAndOkResets(tmp_path) -> None:
    t, clock = table(tmp_path)
    for _ in range(15):
        t.timedOut("10.0.0.1")
        clock.advance(200)
    assert tcpto.read(t.path)["10.0.0.1"].count == 10
    t.ok("10.0.0.1")
    assert tcpto.read(t.path) == {}
    assert not t.skip("10.0.0.1")


def test_survivesRestartAndSeesTcpok(tmp_path, home) -> None:
    t = TimeoutTable(home.queue.tcpto, Clock())
    t.clock.advance(time.time() - 300)
    t.timedOut("10.0.0.1")
    t.clock.advance(200)
    t.timedOut("10.0.0.1")
    fresh = TimeoutTable(home.queue.tcpto, t.clock, random.Random(2))
    assert fresh.skip("10.0.0.1")

    out, err = io.BytesIO(), io.BytesIO()
    env = ProgramEnv(home, {}, io.BytesIO(), out, err)
    assert tcptoTool.main(["qmail-tcpto"], env) == 0
    line = out.getvalue().decode()
    assert line.startswith("10.0.0.1 timed out ")
    assert line.endswith(" seconds ago; # recent timeouts: 2\n")
    ago = int(line.split()[3])
    assert 90 <= ago <= 110

    assert tcpokTool.main(["qmail-tcpok"], env) == 0
    assert not fresh.skip("10.0.0.1")
    out.truncate(0)
    out.seek(0)
    assert tcptoTool.main(["qmail-tcpto"], env) == 0
    assert out.getvalue() == b""


def test_toolsFatal(tmp_path, home) -> None:
    import os

    os.rename(home.queue.sub("lock"), str(tmp_path / "moved"))
    err = io.BytesIO()
    env = ProgramEnv(home, {}, io.BytesIO(), io.BytesIO(), err)
    assert tcpokTool.main(["qmail-tcpok"], env) == 111
    assert err.getvalue().startswith(b"qmail-tcpok: fatal: unable to write ")


def test_malformedLinesIgnored() -> None:
    assert tcpto.parse(b"junk\n10.0.0.1 3 5\n10.0.0.2 x 5\n10.0.0.3 0 5\n") == {
        "10.0.0.1": Entry("10.0.0.1", 3, 5.0)
    }


class Pool:
    """A runInThread whose calls wait until the test runs them, in order."""

    def __init__(self) -> None:
        self.pending: list = []

    def __call__(self, f, *args):
        from twisted.internet import defer

        d: defer.Deferred = defer.Deferred()
        self.pending.append((d, f, args))
        return d

    def runAll(self) -> None:
        while self.pending:
            d, f, args = self.pending.pop(0)
            d.callback(f(*args))


def test_daemonTableTouchesTheFileOnlyInThePool(tmp_path) -> None:
    clock = Clock()
    clock.advance(1_000_000)
    pool = Pool()
    t = TimeoutTable(str(tmp_path / "tcpto"), clock, random.Random(1), pool)
    before = {"10.0.0.9": Entry("10.0.0.9", 3, 999_999)}
    tcpto.write(t.path, before)
    done: list = []
    t.refresh().addCallback(done.append)
    assert done == [] and not t.skip("10.0.0.9")  # not read yet
    pool.runAll()
    assert done == [None] and t.skip("10.0.0.9")

    t.timedOut("10.0.0.1")
    clock.advance(200)
    t.timedOut("10.0.0.1")  # while the first write is pending: one write at a time
    t.ok("10.0.0.9")
    assert t.skip("10.0.0.1") and not t.skip("10.0.0.9")
    assert [f.func.__name__ for _d, f, _a in pool.pending] == ["writeStamped"]
    assert tcpto.read(t.path) == before  # written behind, not yet
    flushed: list = []
    t.flush().addCallback(flushed.append)
    t.refresh()  # the copy in memory is newer than the file: nothing to read
    assert len(pool.pending) == 1
    pool.runAll()  # the first write, then one more with everything since
    assert flushed == [None]
    assert tcpto.read(t.path) == {"10.0.0.1": Entry("10.0.0.1", 2, 1_000_200)}

    t.refresh()
    pool.runAll()
    assert t.skip("10.0.0.1")  # its own write is not read back as a change
    tcpto.write(t.path, {})  # qmail-tcpok
    assert t.skip("10.0.0.1")  # until the next refresh
    t.refresh()
    pool.runAll()
    assert not t.skip("10.0.0.1")
