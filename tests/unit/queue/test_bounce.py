"""Bounces in QSBMF (docs/behaviour/queue.md 5.7) and VERP senders (docs/behaviour/queue.md 5.8)."""

from __future__ import annotations

import os


from qmtwist.control import Control
from qmtwist.queue.bounce import (
    DOUBLE_BOUNCE_SENDER, Bounce, appendParagraph, bounceTarget, makeBounce, paragraph,
    stripVerp, verpSender)

NOW = 1762326189  # 5 Nov 2025 07:03:09 UTC
MESSAGE = b"Received: (qmail 77 invoked by uid 0); 5 Nov 2025 07:00:00 -0000\nSubject: hi\n\nbody\n"


def ctl(**kw) -> Control:
    values = dict(me=b"test.example", bouncehost=b"test.example",
                  doublebouncehost=b"db.example", locals=frozenset([b"test.example"]))
    values.update(kw)
    return Control(**values)


# --- failure paragraphs -------------------------------------------------------------------------


def test_paragraphBlankLineBecomesSlash():
    assert paragraph(b"r@x", b"a\n\nb") == b"<r@x>:\na\n/b\n\n"
    assert paragraph(b"r@x", b"a\n\nb\n") == b"<r@x>:\na\n/b\n\n"


def test_paragraphAddsFinalNewline():
    assert paragraph(b"joe@far.org", b"Sorry, no mailbox here by that name. (#5.1.1)") == (
        b"<joe@far.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n")


def test_paragraphMultiLineReport():
    report = b"Remote host said: 550 no such user\nGiving up on 192.0.2.1.\n"
    assert paragraph(b"joe@far.org", report) == b"<joe@far.org>:\n" + report + b"\n"


def test_paragraphRecipientNewlinesBecomeUnderscores():
    assert paragraph(b"a\nb@x", b"t") == b"<a_b@x>:\nt\n\n"


def test_paragraphRunOfBlankLines():
    assert paragraph(b"r@x", b"a\n\n\nb\n") == b"<r@x>:\na\n//b\n\n"


def test_paragraphReportEndingInBlankLine():
    # docs/behaviour/queue.md 5.7: every LF right after an LF becomes "/", the last one too, so the paragraph
    # holds no blank line before its own terminating one (QSBMF paragraphs are split on them)
    para = paragraph(b"r@x", b"a\n\n")
    assert para == b"<r@x>:\na\n/\n\n"
    assert paragraph(b"r@x", b"") == b"<r@x>:\n\n\n"


def test_appendParagraph(tmp_path):
    path = str(tmp_path / "bounce")
    appendParagraph(path, b"<a@x>:\none\n\n")
    appendParagraph(path, b"<b@x>:\ntwo\n\n")
    with open(path, "rb") as f:
        assert f.read() == b"<a@x>:\none\n\n<b@x>:\ntwo\n\n"
    assert os.stat(path).st_mode & 0o777 == 0o600


# --- VERP ---------------------------------------------------------------------------------------


def test_verpExpansion():
    assert verpSender(b"list-@lists.example-@[]", b"joe@far.org") == (
        b"list-joe=far.org@lists.example")
    assert verpSender(b"owner-@h-@[]", b"a@b@c") == b"owner-a@b=c@h"


def test_verpNotVerp():
    assert verpSender(b"joe@far.org", b"x@y") == b"joe@far.org"
    assert verpSender(b"", b"x@y") == b""
    assert verpSender(b"#@[]", b"x@y") == b"#@[]"


def test_stripVerp():
    assert stripVerp(b"list-@lists.example-@[]") == b"list-@lists.example"
    assert stripVerp(b"joe@far.org") == b"joe@far.org"
    assert stripVerp(b"") == b""


# --- where the bounce goes ------------------------------------------------------------------


