"""rcpthosts / morercpthosts / RELAYCLIENT (docs/behaviour/smtp.md 7.4, 7.5)."""

from __future__ import annotations

import os

import pytest

from qmtwist.control import Control
from qmtwist.policy import relayDecision
from qmtwist.rcpthosts import RcptHosts

C = Control(me=b"me.example", locals=frozenset({b"me.example"}),
            rcpthosts=(b"heaven.af.mil", b".sub.af.mil"), morercpthosts=(b"more.example",))


@pytest.mark.parametrize("rcpt,ok", [
    (b"a@heaven.af.mil", True), (b"a@HEAVEN.af.mil", True), (b"a@x.heaven.af.mil", False),
    (b"a@x.sub.af.mil", True), (b"a@a.b.sub.af.mil", True), (b"a@sub.af.mil", False),
    (b"a@more.example", True), (b"nobody", True), (b"a@me.example", False),
    (b"victim@example.com@heaven.af.mil", True), (b"a@heaven.af.mil@evil.example", False),
])
def test_allows(rcpt, ok):
    assert RcptHosts.fromControl(C).allows(rcpt) is ok


def test_missing_rcpthosts_is_not_open():
    c = Control(me=b"me.example", locals=frozenset({b"me.example", b"localhost"}),
                rcpthosts=None, morercpthosts=(b"more.example",),
                virtualdomains={b"virt.example": b"bob", b".vsub.example": b"x",
                                b"off.example": b"", b"u@only.example": b"y"})
    r = RcptHosts.fromControl(c)
    assert r.missing
    assert [r.allows(a) for a in (b"a@me.example", b"a@localhost", b"a@virt.example",
                                  b"a@q.vsub.example", b"a@off.example", b"a@only.example",
                                  b"a@more.example", b"a@example.com")] == [
        True, True, True, True, False, False, False, False]


def test_relayclient():
    assert relayDecision(C, {}, b"joe@x.com") is None
    assert relayDecision(C, {"RELAYCLIENT": b""}, b"joe@x.com") == b"joe@x.com"
    assert relayDecision(C, {"RELAYCLIENT": b"@fixme"}, b"joe@x.com") == b"joe@x.com@fixme"
    assert relayDecision(C, {}, b"a@heaven.af.mil") == b"a@heaven.af.mil"


# -- the table is built once per control snapshot (hostile review item 4) ----------------------

class CountingTuple(tuple):
    """A control list that counts how often it is walked (each walk is a rebuild of the table)."""

    walks = 0

    def __iter__(self):
        type(self).walks += 1
        return super().__iter__()


def bigList(n: int) -> list[bytes]:
    """n entries: even ones exact host names, odd ones `.suffix` wildcards."""
    return [b"host%d.example" % i if i % 2 == 0 else b".sub%d.example" % i for i in range(n)]


def test_table_is_built_once_not_per_rcpt_or_connection():
    from tests.unit.smtp.helpers import makeSession

    CountingTuple.walks = 0
    more = CountingTuple(bigList(2000))
    control = Control(me=b"me.example", locals=frozenset({b"me.example"}),
                      rcpthosts=(b"me.example",), morercpthosts=more)
    assert CountingTuple.walks <= 1  # built with the snapshot (at the latest on first use)
    for _ in range(3):  # three SMTP connections sharing the snapshot, 400 RCPT each
        proto, t, _, _ = makeSession(control=control)
        proto.dataReceived(b"MAIL FROM:<a@x.example>\r\n" + b"".join(
            b"RCPT TO:<u%d@host%d.example>\r\n" % (i, 2 * i) for i in range(400)))
        assert t.value().count(b"250 2.1.5 ok\r\n") == 400
    for _ in range(3):  # and QMTP connections
        r = RcptHosts.fromControl(control)
        assert r.allows(b"u@a.sub1.example") and not r.allows(b"u@sub1.example")
        assert relayDecision(control, {}, b"u@host0.example") == b"u@host0.example"
    assert CountingTuple.walks == 1


def fresh(cache) -> Control:
    """The cache's values after the check a listener makes before each connection."""
    from twisted.internet.defer import maybeDeferred

    refresh = getattr(cache, "refresh", None)
    if refresh is not None:
        refresh(maybeDeferred)  # the thread runner, synchronous here
    return cache.current()


def test_control_cache_builds_the_table_once_per_change(home, monkeypatch):
    from qmtwist.context import ControlCache
    from tests.unit.smtp.helpers import makeSession

    builds: list[int] = []
    original = RcptHosts.build.__func__

    def counting(cls, rcpthosts, more, *rest):
        if len(more) > 1000:
            builds.append(len(more))
        return original(cls, rcpthosts, more, *rest)

    monkeypatch.setattr(RcptHosts, "build", classmethod(counting))
    path = home.sub("control", "morercpthosts")
    with open(path, "wb") as f:
        f.write(b"\n".join(bigList(200_000)) + b"\n")
    cache = ControlCache(home)
    assert builds == [200_000]
    for _ in range(5):
        proto, t, _, _ = makeSession(control=fresh(cache))
        proto.dataReceived(b"MAIL FROM:<a@x.example>\r\n" +
                           b"RCPT TO:<u@host4.example>\r\n" * 200 +
                           b"RCPT TO:<u@x.sub199999.example>\r\nRCPT TO:<u@evil.example>\r\n")
        assert t.value().count(b"250 2.1.5 ok\r\n") == 201
        assert t.value().endswith(b"553 5.7.1 sorry, that domain isn't in my list of allowed "
                                  b"rcpthosts (#5.7.1)\r\n")
    assert builds == [200_000]
    with open(path, "ab") as f:
        f.write(b"new.example\n")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert relayDecision(fresh(cache), {}, b"u@new.example") == b"u@new.example"
    for _ in range(100):
        assert relayDecision(fresh(cache), {}, b"u@host8.example") == b"u@host8.example"
    assert builds == [200_000, 200_001]


def test_200000_entries_answer_exact_and_suffix():
    entries = bigList(200_000)
    control = Control(me=b"me.example", locals=frozenset({b"me.example"}),
                      rcpthosts=(b"me.example",), morercpthosts=tuple(entries))
    r = RcptHosts.fromControl(control)
    cases = {
        b"a@me.example": True,
        b"a@host0.example": True, b"a@HOST199998.Example": True,  # exact entries
        b"a@x.host0.example": False,  # an exact entry does not cover subdomains
        b"a@sub1.example": False,  # a .suffix entry does not cover the domain itself
        b"a@x.sub1.example": True, b"a@a.b.c.sub199999.example": True,
        b"a@X.SUB777.EXAMPLE": True,
        b"a@host1.example": False, b"a@x.sub2.example": False,  # the other kind is not listed
        b"a@host200000.example": False, b"a@example": False, b"a@": False,
        b"nobody": True,
    }
    assert {rcpt: r.allows(rcpt) for rcpt in cases} == cases
    assert relayDecision(control, {}, b"a@x.sub3.example") == b"a@x.sub3.example"
    assert relayDecision(control, {}, b"a@sub3.example") is None
