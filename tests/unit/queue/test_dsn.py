"""
Bounces as RFC 3464 reports (qmtwist/queue/dsn.py, docs/behaviour/queue.md 5.7.1): Python's
email package parses them as multipart/report with one per-recipient block per failed
recipient; the first part is byte for byte qmail's bounce text; the third is the original or,
above 50000 bytes, its header section. Built through finishMessage on real queue files.
"""

from __future__ import annotations

import pytest

from qmtwist.queue import dsn
from qmtwist.queue.bounce import DOUBLE_BOUNCE_SENDER, makeBounce, paragraph
from tests.bounceparts import qsbmf, report
from tests.unit.queue.test_finish import NOW, World, control

LOCAL = paragraph(b"nobody@test.example", b"Sorry, no mailbox here by that name. (#5.1.1)")
REMOTE = paragraph(b"friend@far.example",
                   b"192.0.2.7 does not like recipient.\n"
                   b"Remote host said: 550-5.1.1 The email account that you tried to reach\n"
                   b"550 5.1.1 does not exist.\nGiving up on 192.0.2.7.\n")
PLAIN = paragraph(b"old@far.example", b"192.0.2.7 failed after I sent the message.\n"
                  b"Remote host said: 554 transaction failed\n")
EXPIRED = paragraph(b"slow@far.example",
                    b"Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"
                    b"I'm not going to try again; this message has been in the queue too long.\n")
ORIGINAL = (b"Received: (qmail 77 invoked by uid 0); 5 Nov 2025 07:00:00 -0000\n"
            b"Message-ID: <orig@far.org>\nSubject: hi\n\nbody\n")


def bounceOf(home, original: bytes = ORIGINAL, paragraphs: bytes = LOCAL + REMOTE,
             sender: bytes = b"joe@far.org") -> bytes:
    w = World(home, sender, paragraphs)
    with open(w.layout.mess(w.n), "wb") as f:  # same inode, another original
        f.write(original)
    assert w.finish() == [None]
    [(_m, _env, mess)] = w.queued()
    return mess


def test_reportParsesWithABlockPerFailedRecipient(home) -> None:
    raw = bounceOf(home, paragraphs=LOCAL + REMOTE + PLAIN + EXPIRED)
    msg = report(raw)
    assert msg["Message-ID"].startswith("<%d." % NOW) and msg["Date"] is not None
    text, status, original = msg.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert blocks[0]["Reporting-MTA"] == "dns; test.example"
    got = [(b["Final-Recipient"], b["Action"], b["Status"], b.get("Diagnostic-Code"))
           for b in blocks[1:]]
    assert got == [
        ("rfc822; nobody@test.example", "failed", "5.1.1", None),
        ("rfc822; friend@far.example", "failed", "5.1.1",
         "smtp; 550-5.1.1 The email account that you tried to reach 550 5.1.1 does not exist."),
        ("rfc822; old@far.example", "failed", "5.0.0", "smtp; 554 transaction failed"),
        ("rfc822; slow@far.example", "failed", "4.4.1", None),
    ]
    assert original.get_content_type() == "message/rfc822"
    [inner] = original.get_payload()
    assert inner["Return-Path"] == "<joe@far.org>" and inner["Message-ID"] == "<orig@far.org>"
    assert inner.get_payload() == "body\n"


def test_firstPartIsTodaysQsbmfTextByteForByte(home) -> None:
    raw = bounceOf(home)
    expected = (  # what qmtwist wrote as the whole bounce body before the report existed
        b"Hi. This is the qmail-send program at test.example.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        b"<nobody@test.example>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n"
        b"<friend@far.example>:\n192.0.2.7 does not like recipient.\n"
        b"Remote host said: 550-5.1.1 The email account that you tried to reach\n"
        b"550 5.1.1 does not exist.\nGiving up on 192.0.2.7.\n\n"
        b"--- Below this line is a copy of the message.\n\n"
        b"Return-Path: <joe@far.org>\n" + ORIGINAL)
    assert qsbmf(raw) == expected
    old = makeBounce(control(), b"joe@far.org", LOCAL + REMOTE, ORIGINAL, NOW).message
    assert old.partition(b"\n\n")[2] == expected
    # the header block keeps qmail's four fields first, in qmail's order
    assert raw.split(b"\n", 1)[1].startswith(old.partition(b"\n\n")[0] + b"\nMessage-ID: <")


