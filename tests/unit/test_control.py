"""Control files (docs/behaviour/control.md 2.1-2.3): formats, defaults, warnings, unreadable files,
reload."""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import pytest
from twisted.internet.defer import Deferred, maybeDeferred

from qmtwist import control
from qmtwist.context import ControlCache
from qmtwist.control import Control, load, parseInt, parseLine, parseList, parseMap
from qmtwist.errors import ControlError
from qmtwist.home import Home
from tests.conftest import logLines
from tests.support import HeldRunner


def write(directory, name: str, data: bytes) -> None:
    with open(os.path.join(str(directory), name), "wb") as f:
        f.write(data)


def unreadable(directory, name: str) -> None:
    """
    Make control/NAME unreadable even for root: a symbolic link to itself exists but every
    open or stat fails (ELOOP). (A directory no longer serves: it is not a regular file, so it
    counts as missing, with a warning.)
    """
    path = os.path.join(str(directory), name)
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(name, path)


def withoutHanging(fifo: str, fn: Callable[[], Any]) -> Any:
    """
    C{fn()}, which must not hang on the FIFO C{fifo}: run on a thread; if it is still running
    after a while, a writer releases it and the test fails instead of hanging.
    """
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(10)
    hung = t.is_alive()
    while t.is_alive():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        t.join(0.1)
    assert not hung, f"blocked on the FIFO {fifo}"
    [result] = out
    return result


@pytest.fixture
def cdir(tmp_path):
    d = tmp_path / "control"
    d.mkdir()
    write(d, "me", b"Mail.Example  \t\nsecond\n")
    return d


# --- the four formats -----------------------------------------------------------------------


def test_parseLineFirstLineTrailingBlanksRemoved():
    assert parseLine(b"host.example \t\r\nother\n") == b"host.example"
    assert parseLine(b"  lead stays\n") == b"  lead stays"
    assert parseLine(b"") == b""
    assert parseLine(b"no newline") == b"no newline"


def test_parseIntLeadingDigits():
    assert parseInt(b"42\n") == 42
    assert parseInt(b"42abc\n") == 42
    assert parseInt(b"abc\n") is None
    assert parseInt(b"\n7\n") is None
    assert parseInt(b"") is None


def test_parseListSkipsBlankAndCommentLines():
    data = b"one\n\n# comment\ntwo \t\n   \nthree"
    assert parseList(data) == [(1, b"one"), (4, b"two"), (6, b"three")]


def test_parseMapFirstColonLastKeyWins():
    warnings = []
    data = b"A.Example:x:y\nnocolon\nb.example:\na.example:z\n"
    result = parseMap(data, lambda n, p: warnings.append((n, p)))
    assert result == {b"a.example": b"z", b"b.example": b""}
    assert warnings == [(2, "no colon; line ignored")]


def test_mapSplitsAtFirstColon(cdir):
    write(cdir, "smtproutes", b"a.example:relay.example:2525\n:smarthost\n")
    c, warnings = load(str(cdir))
    assert c.smtproutes == {b"a.example": b"relay.example:2525", b"": b"smarthost"}
    assert warnings == []


# --- defaults ---------------------------------------------------------------------------------


def test_defaultsWithOnlyMe(cdir):
    c, warnings = load(str(cdir))
    assert warnings == []
    assert c.me == b"Mail.Example"
    for name in ("bouncehost", "defaultdomain", "defaulthost", "doublebouncehost",
                 "envnoathost", "helohost", "idhost", "localiphost", "plusdomain",
                 "smtpgreeting"):
        assert getattr(c, name) == b"Mail.Example", name
    assert c.locals == frozenset([b"mail.example"])
    assert c.isLocal(b"MAIL.example")
    assert c.bouncefrom == b"MAILER-DAEMON"
    assert c.doublebounceto == b"postmaster"
    assert c.concurrencylocal == 10
    assert c.concurrencyremote == 20
    assert c.databytes == 0
    assert c.queuelifetime == 604800
    assert c.timeoutconnect == 60
    assert c.timeoutremote == 1200
    assert c.timeoutsmtpd == 1200
    assert c.rcpthosts is None
    assert c.morercpthosts == ()
    assert c.badmailfrom == ()
    assert c.percenthack == frozenset()
    assert c.virtualdomains == {}
    assert c.smtproutes == {}
    assert c.qmtproutes == {}
    assert c.queueextra == ()
    assert c.tlsverify == ()
    assert c.defaultdelivery == b"./Maildir/\n"


