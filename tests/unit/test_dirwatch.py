"""
The inotify fast path of the control cache and the rules files (docs/behaviour/control.md 2.4):
real files, a real inotify descriptor; the runner runs the check at once and counts the jobs.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct

import pytest
import pytest_twisted
from twisted.internet.defer import maybeDeferred
from twisted.internet.testing import MemoryReactor
from twisted.internet.threads import deferToThread

from qmtwist.context import ControlCache
from qmtwist.control import Control
from qmtwist.dirwatch import (IN_DELETE_SELF, IN_IGNORED, IN_MODIFY, IN_Q_OVERFLOW, DirWatches,
                              scanDirectory)
from qmtwist.home import Home
from qmtwist.tcprules import RulesFile
from tests.conftest import logLines
from tests.support import HeldRunner


class Counting:
    """A thread runner that runs each job at once (no thread) and counts them."""

    def __init__(self, run=maybeDeferred) -> None:
        self.calls = 0
        self.run = run

    def __call__(self, fn):
        self.calls += 1
        return self.run(fn)


@pytest.fixture
def watches():
    w = DirWatches(MemoryReactor())
    yield w
    w.stopService()


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def fresh(cache: ControlCache, runner: Counting) -> Control:
    got: list = []
    cache.refresh(runner).addBoth(got.append)
    [result] = got
    assert isinstance(result, Control), result
    assert result is cache.current()
    return result


def warm(home: Home, watches: DirWatches) -> tuple[ControlCache, Counting]:
    """A cache whose watch is in force: the first refresh armed it."""
    cache = ControlCache(home, watches)
    runner = Counting()
    fresh(cache, runner)
    assert runner.calls == 1
    return cache, runner


def test_noEditNoThreadJob(home: Home, watches):
    write(os.path.join(home.control, "databytes"), b"1234\n")
    cache, runner = warm(home, watches)
    for _ in range(5):
        assert fresh(cache, runner).databytes == 1234
    assert runner.calls == 1
    assert watches.reactor.getReaders() == [watches]  # the reactor drains it between refreshes


def _inPlace(control: str) -> None:
    write(os.path.join(control, "databytes"), b"2222\n")  # same size as before: mtime may not move


def _renamed(control: str) -> None:
    write(os.path.join(control, "databytes.tmp"), b"3333\n")
    os.rename(os.path.join(control, "databytes.tmp"), os.path.join(control, "databytes"))


def _created(control: str) -> None:
    write(os.path.join(control, "smtproutes"), b":relay.example\n")


def _unlinked(control: str) -> None:
    os.unlink(os.path.join(control, "databytes"))


@pytest.mark.parametrize("edit, field, value", [
    (_inPlace, "databytes", 2222),
    (_renamed, "databytes", 3333),
    (_created, "smtproutes", {b"": b"relay.example"}),
    (_unlinked, "databytes", 0),
])
def test_editRightBeforeRefreshIsSeen(home: Home, watches, edit, field, value):
    write(os.path.join(home.control, "databytes"), b"1111\n")
    cache, runner = warm(home, watches)
    assert fresh(cache, runner).databytes == 1111 and runner.calls == 1
    edit(home.control)
    assert getattr(fresh(cache, runner), field) == value
    assert runner.calls == 2
    assert getattr(fresh(cache, runner), field) == value and runner.calls == 2  # watch again


def test_chmodIsAFullCheck(home: Home, watches):
    cache, runner = warm(home, watches)
    os.chmod(os.path.join(home.control, "rcpthosts"), 0o600)
    fresh(cache, runner)
    assert runner.calls == 2


def test_symlinkInControlMeansEveryRefreshChecks(home: Home, watches, tmp_path):
    target = str(tmp_path / "databytes.real")
    write(target, b"100\n")
    os.unlink(os.path.join(home.control, "databytes"))  # setup wrote one
    os.symlink(target, os.path.join(home.control, "databytes"))
    cache, runner = warm(home, watches)
    assert fresh(cache, runner).databytes == 100 and runner.calls == 2
    write(target, b"20000\n")  # the link's target: no event in control/
    assert fresh(cache, runner).databytes == 20000 and runner.calls == 3
    os.unlink(os.path.join(home.control, "databytes"))
    write(os.path.join(home.control, "databytes"), b"7\n")
    assert fresh(cache, runner).databytes == 7 and runner.calls == 4
    assert fresh(cache, runner).databytes == 7 and runner.calls == 4  # no link: watch again


def test_hardLinkInControlMeansEveryRefreshChecks(home: Home, watches, tmp_path):
    os.link(os.path.join(home.control, "rcpthosts"), str(tmp_path / "rcpthosts.elsewhere"))
    cache, runner = warm(home, watches)
    fresh(cache, runner)
    fresh(cache, runner)
    assert runner.calls == 3


def test_unavailableInotifyMeansFullChecksAndOneWarning(home: Home, monkeypatch, logEvents):
    from twisted.python import _inotify

    def refuse():
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(_inotify, "init", refuse)
    watches = DirWatches(MemoryReactor())
    cache = ControlCache(home, watches)
    rules = RulesFile(os.path.join(home.rules, "smtp"), "smtp", watches)
    runner = Counting()
    for _ in range(3):
        fresh(cache, runner)
        rules.refresh(runner)
    assert runner.calls == 6
    warnings = [line for line in logLines(logEvents) if "inotify" in line]
    assert warnings == [
        "warning: inotify is unavailable (Too many open files): control/ and the rules files "
        "are checked with stat before each connection and delivery"]


@pytest.mark.parametrize("mask", [IN_Q_OVERFLOW, IN_IGNORED, IN_DELETE_SELF])
def test_brokenWatchMeansFullCheckThenWatchesAgain(home: Home, watches, mask):
    cache, runner = warm(home, watches)
    [watch] = watches._watches
    watches.events(struct.pack("=iIII", -1 if mask == IN_Q_OVERFLOW else watch._wd, mask, 0, 0))
    fresh(cache, runner)
    assert runner.calls == 2
    assert watches.reactor.getReaders() == [watches]  # the descriptor is still read
    write(os.path.join(home.control, "databytes"), b"99\n")
    assert fresh(cache, runner).databytes == 99 and runner.calls == 3
    fresh(cache, runner)
    assert runner.calls == 3


def test_controlDirectoryReplacedIsSeen(home: Home, watches):
    """A real IN_MOVE_SELF: control/ renamed away and a new one put in its place."""
    cache, runner = warm(home, watches)
    old = home.control + ".old"
    os.rename(home.control, old)
    shutil.copytree(old, home.control)
    write(os.path.join(home.control, "databytes"), b"4321\n")
    assert fresh(cache, runner).databytes == 4321 and runner.calls == 2
    write(os.path.join(old, "databytes"), b"1\n")  # the old directory is not watched any more
    assert fresh(cache, runner).databytes == 4321 and runner.calls == 2
    write(os.path.join(home.control, "databytes"), b"5\n")
    assert fresh(cache, runner).databytes == 5 and runner.calls == 3


def test_watchedFileOutsideControlMeansFullChecks(home: Home, watches, tmp_path):
    checked: list = []

    class Source:
        def __init__(self, path):
            self.path = path

        def check(self):
            checked.append(self.path)

    inside = ControlCache(home, watches)
    inside.watch(Source(os.path.join(home.control, "servercert.pem")))
    runner = Counting()
    fresh(inside, runner)
    fresh(inside, runner)
    assert runner.calls == 1
    outside = ControlCache(home, watches)
    outside.watch(Source(str(tmp_path / "servercert.pem")))
    fresh(outside, runner)
    fresh(outside, runner)
    assert runner.calls == 3 and len(checked) == 3



def test_requestDuringACheckWithoutEventSharesIt(home: Home, watches):
    cache, _ = warm(home, watches)
    runner = HeldRunner()
    write(os.path.join(home.control, "databytes"), b"600\n")
    first = cache.refresh(runner)
    second = cache.refresh(runner)  # no event since the check began: that check will do
    assert len(runner.pending) == 1 and not second.called
    runner.runOne()
    assert first.result.databytes == second.result.databytes == 600
    write(os.path.join(home.control, "databytes"), b"700\n")
    third = cache.refresh(runner)
    write(os.path.join(home.control, "databytes"), b"800\n")  # during the check
    fourth = cache.refresh(runner)  # must wait for the next check
    runner.runOne()
    assert third.result.databytes in (700, 800) and not fourth.called
    runner.runOne()
    assert fourth.result.databytes == 800 and runner.pending == []


def test_scanDirectoryTellsWhetherAWatchIsEnough(tmp_path):
    write(str(tmp_path / "a"), b"x")
    assert scanDirectory(str(tmp_path))[1]
    os.symlink("a", str(tmp_path / "b"))
    stamp, usable = scanDirectory(str(tmp_path))
    assert not usable and [e[0] for e in stamp] == ["a", "b"]
    assert scanDirectory(str(tmp_path / "missing")) == ((), False)


# --- rules files ----------------------------------------------------------------------------


def _rules(path: str, watches: DirWatches) -> tuple[RulesFile, Counting]:
    rules = RulesFile(path, "smtp", watches)
    rules.reload()
    runner = Counting()
    rules.refresh(runner)
    assert runner.calls == 1
    return rules, runner


def _env(rules: RulesFile, runner: Counting) -> dict:
    got: list = []
    rules.refresh(runner).addBoth(got.append)
    assert got == [[]] or isinstance(got[0], list), got
    return rules.ruleSet.match("127.0.0.1").env


def test_rulesNoEditNoThreadJobAndEditsAreSeen(home: Home, watches):
    path = os.path.join(home.rules, "smtp")
    write(path, b'127.:allow,A="1"\n')
    rules, runner = _rules(path, watches)
    assert _env(rules, runner) == {"A": b"1"} and _env(rules, runner) == {"A": b"1"}
    assert runner.calls == 1
    write(path, b'127.:allow,A="2"\n')  # in place, same size
    assert _env(rules, runner) == {"A": b"2"} and runner.calls == 2
    write(path + ".tmp", b'127.:allow,A="3"\n')
    os.rename(path + ".tmp", path)
    assert _env(rules, runner) == {"A": b"3"} and runner.calls == 3
    write(os.path.join(home.rules, "qmtp"), b":deny\n")  # another listener's file
    assert _env(rules, runner) == {"A": b"3"} and runner.calls == 3
    os.unlink(path)
    assert _env(rules, runner) == {} and runner.calls == 4


def test_symlinkedRulesFileMeansEveryRefreshChecks(home: Home, watches, tmp_path):
    target = str(tmp_path / "rules.real")
    write(target, b'127.:allow,A="1"\n')
    path = os.path.join(home.rules, "smtp")
    os.symlink(target, path)
    rules, runner = _rules(path, watches)
    assert _env(rules, runner) == {"A": b"1"} and runner.calls == 2
    write(target, b'127.:allow,A="22"\n')
    assert _env(rules, runner) == {"A": b"22"} and runner.calls == 3


def test_rulesWithoutPathKeepTheirBehaviour(watches):
    rules = RulesFile(None, "smtp", watches)
    runner = Counting()
    rules.refresh(runner)
    rules.refresh(runner)
    assert runner.calls == 2 and watches._watches == [] and rules.ruleSet.rules == []


def test_rulesForcedRefreshAlwaysChecks(home: Home, watches):
    path = os.path.join(home.rules, "smtp")
    write(path, b'127.:allow,A="1"\n')
    rules, runner = _rules(path, watches)
    rules.refresh(runner, force=True)
    assert runner.calls == 2


# --- with the real reactor and threads ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_realReactorAndThreads(home: Home) -> None:
    from twisted.internet import reactor

    watches = DirWatches(reactor)
    try:
        cache = ControlCache(home, watches)
        runner = Counting(deferToThread)
        await cache.refresh(runner)
        write(os.path.join(home.control, "databytes"), b"31\n")
        assert (await cache.refresh(runner)).databytes == 31 and runner.calls == 2
        assert (await cache.refresh(runner)).databytes == 31 and runner.calls == 2
        write(os.path.join(home.control, "databytes"), b"32\n")
        [watch] = watches._watches
        watches.doRead()  # what the reactor does when the descriptor is readable
        assert watch.changed()
        assert (await cache.refresh(runner)).databytes == 32 and runner.calls == 3
    finally:
        watches.stopService()
    assert watches.fileno() == -1 and watches not in reactor.getReaders()
    assert watch.changed()  # closed: every refresh is a full check again


def test_eventForAnotherNameOfTheRulesDirectoryIsIgnored(home: Home, watches):
    path = os.path.join(home.rules, "smtp")
    rules, runner = _rules(path, watches)
    [watch] = watches._watches
    name = b"qmtp\0\0\0\0"
    watches.events(struct.pack("=iIII", watch._wd, IN_MODIFY, 0, len(name)) + name)
    assert not watch.changed()
    name = b"smtp\0\0\0\0"
    watches.events(struct.pack("=iIII", watch._wd, IN_MODIFY, 0, len(name)) + name)
    assert watch.changed()


# --- mounts ---------------------------------------------------------------------------------


def _mountinfo(tmp_path, *lines: str) -> str:
    path = str(tmp_path / "mountinfo")
    write(path, "".join(line + "\n" for line in lines).encode())
    return path


def test_mountProblem(tmp_path):
    from qmtwist.dirwatch import mountProblem

    control = str(tmp_path / "my home" / "control")
    os.makedirs(control)
    escaped = str(tmp_path / "my home").replace(" ", "\\040")
    local = _mountinfo(tmp_path, "22 1 8:1 / / rw - ext4 /dev/vda rw",
                       f"30 22 0:40 / {escaped} rw - nfs4 srv:/home rw",
                       f"31 30 8:1 / {escaped}/control rw - ext4 /dev/vdb rw")
    assert mountProblem(control, local) is None  # the nearest mount is local
    assert mountProblem(str(tmp_path / "my home"), local) == "has a mount inside it"
    remote = _mountinfo(tmp_path, "22 1 8:1 / / rw - ext4 /dev/vda rw",
                        f"30 22 0:40 / {escaped} rw shared:1 - nfs4 srv:/home rw")
    assert mountProblem(control, remote) == "is on nfs4"
    fuse = _mountinfo(tmp_path, "22 1 8:1 / / rw - fuse.sshfs host: rw")
    assert mountProblem(control, fuse) == "is on fuse.sshfs"
    assert mountProblem(control, str(tmp_path / "no such file")) is None


def test_remoteFileSystemMeansFullChecksAndOneWarning(home: Home, watches, monkeypatch, logEvents):
    from qmtwist import dirwatch

    monkeypatch.setattr(dirwatch, "mountProblem", lambda path: "is on nfs4")
    cache = ControlCache(home, watches)
    runner = Counting()
    for _ in range(3):
        fresh(cache, runner)
    assert runner.calls == 3
    assert [line for line in logLines(logEvents) if "inotify" in line] == [
        f"warning: {home.control} is on nfs4: inotify does not see every change there; it is "
        "checked with stat before each connection and delivery"]


def test_fileStamp(tmp_path):
    from qmtwist.dirwatch import fileStamp

    path = str(tmp_path / "rules")
    assert fileStamp(path, "old") == (None, True)  # missing: its creation is an event
    write(path, b"x")
    st = os.stat(path)
    assert fileStamp(path, "old") == ((st.st_mtime_ns, 1, st.st_ino), True)
    os.link(path, str(tmp_path / "other"))
    assert fileStamp(path, "old")[1] is False
    os.symlink("nowhere", str(tmp_path / "dangling"))
    assert fileStamp(str(tmp_path / "dangling"), "old") == (None, False)
    assert fileStamp(str(tmp_path / "no dir" / "rules"), "old") == (None, False)


def test_reloadDuringACheckMeansTheNextRefreshChecksAgain(home: Home, watches):
    """A SIGHUP reread that lands while a check runs drops that check's result: the watch does
    not vouch for it, so the next refresh checks again."""
    cache, _ = warm(home, watches)
    runner = HeldRunner()
    write(os.path.join(home.control, "databytes"), b"600\n")
    d = cache.refresh(runner)
    cache.reload()
    runner.runOne()
    assert d.result.databytes == 600  # the reload's reading
    cache.refresh(runner)
    assert len(runner.pending) == 1
    runner.runOne()
    cache.refresh(runner)
    assert runner.pending == []  # in force again


def test_oneDescriptorForEveryWatch(home: Home, watches):
    """control/ and two rules files of one directory: one inotify descriptor, one watch of
    rules/ shared by both files, each file seeing only its own edits."""
    cache, runner = warm(home, watches)
    smtp, smtpRunner = _rules(os.path.join(home.rules, "smtp"), watches)
    qmtp, qmtpRunner = _rules(os.path.join(home.rules, "qmtp"), watches)
    assert watches.reactor.getReaders() == [watches]
    control, smtpWatch, qmtpWatch = watches._watches
    assert smtpWatch._wd == qmtpWatch._wd != control._wd
    write(os.path.join(home.rules, "qmtp"), b'127.:allow,Q="1"\n')
    assert _env(smtp, smtpRunner) == {} and smtpRunner.calls == 1
    assert _env(qmtp, qmtpRunner) == {"Q": b"1"} and qmtpRunner.calls == 2
    fresh(cache, runner)
    assert runner.calls == 1
    # the rules directory replaced: both files' watches are lost and added again
    os.rename(home.rules, home.rules + ".old")
    os.mkdir(home.rules)
    write(os.path.join(home.rules, "smtp"), b'127.:allow,S="2"\n')
    assert _env(smtp, smtpRunner) == {"S": b"2"} and _env(qmtp, qmtpRunner) == {}
    assert (smtpRunner.calls, qmtpRunner.calls) == (2, 3)
    write(os.path.join(home.rules, "qmtp"), b'127.:allow,Q="3"\n')
    assert _env(qmtp, qmtpRunner) == {"Q": b"3"} and qmtpRunner.calls == 4
    assert _env(smtp, smtpRunner) == {"S": b"2"} and smtpRunner.calls == 2
    fresh(cache, runner)
    assert runner.calls == 1


def test_editBetweenTheAddOnAThreadAndItsRegistrationIsSeen(home: Home, watches):
    """The first check adds the watch on its thread; an event that the reactor reads before the
    check's result is back (its watch not registered yet) still counts."""
    cache = ControlCache(home, watches)
    runner = HeldRunner()
    d = cache.refresh(runner)
    [(fn, job)] = runner.pending
    runner.pending.clear()
    result = fn()  # the thread's part: add the watch, scan
    write(os.path.join(home.control, "databytes"), b"4444\n")
    watches.doRead()  # the reactor reads the event before the result comes back
    job.callback(result)
    assert d.result.databytes != 4444
    later = cache.refresh(runner)
    assert len(runner.pending) == 1
    runner.runOne()
    assert later.result.databytes == 4444
