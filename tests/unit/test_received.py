"""Date shapes (docs/behaviour/home.md 0) and the header lines qmail writes (docs/behaviour/local.md 4.9,
queue.md 5.4)."""

from __future__ import annotations

import calendar

import pytest

from qmtwist.received import ctime, date822, deliveredTo, queueReceived, quoteLocal, returnPath

SPEC_EXAMPLE = calendar.timegm((2025, 11, 5, 7, 3, 9))


def test_date822SpecExample():
    assert date822(SPEC_EXAMPLE) == b"5 Nov 2025 07:03:09 -0000"


def test_ctimeSpecExample():
    assert ctime(SPEC_EXAMPLE) == b"Wed Nov 05 07:03:09 2025"
    assert len(ctime(SPEC_EXAMPLE)) == 24


@pytest.mark.parametrize("when, d822, ct", [
    (0, b"1 Jan 1970 00:00:00 -0000", b"Thu Jan 01 00:00:00 1970"),
    (calendar.timegm((2026, 2, 28, 23, 59, 59)), b"28 Feb 2026 23:59:59 -0000",
     b"Sat Feb 28 23:59:59 2026"),
    (calendar.timegm((2024, 12, 31, 9, 8, 7)), b"31 Dec 2024 09:08:07 -0000",
     b"Tue Dec 31 09:08:07 2024"),
    (calendar.timegm((2025, 6, 2, 12, 0, 0)) + 0.999, b"2 Jun 2025 12:00:00 -0000",
     b"Mon Jun 02 12:00:00 2025"),
    (calendar.timegm((2025, 9, 14, 0, 0, 0)), b"14 Sep 2025 00:00:00 -0000",
     b"Sun Sep 14 00:00:00 2025"),
])
def test_dateShapes(when, d822, ct):
    assert date822(when) == d822
    assert ctime(when) == ct


def test_everyMonthAndWeekday():
    months = [date822(calendar.timegm((2025, m, 1, 0, 0, 0))).split(b" ")[1] for m in range(1, 13)]
    assert months == [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep",
                      b"Oct", b"Nov", b"Dec"]
    # 2025-12-01 was a Monday
    days = [ctime(calendar.timegm((2025, 12, d, 0, 0, 0)))[:3] for d in range(1, 8)]
    assert days == [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"]


def test_queueReceived():
    assert queueReceived(4242, b"by uid 1000", SPEC_EXAMPLE) == (
        b"Received: (qmail 4242 invoked by uid 1000); 5 Nov 2025 07:03:09 -0000\n")
    assert queueReceived(1, b"from network", 0) == (
        b"Received: (qmail 1 invoked from network); 1 Jan 1970 00:00:00 -0000\n")


def test_deliveredTo():
    assert deliveredTo(b"joe@test.example") == b"Delivered-To: joe@test.example\n"
    assert deliveredTo(b"a\nb@x\n") == b"Delivered-To: a_b@x_\n"


def test_returnPathPlain():
    assert returnPath(b"joe@far.org") == b"Return-Path: <joe@far.org>\n"
    assert returnPath(b"") == b"Return-Path: <>\n"
    assert returnPath(b"#@[]") == b"Return-Path: <#@[]>\n"
    assert returnPath(b"joe") == b"Return-Path: <joe>\n"


@pytest.mark.parametrize("sender, expected", [
    (b"a b@x", b'"a b"@x'),
    (b"a.b@x", b"a.b@x"),
    (b".a@x", b'".a"@x'),
    (b"a.@x", b'"a."@x'),
    (b"a..b@x", b'"a..b"@x'),
    (b"a(b)@x", b'"a(b)"@x'),
    (b"a<b>@x", b'"a<b>"@x'),
    (b"a,b;c:d@x", b'"a,b;c:d"@x'),
    (b"a[b]@x", b'"a[b]"@x'),
    (b'a"b@x', b'"a\\"b"@x'),
    (b"a\\b@x", b'"a\\\\b"@x'),
    (b"a@b@x", b'"a@b"@x'),
    (b"a\tb@x", b'"a\tb"@x'),
    (b"a\x7fb@x", b'"a\x7fb"@x'),
    (b"caf\xc3\xa9@x", b'"caf\xc3\xa9"@x'),
    (b"!#$%&'*+-/=?^_`{|}~@x", b"!#$%&'*+-/=?^_`{|}~@x"),
    (b"a b", b'"a b"'),
])
def test_quoteLocal(sender, expected):
    assert quoteLocal(sender) == expected


def test_returnPathQuotedAndNewlines():
    assert returnPath(b"a b@x") == b'Return-Path: <"a b"@x>\n'
    assert b"\n" not in returnPath(b"a\nb@x")[:-1]


def test_quoteEmptyLocalPart():
    assert quoteLocal(b"@host") == b'""@host'
    assert returnPath(b"@host") == b'Return-Path: <""@host>\n'


def test_quoteEscapesCrLf():
    assert quoteLocal(b"a\rb@x") == b'"a\\\rb"@x'
    assert returnPath(b"a\nb@x") == b'Return-Path: <"a\\_b"@x>\n'


def test_quoteLocal_every_byte():
    """Each byte in the middle of a local part: quoted exactly when RFC 822 needs it (an atom
    special other than ".", a control or non-ASCII byte), backslash before \\, ", CR, LF."""
    specials = set(b'()<>@,;:\\"[] \t')
    for c in range(256):
        local = b"a" + bytes([c]) + b"b"
        quoted = quoteLocal(local + b"@h.example")
        if c in specials or c < 32 or c > 126:
            inner = (b"\\" if c in b'\\"\r\n' else b"") + bytes([c])
            assert quoted == b'"a' + inner + b'b"@h.example', c
        else:
            assert quoted == local + b"@h.example", c
