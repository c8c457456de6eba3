"""Address resolution (docs/behaviour/queue.md 3.1) and the todo pass (docs/behaviour/queue.md 5.5) on real
files."""

from __future__ import annotations

import os

import pytest

from qmtwist.control import Control
from qmtwist.home import Home
from qmtwist.queue.preprocess import (
    Preprocessed, Problem, preprocessBatch, resolveRecipient, splitAddress, unprefix)
from qmtwist.queue.store import Syncer, inject


def ctl(locals_=(b"me.example",), virtual=None, percenthack=(), envnoathost=b"me.example"):
    return Control(
        me=b"me.example",
        envnoathost=envnoathost,
        locals=frozenset(locals_),
        percenthack=frozenset(percenthack),
        virtualdomains=dict(virtual or {}),
    )


# --- splitAddress -----------------------------------------------------------------------------


def test_splitAtLastAt():
    assert splitAddress(b"joe@x.com@fixme") == (b"joe@x.com", b"fixme")
    assert splitAddress(b"@host") == (b"", b"host")
    assert splitAddress(b"joe") == (b"joe", b"")


# --- every row of the docs/behaviour/queue.md 3.1 table
# ---------------------------------------------------------


def test_rowLocals():
    assert resolveRecipient(ctl([b"af.mil"]), b"boss@af.mil") == ("local", b"boss@af.mil")


def test_rowVirtualDomain():
    c = ctl(virtual={b"nowhere.mil": b"bob"})
    assert resolveRecipient(c, b"info@nowhere.mil") == ("local", b"bob-info@nowhere.mil")


def test_rowVirtualDomainWithDash():
    c = ctl(virtual={b"nowhere.mil": b"bob-nowhere"})
    assert resolveRecipient(c, b"x@nowhere.mil") == ("local", b"bob-nowhere-x@nowhere.mil")


def test_rowDotSuffix():
    c = ctl(virtual={b".fax": b"uucp-fax"})
    assert resolveRecipient(c, b"5551212@a.b.fax") == ("local", b"uucp-fax-5551212@a.b.fax")


def test_rowEmptyKey():
    c = ctl(virtual={b"": b"alias-uucp"})
    assert resolveRecipient(c, b"joe@far.org") == ("local", b"alias-uucp-joe@far.org")


def test_rowExceptionLine():
    c = ctl(virtual={b"": b"alias-uucp", b"far.org": b""})
    assert resolveRecipient(c, b"joe@far.org") == ("remote", b"joe@far.org")


def test_rowAddressWithTwoAts():
    c = ctl(virtual={b"fixme": b"fixup"})
    assert resolveRecipient(c, b"joe@x.com@fixme") == ("local", b"fixup-joe@x.com@fixme")


def test_rowNoAtGetsEnvnoathost():
    c = ctl(locals_=[b"me.example"], envnoathost=b"me.example")
    assert resolveRecipient(c, b"log") == ("local", b"log@me.example")
    c = ctl(locals_=[b"me.example"], envnoathost=b"elsewhere.example")
    assert resolveRecipient(c, b"log") == ("remote", b"log@elsewhere.example")


def test_rowPercentHack():
    c = ctl(percenthack=[b"me.ex"])
    assert resolveRecipient(c, b"u%v.org@me.ex") == ("remote", b"u@v.org")


def test_remoteWhenNothingMatches():
    assert resolveRecipient(ctl(), b"joe@far.org") == ("remote", b"joe@far.org")


# --- percent hack chains -------------------------------------------------------------------


def test_percentHackStopsAtUnlistedDomain():
    c = ctl(percenthack=[b"ph"])
    assert resolveRecipient(c, b"u%b%c@ph") == ("remote", b"u%b@c")


def test_percentHackChainsThroughListedDomains():
    c = ctl(percenthack=[b"ph", b"c"])
    assert resolveRecipient(c, b"u%b%c@ph") == ("remote", b"u@b")


def test_percentHackBeforeLocals():
    c = ctl(locals_=[b"me.example"], percenthack=[b"gw.example"])
    assert resolveRecipient(c, b"joe%me.example@gw.example") == ("local", b"joe@me.example")


def test_percentHackWithoutPercentIsUnchanged():
    c = ctl(locals_=[b"ph"], percenthack=[b"ph"])
    assert resolveRecipient(c, b"joe@ph") == ("local", b"joe@ph")