def test_literalFallbacksWithoutMe(cdir):
    os.unlink(os.path.join(str(cdir), "me"))
    write(cdir, "locals", b"a.example\n")
    c, warnings = load(str(cdir))
    assert warnings == []
    assert c.me == b""
    assert c.bouncehost == b"bouncehost"
    assert c.defaultdomain == b"defaultdomain"
    assert c.defaulthost == b"defaulthost"
    assert c.doublebouncehost == b"doublebouncehost"
    assert c.envnoathost == b"envnoathost"
    assert c.idhost == b"idhost"
    assert c.plusdomain == b"plusdomain"
    assert c.locals == frozenset([b"a.example"])


def test_noMeAndNoLocalsRefusesToStart(cdir):
    os.unlink(os.path.join(str(cdir), "me"))
    with pytest.raises(ControlError):
        load(str(cdir))


def test_emptyLineFileMeansDefault(cdir):
    write(cdir, "bouncehost", b"\n")
    write(cdir, "bouncefrom", b"  \t\n")
    c, _ = load(str(cdir))
    assert c.bouncehost == b"Mail.Example"
    assert c.bouncefrom == b"MAILER-DAEMON"


def test_lineValuesFromFiles(cdir):
    write(cdir, "bouncefrom", b"Bounces \nignored\n")
    write(cdir, "smtpgreeting", b"mx.example ESMTP hi\n")
    c, _ = load(str(cdir))
    assert c.bouncefrom == b"Bounces"
    assert c.smtpgreeting == b"mx.example ESMTP hi"


def test_localsFileReplacesMe(cdir):
    write(cdir, "locals", b"A.Example\n# c\n\nlocalhost \n")
    c, _ = load(str(cdir))
    assert c.locals == frozenset([b"a.example", b"localhost"])
    assert not c.isLocal(b"mail.example")


def test_emptyLocalsIsNullClient(cdir):
    """FAQ 2.2: an empty locals file means no local domains at all, not me."""
    write(cdir, "locals", b"")
    c, warnings = load(str(cdir))
    assert c.locals == frozenset()
    assert warnings == []


def test_listsLoweredWhereCompared(cdir):
    write(cdir, "rcpthosts", b"A.Example\n.Sub.Example\n")
    write(cdir, "morercpthosts", b"M.Example\n")
    write(cdir, "percenthack", b"PH.Example\n")
    write(cdir, "badmailfrom", b"Joe@Bad.Example\n@Worse.Example\n")
    write(cdir, "queueextra", b"Log\n")
    c, _ = load(str(cdir))
    assert c.rcpthosts == (b"a.example", b".sub.example")
    assert c.morercpthosts == (b"m.example",)
    assert c.percenthack == frozenset([b"ph.example"])
    assert c.badmailfrom == (b"joe@bad.example", b"@worse.example")
    assert c.queueextra == (b"Log",)


def test_virtualdomainsKeysLoweredValuesKept(cdir):
    write(cdir, "virtualdomains", b"Nowhere.MIL:Bob\nx.y:\n")
    c, _ = load(str(cdir))
    assert c.virtualdomains == {b"nowhere.mil": b"Bob", b"x.y": b""}


def test_intValues(cdir):
    write(cdir, "concurrencyremote", b"5 \n")
    write(cdir, "databytes", b"1000000bytes\n")
    write(cdir, "concurrencylocal", b"0\n")
    c, warnings = load(str(cdir))
    assert (c.concurrencyremote, c.databytes, c.concurrencylocal) == (5, 1000000, 0)
    assert warnings == []


def test_timeoutsmtpdZeroMeansOne(cdir):
    write(cdir, "timeoutsmtpd", b"0\n")
    c, _ = load(str(cdir))
    assert c.timeoutsmtpd == 1


