"""Control files (docs/behaviour/control.md 2.1-2.3): formats, defaults, warnings, unreadable files,
reload."""

from __future__ import annotations

import os

import pytest

from qmtwist import control
from qmtwist.context import ControlCache
from qmtwist.control import Control, load, parseInt, parseLine, parseList, parseMap
from qmtwist.errors import ControlError
from qmtwist.home import Home


def write(directory, name: str, data: bytes) -> None:
    with open(os.path.join(str(directory), name), "wb") as f:
        f.write(data)


def unreadable(directory, name: str) -> None:
    """Make control/NAME unreadable even for root: a directory cannot be read as a file."""
    path = os.path.join(str(directory), name)
    if os.path.exists(path):
        os.unlink(path)
    os.mkdir(path)


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


def test_cacheCurrentRereadsAfterMtimeChange(home: Home):
    cache = ControlCache(home)
    assert cache.current().databytes == 0
    write(home.control, "databytes", b"100\n")
    _bump(os.path.join(home.control, "databytes"), 5)
    assert cache.current().databytes == 100
    assert cache.snapshot.databytes == 0
    # an in-place rewrite with a new mtime is also noticed
    write(home.control, "databytes", b"200\n")
    _bump(os.path.join(home.control, "databytes"), 10)
    assert cache.current().databytes == 200


def test_cacheCurrentUnchangedWithoutChange(home: Home):
    cache = ControlCache(home)
    first = cache.current()
    assert first is cache.snapshot
    assert cache.current() is first


def test_cacheCurrentSeesNewFile(home: Home):
    cache = ControlCache(home)
    assert cache.current().smtproutes == {}
    write(home.control, "smtproutes", b":relay.example\n")
    assert cache.current().smtproutes == {b"": b"relay.example"}


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
        "localiphost", "locals", "morercpthosts", "percenthack", "plusdomain", "qmtproutes",
        "queueextra", "queuelifetime", "rcpthosts", "smtpgreeting", "smtproutes",
        "timeoutconnect", "timeoutremote", "timeoutsmtpd", "tlsverify", "virtualdomains",
    }
    assert names == expected
