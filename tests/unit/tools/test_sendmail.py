"""sendmail and datemail (docs/behaviour/tools.md 12.2, 12.3; FAQ 6.1-6.3)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from qmtwist.tools import datemail, inject, sendmail
from tests.unit.tools.helpers import queuedMessages, runMain, stripReceived


@pytest.fixture(autouse=True)
def fixedClock(monkeypatch):
    monkeypatch.setattr(inject, "clock", lambda: 1762326189)
    monkeypatch.setattr(inject, "getpid", lambda: 4242)


def run(home, args, stdin=b"", name="sendmail", **environ):
    return runMain(sendmail.main, home, [name, *args], stdin, **environ)


def envelope(sender: bytes, *recipients: bytes) -> bytes:
    return (b"u%d\0p%d\0F" % (os.getuid(), os.getpid()) + sender + b"\0"
            + b"".join(b"T" + r + b"\0" for r in recipients))


PINE = (b"To: a@x.y\nCc: c@x.y\nBcc: hidden@x.y\nSubject: pine\n\n"
        b"line one\n.\nline after a lone dot\n")


def test_faq62_pine(home):
    r = run(home, ["-oem", "-oi", "-t"], PINE, USER="u")
    assert (r.code, r.err) == (0, b"")
    [(env, mess)] = queuedMessages(home)
    assert env == envelope(b"u@test.example", b"a@x.y", b"c@x.y", b"hidden@x.y")
    body = stripReceived(mess)
    assert b"hidden" not in body and b"Bcc" not in body
    assert body.endswith(b"\nline one\n.\nline after a lone dot\n")


def test_faq63_mhSpost(home):
    r = run(home, ["-m", "-t", "-i", "-v"], b"To: a@x.y\n\nmh\n", USER="u")
    assert r.code == 0
    [(env, _)] = queuedMessages(home)
    assert env == envelope(b"u@test.example", b"a@x.y")


def test_mhWhomBv(home):
    r = run(home, ["-m", "-t", "-i", "-bv"], b"To: a@x.y\n\n")
    assert (r.code, r.err) == (100, sendmail.USAGE)
    assert queuedMessages(home) == []


@pytest.mark.parametrize("args,sender,recipients", [
    (["a@x.y"], b"u@test.example", [b"a@x.y"]),
    (["-t", "a@x.y"], b"u@test.example", [b"a@x.y", b"h@x.y"]),
    (["-f", "s@x.y", "a@x.y"], b"s@x.y", [b"a@x.y"]),
    (["-fs@x.y", "a@x.y"], b"s@x.y", [b"a@x.y"]),
    (["-r", "s@x.y", "a@x.y"], b"s@x.y", [b"a@x.y"]),
    (["-f", "<>", "a@x.y"], b"", [b"a@x.y"]),
    (["-i", "--", "-weird@x.y"], b"u@test.example", [b"-weird@x.y"]),
    (["-oi", "-odb", "-oee", "-ex", "-x", "-Bbody", "-pproto", "-bm", "a@x.y"],
     b"u@test.example", [b"a@x.y"]),
    (["-EJ", "a@x.y"], b"u@test.example", [b"a@x.y"]),
])
def test_flags(home, args, sender, recipients):
    r = run(home, args, b"To: h@x.y\n\n", USER="u")
    assert (r.code, r.err) == (0, b"")
    [(env, _)] = queuedMessages(home)
    assert env == envelope(sender, *recipients)


def test_fullName(home):
    r = run(home, ["-F", "Joe Q", "a@x.y"], b"\n", USER="u")
    assert r.code == 0
    [(_, mess)] = queuedMessages(home)
    assert b'\nFrom: "Joe Q" <u@test.example>\n' in mess


@pytest.mark.parametrize("args", [["-Z"], ["-f"], ["-bx"], ["-bv", "a"]])
def test_usage(home, args):
    r = run(home, args)
    assert (r.code, r.err) == (100, sendmail.USAGE)


def test_newaliases(home):
    r = run(home, [], name="/usr/bin/newaliases")
    assert (r.code, r.err) == (
        100, b"sendmail: fatal: qmail has no aliases database; use ~alias/.qmail files\n")


def test_queueRunNoDaemon(home):
    r = run(home, ["-q"])
    assert (r.code, r.err) == (111, b"sendmail: fatal: qmtwist is not running\n")
    r = run(home, ["-q30m"])
    assert r.code == 111


def test_queueRunSendsAlarm(home):
    got = []
    old = signal.signal(signal.SIGALRM, lambda *a: got.append(a[0]))
    try:
        with open(home.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
        r = run(home, ["-q"])
    finally:
        signal.signal(signal.SIGALRM, old)
    assert (r.code, got) == (0, [signal.SIGALRM])


def test_mailqAndBp(home, monkeypatch):
    from qmtwist.tools import qread

    monkeypatch.setattr(qread, "main", lambda argv, env: env.stdout.write(b"listing\n") and 0)
    assert run(home, ["-bp"]).out == b"listing\n"
    assert run(home, [], name="mailq").out == b"listing\n"


def test_bsEnvironment(home, monkeypatch):
    from qmtwist.smtp import stdio

    seen = {}
    monkeypatch.setattr(stdio, "main", lambda argv, env: seen.update(env.environ) or 0)
    assert run(home, ["-bs"], USER="u").code == 0
    assert {k: seen[k] for k in ("RELAYCLIENT", "DATABYTES", "PROTO", "TCPREMOTEINFO",
                                  "TCPLOCALIP", "TCPREMOTEIP")} == {
        "RELAYCLIENT": "", "DATABYTES": "0", "PROTO": "TCP", "TCPREMOTEINFO": "sendmail-bs",
        "TCPLOCALIP": "127.0.0.1", "TCPREMOTEIP": "127.0.0.1"}
    seen.clear()
    assert run(home, ["-bs"], PROTO="UUCP").code == 0
    assert "RELAYCLIENT" not in seen and seen["PROTO"] == "UUCP"


def test_faq61_datemail(home, monkeypatch):
    monkeypatch.setenv("TZ", "CET-1")
    time.tzset()
    try:
        monkeypatch.setattr(datemail.time, "time", lambda: 1762326189.5)
        r = runMain(datemail.main, home, ["datemail", "-t"], b"To: a@x.y\n\nhi\n", USER="u")
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert (r.code, r.err) == (0, b"")
    [(env, mess)] = queuedMessages(home)
    assert env == envelope(b"u@test.example", b"a@x.y")
    assert stripReceived(mess) == (
        b"Message-ID: <20251105070309.4242.qmail@test.example>\n"
        b"From: u@test.example\nDate: 5 Nov 2025 08:03:09 +0100\nTo: a@x.y\n\nhi\n")


@pytest.mark.parametrize("tz,when,text", [
    ("UTC0", 1762326189, b"5 Nov 2025 07:03:09 +0000"),
    ("EST5", 1762326189, b"5 Nov 2025 02:03:09 -0500"),
    ("IST-5:30", 1762326189, b"5 Nov 2025 12:33:09 +0530"),
])
def test_localDate(monkeypatch, tz, when, text):
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        assert datemail.localDate(when) == text
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_datemailKeepsAnExistingDate(home):
    r = runMain(datemail.main, home, ["datemail", "a@x.y"],
                b"date : Tue, 4 Nov 2025 10:00:00 +0200\nSubject: s\n\nb\n", USER="u")
    assert r.code == 0
    [(_, mess)] = queuedMessages(home)
    assert stripReceived(mess) == (
        b"Message-ID: <20251105070309.4242.qmail@test.example>\nFrom: u@test.example\n"
        b"Cc: recipient list not shown: ;\n"
        b"date : Tue, 4 Nov 2025 10:00:00 +0200\nSubject: s\n\nb\n")


@pytest.mark.parametrize("args, stdin", [
    (["-t"], b"Subject: nobody\n\nhello\n"),
    ([], b"Subject: no argument\n\nhello\n"),
])
def test_no_recipients_is_refused(home, args, stdin):
    """docs/behaviour/operations.md 21.5: an MUA learns at once, and nothing is queued."""
    r = run(home, args, stdin, USER="u")
    assert (r.code, r.err) == (100, b"qmail-inject: fatal: no recipients\n")
    assert queuedMessages(home) == []


def test_qmail_inject_itself_still_queues_a_message_without_recipients(home):
    """qmail-inject called by name keeps qmail's behaviour (docs/behaviour/tools.md)."""
    r = runMain(inject.main, home, ["qmail-inject"], b"Subject: nobody\n\nhello\n", USER="u")
    assert (r.code, r.err) == (0, b"")
    [(env, _)] = queuedMessages(home)
    assert env == envelope(b"u@test.example")