def test_negativeIntIsNotANumber(cdir):
    write(cdir, "concurrencylocal", b"-1\n")
    write(cdir, "queuelifetime", b"-5\n")
    c, warnings = load(str(cdir))
    assert c.concurrencylocal == 10
    assert c.queuelifetime == 604800
    assert warnings == [
        "warning: control/concurrencylocal line 1: not a number; using default 10",
        "warning: control/queuelifetime line 1: not a number; using default 604800",
    ]


def test_defaultdeliveryWholeText(cdir):
    write(cdir, "defaultdelivery", b"./Mailbox\n|echo hi\n")
    c, _ = load(str(cdir))
    assert c.defaultdelivery == b"./Mailbox\n|echo hi\n"
    write(cdir, "defaultdelivery", b"\n \n")
    c, _ = load(str(cdir))
    assert c.defaultdelivery == b"./Maildir/\n"


# --- warnings ---------------------------------------------------------------------------------


def test_malformedIntWarnsAndUsesDefault(cdir):
    write(cdir, "concurrencyremote", b"many\n")
    c, warnings = load(str(cdir))
    assert c.concurrencyremote == 20
    assert warnings == ["warning: control/concurrencyremote line 1: not a number; using default 20"]


def test_malformedIntOnReloadKeepsPrevious(cdir):
    write(cdir, "concurrencyremote", b"7\n")
    first, _ = load(str(cdir))
    write(cdir, "concurrencyremote", b"lots\n")
    second, warnings = load(str(cdir), first)
    assert second.concurrencyremote == 7
    assert warnings == [
        "warning: control/concurrencyremote line 1: not a number; keeping previous value 7"]


def test_mapLineWithoutColonNamesFileAndLine(cdir):
    write(cdir, "virtualdomains", b"# comment\na.example:alias\nbroken line\n")
    c, warnings = load(str(cdir))
    assert c.virtualdomains == {b"a.example": b"alias"}
    assert warnings == ["warning: control/virtualdomains line 3: no colon; line ignored"]


def test_listLineWithNulIgnored(cdir):
    write(cdir, "rcpthosts", b"a.example\nb\0c\n")
    c, warnings = load(str(cdir))
    assert c.rcpthosts == (b"a.example",)
    assert warnings == ["warning: control/rcpthosts line 2: contains NUL; line ignored"]


def test_recipientmapObsoleteWarning(cdir):
    write(cdir, "recipientmap", b"a:b\n")
    _, warnings = load(str(cdir))
    assert warnings == ["warning: control/recipientmap is obsolete (qmail 1.01); ignored"]


# --- values that would break envelopes, headers and protocol lines ---------------------------


def test_lineWithControlCharacterUsesDefaultThenKeepsPrevious(cdir):
    """A CR inside a LINE value would end up in bounces, headers, HELO; it is refused."""
    write(cdir, "bouncehost", b"bad\rhost.example\n")
    write(cdir, "helohost", b"helo\x1bthere\n")
    c, warnings = load(str(cdir))
    assert (c.bouncehost, c.helohost) == (b"Mail.Example", b"Mail.Example")
    assert warnings == [
        "warning: control/bouncehost line 1: contains a control character; "
        "using default Mail.Example",
        "warning: control/helohost line 1: contains a control character; "
        "using default Mail.Example",
    ]
    write(cdir, "bouncehost", b"good.example\n")
    good, _ = load(str(cdir), c)
    write(cdir, "bouncehost", b"bad\rhost.example\n")
    again, warnings = load(str(cdir), good)
    assert again.bouncehost == b"good.example"
    assert ("warning: control/bouncehost line 1: contains a control character; "
            "keeping previous value good.example") in warnings


def test_everyLineFileIsChecked(cdir):
    names = [n for n, (fmt, _m, _l) in control._FILES.items() if fmt == control.LINE] + ["me"]
    for name in names:
        write(cdir, name, b"x\ry\n")
    write(cdir, "locals", b"mail.example\n")
    c, warnings = load(str(cdir))
    for name in names:
        assert b"\r" not in getattr(c, name), name
        assert any(w.startswith(f"warning: control/{name} line 1: contains a control character")
                   for w in warnings), name


