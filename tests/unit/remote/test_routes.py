"""smtproutes / qmtproutes / tlsverify matching (docs/behaviour/remote.md 11.1, qmtp.md 9.3, control.md 2.3);
pure."""

from __future__ import annotations

import pytest

from qmtwist.control import Control
from qmtwist.remote.routes import (
    QMTP,
    SMTP,
    Route,
    TLSPolicy,
    domainLiteral,
    lookupKeys,
    parseRelay,
    selectRoute,
    tlsPolicy,
)

SPEC_TABLE = {
    b"inside.af.mil": b"firewall.af.mil:26",
    b".af.mil": b"",
    b"": b"heaven.af.mil",
}


def test_lookupKeys() -> None:
    assert lookupKeys(b"X.Af.Mil") == [b"x.af.mil", b".af.mil", b".mil", b""]


@pytest.mark.parametrize(
    "domain, expected",
    [
        (b"inside.af.mil", Route(SMTP, b"firewall.af.mil", 26)),
        (b"INSIDE.AF.MIL", Route(SMTP, b"firewall.af.mil", 26)),
        (b"x.af.mil", Route(SMTP, None, 25)),
        (b"af.mil", Route(SMTP, b"heaven.af.mil", 25)),
        (b"elsewhere.example", Route(SMTP, b"heaven.af.mil", 25)),
    ],
)
def test_specTable(domain: bytes, expected: Route) -> None:
    assert selectRoute(Control(smtproutes=SPEC_TABLE), domain) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (b"", Route(SMTP, None, 25)),
        (b"bigbang.af.mil", Route(SMTP, b"bigbang.af.mil", 25)),
        (b"127.0.0.1:9", Route(SMTP, b"127.0.0.1", 9)),
        (b"[10.1.2.3]", Route(SMTP, b"10.1.2.3", 25)),
        (b"[10.1.2.3]:2525", Route(SMTP, b"10.1.2.3", 2525)),
        (b"[IPv6:::1]:26", Route(SMTP, b"::1", 26)),
        (b"relay.example:notaport", Route(SMTP, b"relay.example", 25)),
        (b"relay.example:99999", Route(SMTP, b"relay.example", 25)),
    ],
)
def test_parseRelay(value: bytes, expected: Route) -> None:
    assert parseRelay(value, SMTP) == expected


def test_literal() -> None:
    assert Route(SMTP, b"10.1.2.3", 25).isLiteral
    assert not Route(SMTP, b"relay.example", 25).isLiteral
    assert domainLiteral(b"[127.0.0.1]") == b"127.0.0.1"
    assert domainLiteral(b"127.0.0.1") == b"127.0.0.1"
    assert domainLiteral(b"example.com") is None
    assert domainLiteral(b"[1.2.3]") is None


def test_qmtproutesFirstAndEmptyMeansNotByQMTP() -> None:
    control = Control(
        qmtproutes={b"q.example": b"10.0.0.1", b".noq.example": b"", b"": b"10.0.0.2:2209"},
        smtproutes={b"": b"10.0.0.3"},
    )
    assert selectRoute(control, b"q.example") == Route(QMTP, b"10.0.0.1", 209)
    assert selectRoute(control, b"other.example") == Route(QMTP, b"10.0.0.2", 2209)
    assert selectRoute(control, b"a.noq.example") == Route(SMTP, b"10.0.0.3", 25)


def test_nullClient() -> None:
    """FAQ 2.2: `:bigbang.af.mil` routes everything there."""
    control = Control(smtproutes={b"": b"bigbang.af.mil"})
    assert selectRoute(control, b"anything.example") == Route(SMTP, b"bigbang.af.mil", 25)


def test_tlsPolicy() -> None:
    control = Control(tlsverify=(b"bank.example:ca.pem", b".secure.example", b"Mixed.Example"))
    assert tlsPolicy(control, b"BANK.example", "/h/control") == TLSPolicy(True, "/h/control/ca.pem")
    assert tlsPolicy(control, b"a.secure.example", "/c") == TLSPolicy(True, None)
    assert tlsPolicy(control, b"secure.example", "/c") == TLSPolicy(False)
    assert tlsPolicy(control, b"mixed.example", "/c") == TLSPolicy(True, None)
    assert tlsPolicy(control, b"x.bank.example", "/c") == TLSPolicy(False)