def test_bounceTargets():
    c = ctl(doublebounceto=b"admin")
    assert bounceTarget(c, b"joe@far.org") == (b"", b"joe@far.org")
    assert bounceTarget(c, b"list-@lists.example-@[]") == (b"", b"list-@lists.example")
    assert bounceTarget(c, b"") == (DOUBLE_BOUNCE_SENDER, b"admin@db.example")
    assert bounceTarget(c, b"#@[]") is None
    assert DOUBLE_BOUNCE_SENDER == b"#@[]"


# --- the bounce message -------------------------------------------------------------------------

PARAS = (b"<joe@far.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
         b"<ann@far.org>:\nRemote host said: 550 no\n/more\n\n")


def test_singleBounceBytes():
    b = makeBounce(ctl(), b"sender@origin.example", PARAS, MESSAGE, NOW)
    assert b == Bounce(b"", b"sender@origin.example", (
        b"Date: 5 Nov 2025 07:03:09 -0000\n"
        b"From: MAILER-DAEMON@test.example\n"
        b"To: sender@origin.example\n"
        b"Subject: failure notice\n"
        b"\n"
        b"Hi. This is the qmail-send program at test.example.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\n"
        b"\n"
        b"<joe@far.org>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
        b"<ann@far.org>:\nRemote host said: 550 no\n/more\n\n"
        b"--- Below this line is a copy of the message.\n"
        b"\n"
        b"Return-Path: <sender@origin.example>\n"
        + MESSAGE))
    body = b.message.split(b"\n\n", 1)[1]
    assert body.startswith(b"Hi. This is the")


def test_doubleBounceBytes():
    b = makeBounce(ctl(), b"", PARAS, MESSAGE, NOW)
    assert b == Bounce(b"#@[]", b"postmaster@db.example", (
        b"Date: 5 Nov 2025 07:03:09 -0000\n"
        b"From: MAILER-DAEMON@test.example\n"
        b"To: postmaster@db.example\n"
        b"Subject: failure notice\n"
        b"\n"
        b"Hi. This is the qmail-send program at test.example.\n"
        b"I tried to deliver a bounce message to this address, but the bounce bounced!\n"
        b"\n"
        + PARAS +
        b"--- Below this line is the original bounce.\n"
        b"\n"
        b"Return-Path: <>\n"
        + MESSAGE))


def test_tripleBounceDiscarded():
    assert makeBounce(ctl(), b"#@[]", PARAS, MESSAGE, NOW) is None


def test_bounceUsesControls():
    c = ctl(bouncefrom=b"Bouncer", bouncehost=b"bh.example", doublebounceto=b"dbt",
            doublebouncehost=b"dbh.example")
    single = makeBounce(c, b"s@o", PARAS, MESSAGE, NOW)
    assert single is not None
    assert single.message.startswith(
        b"Date: 5 Nov 2025 07:03:09 -0000\nFrom: Bouncer@bh.example\nTo: s@o\n")
    assert b"Hi. This is the qmail-send program at bh.example.\n" in single.message
    double = makeBounce(c, b"", PARAS, MESSAGE, NOW)
    assert double is not None
    assert (double.sender, double.recipient) == (b"#@[]", b"dbt@dbh.example")
    assert b"\nTo: dbt@dbh.example\n" in double.message


def test_bounceFromQuotedWhenNeeded():
    b = makeBounce(ctl(bouncefrom=b"Mail Daemon"), b"s@o", PARAS, MESSAGE, NOW)
    assert b is not None
    assert b.message.split(b"\n")[1] == b'From: "Mail Daemon"@test.example'


def test_bounceOfVerpMessageGoesToStrippedSender():
    b = makeBounce(ctl(), b"list-@lists.example-@[]", PARAS, MESSAGE, NOW)
    assert b is not None
    assert (b.sender, b.recipient) == (b"", b"list-@lists.example")
    assert b.message.split(b"\n")[2] == b"To: list-@lists.example"


def test_bounceReturnPathQuotesSender():
    b = makeBounce(ctl(), b"a b@o.example", PARAS, MESSAGE, NOW)
    assert b is not None
    assert b'\nReturn-Path: <"a b"@o.example>\n' + MESSAGE in b.message