def test_percentHackOnUnlistedDomainDoesNothing():
    c = ctl(percenthack=[b"ph"])
    assert resolveRecipient(c, b"u%v.org@other") == ("remote", b"u%v.org@other")


def test_percentHackThenVirtualdomains():
    c = ctl(percenthack=[b"ph"], virtual={b"v.org": b"vu"})
    assert resolveRecipient(c, b"u%v.org@ph") == ("local", b"vu-u@v.org")


def test_percentHackCaseInsensitive():
    c = ctl(percenthack=[b"me.ex"])
    assert resolveRecipient(c, b"U%V.Org@ME.Ex") == ("remote", b"U@V.Org")


# --- case and key order ---------------------------------------------------------------------


def test_localsCaseInsensitiveKeepsCase():
    c = ctl(locals_=[b"af.mil"])
    assert resolveRecipient(c, b"Boss@AF.Mil") == ("local", b"Boss@AF.Mil")


def test_virtualdomainsCaseInsensitiveKeepsCase():
    c = ctl(virtual={b"nowhere.mil": b"Bob", b".fax": b"fx"})
    assert resolveRecipient(c, b"Info@NoWhere.MIL") == ("local", b"Bob-Info@NoWhere.MIL")
    assert resolveRecipient(c, b"5@A.FAX") == ("local", b"fx-5@A.FAX")


def test_virtualUserKeyFirst():
    c = ctl(virtual={b"joe@v.example": b"jv", b"v.example": b"dom", b"": b"all"})
    assert resolveRecipient(c, b"Joe@V.example") == ("local", b"jv-Joe@V.example")
    assert resolveRecipient(c, b"ann@v.example") == ("local", b"dom-ann@v.example")


def test_exactDomainBeforeSuffixBeforeEmptyKey():
    c = ctl(virtual={b"a.b.c": b"exact", b".b.c": b"bc", b".c": b"c", b"": b"any"})
    assert resolveRecipient(c, b"u@a.b.c") == ("local", b"exact-u@a.b.c")
    assert resolveRecipient(c, b"u@x.b.c") == ("local", b"bc-u@x.b.c")
    assert resolveRecipient(c, b"u@y.c") == ("local", b"c-u@y.c")
    assert resolveRecipient(c, b"u@d") == ("local", b"any-u@d")


def test_longestSuffixFirst():
    c = ctl(virtual={b".c": b"short", b".b.c": b"long"})
    assert resolveRecipient(c, b"u@a.b.c") == ("local", b"long-u@a.b.c")


def test_exceptionLineOnSuffix():
    c = ctl(virtual={b"": b"all", b".x.y": b""})
    assert resolveRecipient(c, b"u@a.x.y") == ("remote", b"u@a.x.y")


def test_exceptionLineOnVirtualUser():
    c = ctl(virtual={b"joe@v.example": b"", b"v.example": b"dom"})
    assert resolveRecipient(c, b"joe@v.example") == ("remote", b"joe@v.example")


def test_localsWinOverVirtualdomains():
    c = ctl(locals_=[b"me.example"], virtual={b"": b"all", b"me.example": b"x"})
    assert resolveRecipient(c, b"joe@me.example") == ("local", b"joe@me.example")


def test_emptyLocalsNullClient():
    c = ctl(locals_=[], envnoathost=b"me.example")
    assert resolveRecipient(c, b"root") == ("remote", b"root@me.example")


# --- unprefix (the bounce shows the address before the prefix) ---------------------------------


def test_unprefixDomain():
    c = ctl(virtual={b"nowhere.mil": b"bob"})
    assert unprefix(c, b"bob-info@nowhere.mil") == b"info@nowhere.mil"


def test_unprefixSuffixAndEmptyKey():
    c = ctl(virtual={b".fax": b"uucp-fax", b"": b"alias-uucp"})
    assert unprefix(c, b"uucp-fax-5551212@a.b.fax") == b"5551212@a.b.fax"
    assert unprefix(c, b"alias-uucp-joe@far.org") == b"joe@far.org"


def test_unprefixTwoAts():
    c = ctl(virtual={b"fixme": b"fixup"})
    assert unprefix(c, b"fixup-joe@x.com@fixme") == b"joe@x.com@fixme"


