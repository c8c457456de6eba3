"""MTA-STS records and policies (RFC 8461; docs/behaviour/tls-policy.md 19.2): pure functions."""

from __future__ import annotations

import pytest

from qmtwist.remote import mtasts
from qmtwist.remote.mtasts import Policy, PolicyError, mxMatches, parsePolicy, parseTXT


def test_parseEnforcePolicy() -> None:
    body = (b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
            b"mx: *.Example.NET.\r\nmax_age: 604800\r\nextension: ignored\r\n")
    assert parsePolicy(body) == Policy("enforce", (b"mail.example.com", b"*.example.net"), 604800)


def test_parseLFOnlyAndSpaces() -> None:
    body = b"version: STSv1\nmode:testing\n  mx:  mx.example.org \nmax_age: 86400\n"
    assert parsePolicy(body) == Policy("testing", (b"mx.example.org",), 86400)


def test_maxAgeCappedAndModeNoneWithoutMX() -> None:
    assert parsePolicy(b"version: STSv1\nmode: none\nmax_age: 9999999999\n") == \
        Policy("none", (), mtasts.MAX_AGE)


@pytest.mark.parametrize("body, why", [
    (b"mode: enforce\nversion: STSv1\nmx: a.example\nmax_age: 1\n", "first line"),
    (b"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n", "first line"),
    (b"version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "unknown mode"),
    (b"version: STSv1\nmode: enforce\nmx: a.example\n", "no max_age"),
    (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n", "bad max_age"),
    (b"version: STSv1\nmx: a.example\nmax_age: 1\n", "no mode"),
    (b"version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
    (b"version: STSv1\nmode: enforce\nmx: *.com\nmax_age: 1\n", "bad mx"),
    (b"version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n", "bad mx"),
    (b"version: STSv1\nmode: enforce\nmx: a b.example\nmax_age: 1\n", "bad mx"),
    (b"version: STSv1\nmode: enforce\njunk\nmx: a.example\nmax_age: 1\n", "malformed line"),
    ("version: STSv1\nmode: enforce\nmx: é.example\nmax_age: 1\n".encode(), "not ASCII"),
    (b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\n" + b"x: y\n" * 20000,
     "64 KiB"),
    (b"", "first line"),
])
def test_parseRefuses(body: bytes, why: str) -> None:
    with pytest.raises(PolicyError, match=why):
        parsePolicy(body)


@pytest.mark.parametrize("pattern, host, expected", [
    (b"mx.example.com", b"mx.example.com", True),
    (b"mx.example.com", b"MX.Example.COM.", True),
    (b"mx.example.com", b"mx2.example.com", False),
    (b"*.example.com", b"mx1.example.com", True),
    (b"*.example.com", b"example.com", False),
    (b"*.example.com", b"a.b.example.com", False),
    (b"*.example.com", b".example.com", False),
    (b"*.example.com", b"mx1.example.com.evil", False),
    (b"", b"mx.example.com", False),
])
def test_mxMatches(pattern: bytes, host: bytes, expected: bool) -> None:
    assert mxMatches(pattern, host) is expected


def test_policyMatchesAnyPattern() -> None:
    p = Policy("enforce", (b"mx.example.com", b"*.backup.example.com"), 10)
    assert p.matches(b"mx.example.com") and p.matches(b"b1.backup.example.com")
    assert not p.matches(b"other.example.com")


@pytest.mark.parametrize("records, expected", [
    ([[b"v=STSv1; id=20160831085700Z;"]], b"20160831085700Z"),
    ([[b"v=STSv1; ", b"id=abc123"]], b"abc123"),
    ([[b"v=spf1 -all"], [b"v=STSv1;id=X1"]], b"X1"),
    ([[b"v=STSv1; id=1"], [b"v=STSv1; id=2"]], None),  # two STS records: none applies
    ([[b"v=STSv1"]], None),
    ([[b"v=STSv1; id=not-alnum"]], None),
    ([[b"v=STSv1; id=" + b"a" * 33]], None),
    ([[b"v=STSv10; id=1"]], None),
    ([], None),
])
def test_parseTXT(records: list[list[bytes]], expected: bytes | None) -> None:
    assert parseTXT(records) == expected


def test_policyURLAndPlainDomain() -> None:
    assert mtasts.policyURL(b"Example.COM.") == \
        "https://mta-sts.example.com/.well-known/mta-sts.txt"
    assert mtasts.plainDomain(b"example.com")
    assert not mtasts.plainDomain(b"localhost")
    assert not mtasts.plainDomain(b"a/b.example")
    assert not mtasts.plainDomain(b"[127.0.0.1]")