def test_meWithControlCharacterKeepsPreviousOnReload(cdir):
    first, _ = load(str(cdir))
    write(cdir, "me", b"evil\r\nRCPT TO:<x>\n")  # only the first line counts: "evil"
    write(cdir, "me", b"ev\ril.example\n")
    second, warnings = load(str(cdir), first)
    assert second.me == b"Mail.Example"
    assert second.bouncehost == b"Mail.Example"
    assert warnings == ["warning: control/me line 1: contains a control character; "
                        "keeping previous value Mail.Example"]


def test_smtpgreetingMayHoldATab(cdir):
    write(cdir, "smtpgreeting", b"mail.example\tthe mail host\n")
    c, warnings = load(str(cdir))
    assert (c.smtpgreeting, warnings) == (b"mail.example\tthe mail host", [])


def test_queueextraBadLinesIgnored(cdir):
    write(cdir, "queueextra", b"log\r@x.example\ncopy@x.example\n" + b"a" * 1003 + b"\n")
    c, warnings = load(str(cdir))
    assert c.queueextra == (b"copy@x.example",)
    assert warnings == [
        "warning: control/queueextra line 1: contains a control character; line ignored",
        "warning: control/queueextra line 3: longer than 1002 bytes; line ignored",
    ]
    assert control.readList(str(cdir), "queueextra") == ([b"copy@x.example"], warnings)


def test_virtualdomainsValueWithControlCharacterIgnored(cdir):
    write(cdir, "virtualdomains", b"a.example:pre\x7ffix\nb.example:ok\n")
    c, warnings = load(str(cdir))
    assert c.virtualdomains == {b"b.example": b"ok"}
    assert warnings == [
        "warning: control/virtualdomains line 1: contains a control character; line ignored"]


# --- files that are not regular files ----------------------------------------------------------


def test_fifoIsMissingWithWarningAndNeverBlocks(cdir):
    write(cdir, "rcpthosts", b"a.example\n")
    first, _ = load(str(cdir))
    os.unlink(os.path.join(str(cdir), "rcpthosts"))
    fifo = os.path.join(str(cdir), "rcpthosts")
    os.mkfifo(fifo)
    for previous in (None, first):
        c, warnings = withoutHanging(fifo, lambda p=previous: load(str(cdir), p))
        assert c.rcpthosts is None
        assert warnings == ["warning: control/rcpthosts is not a regular file; ignored"]


def test_directoryIsNotARegularFile(cdir):
    os.mkdir(os.path.join(str(cdir), "smtproutes"))
    c, warnings = load(str(cdir))
    assert c.smtproutes == {}
    assert warnings == ["warning: control/smtproutes is not a regular file; ignored"]


def test_readControlFile(cdir):
    path = os.path.join(str(cdir), "x")
    assert control.readControlFile(path) is None
    write(cdir, "x", b"data\n")
    assert control.readControlFile(path) == b"data\n"
    os.symlink("x", os.path.join(str(cdir), "link"))  # a link to a regular file is fine
    assert control.readControlFile(os.path.join(str(cdir), "link")) == b"data\n"
    with pytest.raises(control.NotRegularFile):
        control.readControlFile("/dev/null")


# --- unreadable files -------------------------------------------------------------------------


def test_unreadableAtStartIsFatal(cdir):
    unreadable(cdir, "rcpthosts")
    with pytest.raises(ControlError) as e:
        load(str(cdir))
    assert str(e.value) == "alert: unable to read control/rcpthosts"


def test_unreadableOnReloadKeepsPrevious(cdir):
    write(cdir, "rcpthosts", b"a.example\n")
    write(cdir, "concurrencylocal", b"3\n")
    first, _ = load(str(cdir))
    unreadable(cdir, "rcpthosts")
    unreadable(cdir, "concurrencylocal")
    second, warnings = load(str(cdir), first)
    assert second.rcpthosts == (b"a.example",)
    assert second.concurrencylocal == 3
    assert sorted(warnings) == [
        "alert: unable to reread control/concurrencylocal",
        "alert: unable to reread control/rcpthosts",
    ]