def test_unprefixLeavesOthersAlone():
    c = ctl(virtual={b"nowhere.mil": b"bob", b"x.y": b""})
    assert unprefix(c, b"joe@far.org") == b"joe@far.org"          # no key
    assert unprefix(c, b"u@x.y") == b"u@x.y"                      # exception line
    assert unprefix(c, b"alice-info@nowhere.mil") == b"alice-info@nowhere.mil"  # other prefix
    assert unprefix(c, b"bobinfo@nowhere.mil") == b"bobinfo@nowhere.mil"        # no dash


def test_unprefixIgnoresWholeAddressKey():
    c = ctl(virtual={b"joe@v.example": b"jv"})
    assert unprefix(c, b"jv-joe@v.example") == b"jv-joe@v.example"


def test_unprefixDomainCaseInsensitive():
    c = ctl(virtual={b"nowhere.mil": b"bob"})
    assert unprefix(c, b"bob-Info@NOWHERE.mil") == b"Info@NOWHERE.mil"


def test_unprefixUsesFirstMatchingKey():
    """qmail's stripvdomprepend stops at the first key found, even when its prefix differs."""
    c = ctl(virtual={b"a.b": b"exact", b".b": b"suffix"})
    assert unprefix(c, b"suffix-u@a.b") == b"suffix-u@a.b"
    assert unprefix(c, b"exact-u@a.b") == b"u@a.b"


# --- preprocessBatch on real files -----------------------------------------------------------


def readBytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def layout(home: Home):
    return home.queue


def control() -> Control:
    return Control(
        me=b"test.example", envnoathost=b"test.example",
        locals=frozenset([b"test.example", b"localhost"]),
        virtualdomains={b"virt.example": b"vu"})


@pytest.mark.parametrize("useSyncfs", [True, False])
def test_preprocessWritesInfoLocalRemote(layout, useSyncfs):
    q = inject(layout, b"joe@far.org", [b"a@test.example", b"b@far.org", b"c", b"d@virt.example",
                                         b"E@Far.Org"],
               b"Subject: x\n\nbody\n", b"by uid 0", uid=0, qp=77)
    n = q.id
    messSize = os.stat(layout.mess(n)).st_size
    syncer = Syncer(useSyncfs=useSyncfs)
    [result] = preprocessBatch(layout, [n], control(), syncer)
    assert isinstance(result, Preprocessed)
    assert result.id == n
    assert result.sender == b"joe@far.org"
    assert (result.uid, result.qp) == (0, 77)
    assert result.size == messSize
    assert result.local == (b"a@test.example", b"c@test.example", b"vu-d@virt.example")
    assert result.remote == (b"b@far.org", b"E@Far.Org")
    assert result.birth == os.stat(layout.info(n)).st_mtime
    assert result.stamp.endswith(f".P{n}")
    assert readBytes(layout.info(n)) == b"Fjoe@far.org\0"
    assert readBytes(layout.local(n)) == b"Ta@test.example\0Tc@test.example\0Tvu-d@virt.example\0"
    assert readBytes(layout.remote(n)) == b"Tb@far.org\0TE@Far.Org\0"
    assert not os.path.exists(layout.todo(n))
    assert not os.path.exists(layout.intd(n))
    assert os.path.exists(layout.mess(n))
    if syncer.canGroup:
        # one syncfs for the three files and their directories, then todo/ after the unlink
        assert (syncer.fileSyncs, syncer.fsSyncs, syncer.dirSyncs) == (0, 1, 1)
    else:
        # three files synced, then their directories and todo/
        assert syncer.fileSyncs == 3
        assert syncer.dirSyncs == 4


def test_preprocessOnlyLocalLeavesNoRemoteFile(layout):
    q = inject(layout, b"", [b"a@test.example"], b"x\n", b"by uid 0", uid=0, qp=1)
    # a stale remote file from an interrupted earlier pass
    with open(layout.remote(q.id), "wb") as f:
        f.write(b"Tstale@far.org\0")
    [result] = preprocessBatch(layout, [q.id], control(), Syncer())
    assert isinstance(result, Preprocessed)
    assert result.remote == ()
    assert readBytes(layout.info(q.id)) == b"F\0"
    assert readBytes(layout.local(q.id)) == b"Ta@test.example\0"
    assert not os.path.exists(layout.remote(q.id))


def test_preprocessNoRecipients(layout):
    q = inject(layout, b"joe@far.org", [], b"x\n", b"by uid 0", uid=0, qp=1)
    [result] = preprocessBatch(layout, [q.id], control(), Syncer())
    assert isinstance(result, Preprocessed)
    assert (result.local, result.remote) == ((), ())
    assert readBytes(layout.info(q.id)) == b"Fjoe@far.org\0"
    assert not os.path.exists(layout.local(q.id))
    assert not os.path.exists(layout.remote(q.id))
    assert not os.path.exists(layout.todo(q.id))


