"""MAIL/RCPT argument parsing (docs/behaviour/smtp.md 7.3), badmailfrom (7.6), Received text (7.9)."""

from __future__ import annotations

import pytest

from qmtwist.policy import badMailFrom
from qmtwist.smtp.extensions import mailParameters
from qmtwist.smtp.parse import parseAddress, splitCommand
from qmtwist.smtp.received import safe, smtpReceived


@pytest.mark.parametrize("arg,addr", [
    (b"FROM:<a@b>", b"a@b"),
    (b"FROM: <a@b> SIZE=10", b"a@b"),
    (b"FROM:<>", b""),
    (b"FROM:a@b", b"a@b"),
    (b"FROM:  a@b BODY=8BITMIME", b"a@b"),
    (b"TO:<@a,@b:u@c>", b"u@c"),
    (b'TO:<"a b"@c>', b"a b@c"),
    (b'TO:<"a>b"@c>', b"a>b@c"),
    (b"TO:<a\\>b@c>", b"a>b@c"),
    (b'TO:"x y"@z', b"x y@z"),
    (b"TO:<u@[127.0.0.1]>", b"u@lip.example"),
    (b"TO:<u@[10.1.1.1]>", b"u@[10.1.1.1]"),
    (b"", b""),
])
def test_parse_address(arg, addr):
    assert parseAddress(arg, frozenset([b"127.0.0.1"]), b"lip.example") == addr


def test_size_parameter():
    assert mailParameters(b"FROM:<a@b> BODY=8BITMIME size=123").size == 123
    assert mailParameters(b"FROM:<a@b> SIZE=x").size is None
    assert mailParameters(b"FROM:a@b SIZE=5").size is None


def test_badmailfrom():
    entries = (b"joe@bad.example", b"@spam.example")
    assert badMailFrom(b"JOE@bad.example", entries)
    assert badMailFrom(b"x@SPAM.example", entries)
    assert not badMailFrom(b"x@bad.example", entries)
    assert not badMailFrom(b"", entries)
    assert not badMailFrom(b"x@sub.spam.example", entries)


def test_split_command():
    assert splitCommand(b"mail FROM:<a>") == (b"MAIL", b"FROM:<a>")
    assert splitCommand(b"RCPT    TO:<a>") == (b"RCPT", b"TO:<a>")
    assert splitCommand(b"QUIT") == (b"QUIT", b"")


def test_received():
    assert safe(b"a b(c)\x00\xff.@%+/=:-[]") == b"a?b?c???.@%+/=:-[]"
    assert smtpReceived(None, None, b"1.2.3.4", b"me.example", 0) == (
        b"Received: from unknown (1.2.3.4)\n  by me.example with SMTP; 1 Jan 1970 00:00:00 -0000\n")
    assert smtpReceived(b"h.example", b"H.EXAMPLE", b"1.2.3.4", b"me", 0, tls=True,
                        remoteInfo=b"id") == (
        b"Received: from h.example (id@1.2.3.4)\n  by me with ESMTPS; 1 Jan 1970 00:00:00 -0000\n")