@pytest.mark.parametrize("original", [
    b"Subject: no final newline\n\nbody",
    b"No-Body: at all\n",
    b"\nno headers\n",
    b"Subject: 8bit \xc3\xa9t\xc3\xa9\n\n\xff\xfe raw bytes\n" + b"x" * 1200 + b"\n",
    b"Subject: looks like mime\n\n--=_qmtwist_\n--=_qmtwist_00\n",
])
def test_firstPartIsExactForAnyOriginal(home, original: bytes) -> None:
    raw = bounceOf(home, original)
    assert qsbmf(raw).endswith(b"--- Below this line is a copy of the message.\n\n"
                               b"Return-Path: <joe@far.org>\n" + original)


def test_eightBitOriginalIsLabelled(home) -> None:
    raw = bounceOf(home, b"Subject: caf\xc3\xa9\n\nna\xefve\n")
    text = report(raw).get_payload()[0]
    assert text["Content-Transfer-Encoding"] == "8bit"
    assert text.get_param("charset") == "unknown-8bit"


def test_bigOriginalGivesOnlyItsHeaders(home) -> None:
    big = ORIGINAL + b"y" * 80 + b"\n"
    big += (b"z" * 79 + b"\n") * ((dsn.FULL_COPY_MAX // 80) + 10)
    raw = bounceOf(home, big)
    assert qsbmf(raw).endswith(big)  # qmail's text keeps the whole copy (no truncation)
    third = report(raw).get_payload()[2]
    assert third.get_content_type() == "text/rfc822-headers"
    assert third.get_payload(decode=True) == (
        b"Return-Path: <joe@far.org>\n" + ORIGINAL.partition(b"\n\n")[0] + b"\n")
    assert len(raw) < len(big) + 3000


def test_doubleBounceIsAReportToo(home) -> None:
    raw = bounceOf(home, paragraphs=REMOTE, sender=b"")
    assert b"\nTo: postmaster@db.example\n" in raw
    assert b"but the bounce bounced!\n\n" + REMOTE in qsbmf(raw)
    blocks = report(raw).get_payload()[1].get_payload()
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; friend@far.example"]


def test_tripleBounceStillDropped(home) -> None:
    w = World(home, DOUBLE_BOUNCE_SENDER, REMOTE)
    assert w.finish() == [None]
    assert w.queued() == []


@pytest.mark.parametrize("text, expected", [
    (b"Remote host said: 550 5.7.1 no\n", "5.7.1"),
    (b"Remote host said: 550 4.7.1 mismatched class\n", "5.0.0"),
    (b"Remote host said: 451 4.3.0 later\nI'm not going to try again; too long.\n", "4.3.0"),
    (b"Remote host said: 550 5.1.10 null mx\n", "5.1.10"),
    (b"Remote host said: 550 see 5.1.1\n", "5.0.0"),
    (b"Sorry. (#5.4.6)\n", "5.4.6"),
    (b"no code at all\n", "5.0.0"),
])
def test_status(text: bytes, expected: str) -> None:
    assert dsn.status(text) == expected


def test_diagnosticIsAsciiAndFolded() -> None:
    d = dsn.diagnostic(b"x\nRemote host said: 550-caf\xc3\xa9\n550 end\nGiving up on x.\n")
    assert d == b"smtp; 550-caf??\n 550 end"
    assert dsn.diagnostic(b"Sorry, no mailbox here by that name. (#5.1.1)\n") is None