def test_preprocessQueueextraFirst(layout, home):
    with open(os.path.join(home.control, "queueextra"), "wb") as f:
        f.write(b"log\n")
    q = inject(layout, b"s@far.org", [b"r@far.org"], b"x\n", b"by uid 0", uid=0, qp=1,
               controlDir=home.control)
    [result] = preprocessBatch(layout, [q.id], control(), Syncer())
    assert result.local == (b"log@test.example",)
    assert result.remote == (b"r@far.org",)


def test_preprocessCorruptTodoReportedAndLeft(layout):
    q = inject(layout, b"s@far.org", [b"r@far.org"], b"x\n", b"by uid 0", uid=0, qp=1)
    with open(layout.todo(q.id), "r+b") as f:
        f.write(b"X")            # first record type u -> X
    corrupt = readBytes(layout.todo(q.id))
    results = preprocessBatch(layout, [q.id], control(), Syncer())
    assert results == [Problem(q.id, f"warning: unknown record type in todo/{q.id}", False)]
    assert readBytes(layout.todo(q.id)) == corrupt
    assert not os.path.exists(layout.info(q.id))
    assert not os.path.exists(layout.remote(q.id))


def test_preprocessMissingMessRemovesTodo(layout):
    q = inject(layout, b"s@far.org", [b"r@far.org"], b"x\n", b"by uid 0", uid=0, qp=1)
    os.unlink(layout.mess(q.id))
    assert preprocessBatch(layout, [q.id], control(), Syncer()) == []
    assert not os.path.exists(layout.todo(q.id))
    assert not os.path.exists(layout.intd(q.id))
    assert not os.path.exists(layout.info(q.id))


def test_preprocessVanishedTodoSkipped(layout):
    assert preprocessBatch(layout, [12345], control(), Syncer()) == []


def test_preprocessBatchOfSeveral(layout):
    ids = [inject(layout, b"s%d@far.org" % i, [b"r%d@test.example" % i], b"m\n", b"by uid 0",
                  uid=0, qp=i).id for i in range(3)]
    bad = inject(layout, b"s@far.org", [b"r@far.org"], b"x\n", b"by uid 0", uid=0, qp=9).id
    with open(layout.todo(bad), "wb") as f:
        f.write(b"garbage")
    results = preprocessBatch(layout, ids + [bad], control(), Syncer())
    assert results[0] == Problem(bad, f"warning: unknown record type in todo/{bad}", False)
    assert [r.id for r in results[1:]] == ids
    for i, n in enumerate(ids):
        assert readBytes(layout.info(n)) == b"Fs%d@far.org\0" % i
        assert readBytes(layout.local(n)) == b"Tr%d@test.example\0" % i
        assert not os.path.exists(layout.todo(n))
    assert os.path.exists(layout.todo(bad))


def test_preprocessDirSyncFailureKeepsTodo(layout):
    q = inject(layout, b"s@far.org", [b"r@far.org"], b"x\n", b"by uid 0", uid=0, qp=1)

    class FailingSyncer(Syncer):
        def syncDirs(self, paths):
            raise OSError(5, "I/O error")

        def syncFilesystem(self, path):
            raise OSError(5, "I/O error")

    results = preprocessBatch(layout, [q.id], control(), FailingSyncer())
    assert results == [Problem(q.id, f"warning: trouble fsyncing info/{q.id}", True)]
    assert os.path.exists(layout.todo(q.id))
    assert os.path.exists(layout.intd(q.id))


def test_preprocessIsRepeatable(layout):
    """A todo entry whose preprocessing was interrupted is done again from scratch (5.10)."""
    q = inject(layout, b"s@far.org", [b"r@test.example"], b"x\n", b"by uid 0", uid=0, qp=1)
    with open(layout.info(q.id), "wb") as f:
        f.write(b"Fhalf")
    with open(layout.local(q.id), "wb") as f:
        f.write(b"Tpartial")
    [result] = preprocessBatch(layout, [q.id], control(), Syncer())
    assert isinstance(result, Preprocessed)
    assert readBytes(layout.info(q.id)) == b"Fs@far.org\0"
    assert readBytes(layout.local(q.id)) == b"Tr@test.example\0"
