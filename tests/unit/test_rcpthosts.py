"""rcpthosts / morercpthosts / RELAYCLIENT (docs/behaviour/smtp.md 7.4, 7.5)."""

from __future__ import annotations

import pytest

from qmtwist.control import Control
from qmtwist.rcpthosts import RcptHosts, relayDecision

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