def test_reloadMissingFileMeansDefaultNotPrevious(cdir):
    write(cdir, "concurrencylocal", b"3\n")
    first, _ = load(str(cdir))
    os.unlink(os.path.join(str(cdir), "concurrencylocal"))
    second, warnings = load(str(cdir), first)
    assert second.concurrencylocal == 10
    assert warnings == []


def test_reloadLocalsMissingFollowsNewMe(cdir):
    first, _ = load(str(cdir))
    write(cdir, "me", b"other.example\n")
    second, _ = load(str(cdir), first)
    assert second.locals == frozenset([b"other.example"])
    assert second.bouncehost == b"other.example"


def test_controlIsFrozen():
    c = Control()
    with pytest.raises(Exception):
        c.me = b"x"  # type: ignore[misc]


# --- ControlCache ---------------------------------------------------------------------------


def _bump(path: str, seconds: int) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_cacheSnapshotChangesOnlyOnReload(home: Home):
    cache = ControlCache(home)
    assert cache.snapshot.concurrencyremote == 20
    path = os.path.join(home.control, "concurrencyremote")
    write(home.control, "concurrencyremote", b"4\n")
    _bump(path, 5)
    assert cache.snapshot.concurrencyremote == 20
    assert cache.reload() == []
    assert cache.snapshot.concurrencyremote == 4
    assert cache.current().concurrencyremote == 4


def _fresh(cache: ControlCache) -> Control:
    """L{ControlCache.refresh} with a runner that runs the check at once (no thread)."""
    got: list = []
    cache.refresh(maybeDeferred).addBoth(got.append)
    [result] = got
    assert isinstance(result, Control), result
    assert result is cache.current()
    return result


def test_cacheCurrentRereadsAfterMtimeChange(home: Home):
    cache = ControlCache(home)
    before = cache.current().databytes
    assert before != 100
    write(home.control, "databytes", b"100\n")
    _bump(os.path.join(home.control, "databytes"), 5)
    assert cache.current().databytes == before  # current() never reads: refresh() does
    assert _fresh(cache).databytes == 100
    assert cache.snapshot.databytes == before
    # an in-place rewrite with a new mtime is also noticed
    write(home.control, "databytes", b"200\n")
    _bump(os.path.join(home.control, "databytes"), 10)
    assert _fresh(cache).databytes == 200


def test_cacheCurrentUnchangedWithoutChange(home: Home):
    cache = ControlCache(home)
    first = cache.current()
    assert first is cache.snapshot
    assert cache.current() is first


def test_cacheCurrentSeesNewFile(home: Home):
    cache = ControlCache(home)
    assert cache.current().smtproutes == {}
    write(home.control, "smtproutes", b":relay.example\n")
    assert _fresh(cache).smtproutes == {b"": b"relay.example"}



def test_cacheRefreshReadsOnlyInTheRunnerAndShares(home: Home, monkeypatch):
    """Nothing is read by refresh() itself; requests during a check share the next one."""
    cache = ControlCache(home)
    reads: list = []
    real = control.readControlFile
    monkeypatch.setattr(control, "readControlFile", lambda p: reads.append(p) or real(p))
    runner = HeldRunner()
    write(home.control, "smtproutes", b":one.example\n")
    got: list = []
    cache.refresh(runner).addCallback(got.append)
    assert (reads, got, len(runner.pending)) == ([], [], 1)
    second = cache.refresh(runner)
    third = cache.refresh(runner)
    assert len(runner.pending) == 1  # one check at a time
    runner.runOne()
    assert reads and got[0].smtproutes == {b"": b"one.example"}
    # the two that came while the first check was under way wait for the next one, which
    # sees what changed meanwhile
    assert not second.called and len(runner.pending) == 1
    write(home.control, "smtproutes", b":two.example\n")
    _bump(os.path.join(home.control, "smtproutes"), 5)
    runner.runOne()
    assert second.result.smtproutes == third.result.smtproutes == {b"": b"two.example"}
    assert runner.pending == []


def test_cacheRefreshRunsWatchedChecksAndAppliesThem(home: Home):
    applied: list = []

    class Source:
        def check(self):
            return lambda: applied.append("on the caller's side")

    cache = ControlCache(home)
    cache.watch(Source())
    runner = HeldRunner()
    d = cache.refresh(runner)
    assert applied == []
    runner.runOne()
    assert applied == ["on the caller's side"] and d.called


def test_cacheRefreshThatCrashesKeepsValues(home: Home, logEvents):
    class Broken:
        def check(self):
            raise RuntimeError("boom")

    cache = ControlCache(home)
    before = cache.current()
    cache.watch(Broken())
    assert _fresh(cache) is before
    assert "control files check failed" in logLines(logEvents)


def test_cacheReloadOffThreadReadsOnlyInTheRunner(home: Home, logEvents):
    """SIGHUP's reload: the files are read by the callable given to the runner (a thread in
    the daemon); nothing changes until it has run, then the values and warnings apply."""
    from tests.conftest import logLines

    cache = ControlCache(home)
    write(home.control, "concurrencyremote", b"4\n")
    unreadable(home.control, "rcpthosts")
    held: list[Callable[[], Any]] = []
    cache.reloadOffThread(lambda f: (held.append(f), Deferred())[1])
    assert cache.snapshot.concurrencyremote == 20  # nothing read on this thread
    assert len(held) == 1
    results: list[list[str]] = []
    cache.reloadOffThread(lambda f: maybeDeferred(f)).addCallback(results.append)
    assert results == [["alert: unable to reread control/rcpthosts"]]
    assert cache.snapshot.concurrencyremote == 4 and cache.current().concurrencyremote == 4
    assert cache.snapshot.rcpthosts == (b"test.example", b"localhost")
    assert "alert: unable to reread control/rcpthosts" in logLines(logEvents)


def test_cacheReloadOffThreadCrashKeepsValues(home: Home, logEvents):
    from twisted.internet.defer import fail

    from tests.conftest import logLines

    cache = ControlCache(home)
    before = cache.snapshot
    results = []
    cache.reloadOffThread(lambda f: fail(RuntimeError("boom"))).addCallback(results.append)
    assert results == [[]] and cache.snapshot is before
    assert "control files reload failed" in logLines(logEvents)


def test_cacheReloadWithoutMeAndLocalsKeepsPrevious(home: Home):
    cache = ControlCache(home)
    os.unlink(os.path.join(home.control, "me"))
    os.unlink(os.path.join(home.control, "locals"))
    cache.reload()
    assert cache.snapshot.locals == frozenset([b"test.example", b"localhost"])


def test_unreadableRecipientmapOnReloadIsNotFatal(cdir):
    first, _ = load(str(cdir))
    unreadable(cdir, "recipientmap")
    second, _ = load(str(cdir), first)
    assert second == first


def test_cacheReloadUnreadableKeepsAndLogs(home: Home, logEvents):
    from tests.conftest import logLines

    cache = ControlCache(home)
    unreadable(home.control, "rcpthosts")
    warnings = cache.reload()
    assert warnings == ["alert: unable to reread control/rcpthosts"]
    assert cache.snapshot.rcpthosts == (b"test.example", b"localhost")
    assert "alert: unable to reread control/rcpthosts" in logLines(logEvents)


def test_cacheStartUnreadableIsFatal(home: Home):
    unreadable(home.control, "locals")
    with pytest.raises(ControlError):
        ControlCache(home)


def test_moduleNamesEveryFileOfTheTable():
    names = set(control._FILES) | {"me"}
    expected = {
        "me", "badmailfrom", "bouncefrom", "bouncehost", "concurrencylocal",
        "concurrencyremote", "databytes", "defaultdelivery", "defaultdomain", "defaulthost",
        "doublebouncehost", "doublebounceto", "envnoathost", "helohost", "idhost",
        "localiphost", "locals", "maxrcpt", "morercpthosts", "percenthack", "plusdomain", "qmtproutes",
        "queueextra", "queuelifetime", "rcpthosts", "smtpgreeting", "smtproutes",
        "timeoutconnect", "timeoutremote", "timeoutsmtpd", "tlsverify", "virtualdomains",
        "timeoutlocal", "concurrencyrecipient", "dmarcreject", "concurrencydestination",
    }
    assert names == expected
