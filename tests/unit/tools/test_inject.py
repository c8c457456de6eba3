"""qmail-inject (docs/behaviour/tools.md 12.1): header completion, recipients, options, environment, exits."""

from __future__ import annotations

import os
import stat

import pytest

from qmtwist.tools import inject, queueclient
from tests.unit.tools.helpers import queuedMessages, runMain, stripReceived

NOW = 1762326189  # 5 Nov 2025 07:03:09 UTC
PID = 4242
STAMP = b"Date: 5 Nov 2025 07:03:09 -0000\nMessage-ID: <20251105070309.4242.qmail@%s>\n"


@pytest.fixture(autouse=True)
def fixedClock(monkeypatch):
    monkeypatch.setattr(inject, "clock", lambda: NOW)
    monkeypatch.setattr(inject, "getpid", lambda: PID)


@pytest.fixture
def afmil(home):
    with open(os.path.join(home.control, "defaulthost"), "w") as f:
        f.write("af.mil\n")
    return home


def run(home, args, stdin=b"", **environ):
    return runMain(inject.main, home, ["qmail-inject", *args], stdin, **environ)


def envelope(sender: bytes, *recipients: bytes) -> bytes:
    return (b"u%d\0p%d\0F" % (os.getuid(), os.getpid()) + sender + b"\0"
            + b"".join(b"T" + r + b"\0" for r in recipients))


def test_faq11_hostMasquerading(afmil):
    r = run(afmil, [], b"To: fred\n\nhi\n", USER="joe")
    assert (r.code, r.err) == (0, b"")
    [(env, mess)] = queuedMessages(afmil)
    assert env == envelope(b"joe@af.mil", b"fred@af.mil")
    assert stripReceived(mess) == (
        STAMP % b"test.example" + b"From: joe@af.mil\nTo: fred@af.mil\n\nhi\n")
    assert mess.startswith(b"Received: (qmail %d invoked by uid %d); " % (
        os.getpid(), os.getuid()))


def test_faq12_userMasquerading(home):
    r = run(home, ["-n"], b"From: god@heaven.af.mil\nTo: x@y.z\n\n", MAILHOST="af.mil",
            MAILUSER="boss", USER="god")
    assert r.out == (b"Return-Path: <boss@af.mil>\n" + STAMP % b"test.example"
                     + b"From: god@heaven.af.mil\nTo: x@y.z\n\n")
    r = run(home, ["-n"], b"From: god@heaven.af.mil\nTo: x@y.z\n\n", MAILHOST="af.mil",
            MAILUSER="boss", USER="god", QMAILINJECT="f")
    assert r.out == (b"Return-Path: <boss@af.mil>\n" + STAMP % b"test.example"
                     + b"From: boss@af.mil\nTo: x@y.z\n\n")


def test_faq12_queued(home):
    r = run(home, [], b"From: god@heaven.af.mil\nTo: x@y.z\n\nbody\n", MAILHOST="af.mil",
            MAILUSER="boss", QMAILINJECT="f")
    assert r.code == 0
    [(env, mess)] = queuedMessages(home)
    assert env == envelope(b"boss@af.mil", b"x@y.z")
    assert b"\nFrom: boss@af.mil\n" in mess and b"god@" not in mess


@pytest.mark.parametrize("environ,fromLine,sender", [
    ({}, b"From: anonymous@test.example", b"anonymous@test.example"),
    ({"LOGNAME": "lg"}, b"From: lg@test.example", b"lg@test.example"),
    ({"USER": "u", "LOGNAME": "lg"}, b"From: u@test.example", b"u@test.example"),
    ({"MAILUSER": "m", "USER": "u"}, b"From: m@test.example", b"m@test.example"),
    ({"QMAILUSER": "q", "MAILUSER": "m"}, b"From: q@test.example", b"q@test.example"),
    ({"USER": "u", "MAILHOST": "mh"}, b"From: u@mh.example", b"u@mh.example"),
    ({"USER": "u", "QMAILHOST": "q.h", "MAILHOST": "m.h"}, b"From: u@q.h", b"u@q.h"),
    ({"USER": "u", "NAME": "Joe Q. Public"}, b'From: "Joe Q. Public" <u@test.example>',
     b"u@test.example"),
    ({"USER": "u", "MAILNAME": "M", "NAME": "N"}, b'From: "M" <u@test.example>',
     b"u@test.example"),
    ({"USER": "u", "QMAILNAME": 'a"b\\c', "MAILNAME": "M"},
     b'From: "a\\"b\\\\c" <u@test.example>', b"u@test.example"),
    ({"USER": "u", "NAME": "Joe", "QMAILINJECT": "c"}, b"From: u@test.example (Joe)",
     b"u@test.example"),
    ({"USER": "joe smith"}, b'From: "joe smith"@test.example', b"joe smith@test.example"),
    ({"USER": "u", "QMAILSUSER": "su", "QMAILSHOST": "s.h"}, b"From: u@test.example",
     b"su@s.h"),
    ({"USER": "u", "QMAILINJECT": "r"}, b"From: u@test.example", b"u-@test.example-@[]"),
    ({"USER": "u", "QMAILINJECT": "m"}, b"From: u@test.example",
     b"u-1762326189.4242@test.example"),
    ({"USER": "u", "QMAILDEFAULTHOST": "dh.example"}, b"From: u@dh.example",
     b"u@dh.example"),
])
def test_defaultFromAndSender(home, environ, fromLine, sender):
    # me = test.example, so defaultdomain = example (setup), defaulthost = me
    r = run(home, ["-n"], b"To: x@y.z\n\n", **environ)
    assert r.code == 0, r.err
    assert r.out == (b"Return-Path: <" + inject.quoteAddress(sender) + b">\n"
                     + STAMP % b"test.example" + fromLine + b"\nTo: x@y.z\n\n")


def test_fieldsAddedOnlyWhenMissing(home):
    msg = (b"Date: yesterday\nMessage-ID: <x@y>\nFrom: a@b.c\nCc: c@d.e\n\nbody\n")
    r = run(home, ["-n"], msg, USER="u")
    assert r.out == b"Return-Path: <u@test.example>\n" + msg


def test_noToNoCc(home):
    r = run(home, ["-n", "x@y.z"], b"Subject: hi\n\nbody\n", USER="u")
    assert r.out == (b"Return-Path: <u@test.example>\n" + STAMP % b"test.example"
                     + b"From: u@test.example\nCc: recipient list not shown: ;\n"
                     + b"Subject: hi\n\nbody\n")


def test_bccRemovedAndRecipients(home):
    msg = (b"To: a@x.y, b@x.y\nCc: c@x.y\nBcc: secret@x.y\nApparently-To: ap@x.y\n"
           b"Content-Length: 99\nReturn-Path: <rp@x.y>\nSubject: s\n\nbody\n.\nmore\n")
    r = run(home, [], msg, USER="u")
    assert r.code == 0
    [(env, mess)] = queuedMessages(home)
    assert env == envelope(b"rp@x.y", b"b@x.y", b"a@x.y", b"c@x.y", b"secret@x.y", b"ap@x.y")
    assert stripReceived(mess) == (
        STAMP % b"test.example" + b"From: u@test.example\n"
        b"To: a@x.y, b@x.y\nCc: c@x.y\nApparently-To: ap@x.y\nSubject: s\n\nbody\n.\nmore\n")


@pytest.mark.parametrize("args,recipients", [
    ([], [b"h@x.y"]),
    (["-A"], [b"h@x.y"]),
    (["a@x.y"], [b"a@x.y"]),
    (["-A", "a@x.y"], [b"a@x.y"]),
    (["-a", "a@x.y", "b"], [b"a@x.y", b"b@test.example"]),
    (["-a"], []),
    (["-h", "a@x.y"], [b"h@x.y"]),
    (["-H", "a@x.y"], [b"a@x.y", b"h@x.y"]),
    (["-H", "--", "-a@x.y"], [b"-a@x.y", b"h@x.y"]),
])
def test_recipientStrategies(home, args, recipients):
    r = run(home, args, b"To: h@x.y\n\n", USER="u")
    assert r.code == 0, r.err
    [(env, _)] = queuedMessages(home)
    assert env == envelope(b"u@test.example", *recipients)


def test_resentMessage(home):
    msg = b"Resent-To: r@x.y\nResent-Bcc: rb@x.y\nTo: t@x.y\nFrom: f@x.y\n\n"
    r = run(home, [], msg, USER="u")
    assert r.code == 0
    [(env, mess)] = queuedMessages(home)
    assert env == envelope(b"u@test.example", b"r@x.y", b"rb@x.y")
    assert stripReceived(mess) == (
        b"Resent-Date: 5 Nov 2025 07:03:09 -0000\n"
        b"Resent-Message-ID: <20251105070309.4242.qmail@test.example>\n"
        b"Resent-From: u@test.example\nResent-To: r@x.y\nTo: t@x.y\nFrom: f@x.y\n\n")


def test_resentWithoutResentTo(home):
    r = run(home, ["-n"], b"Resent-From: a@x.y\nTo: t@x.y\n\n", USER="u")
    assert r.out == (b"Return-Path: <u@test.example>\nResent-Date: 5 Nov 2025 07:03:09 -0000\n"
                     b"Resent-Message-ID: <20251105070309.4242.qmail@test.example>\n"
                     b"Resent-Cc: recipient list not shown: ;\n"
                     b"Resent-From: a@x.y\nTo: t@x.y\n\n")


@pytest.mark.parametrize("letters,out", [
    ("", b"Return-Path: <rp@x.y>\n" + STAMP % b"test.example"
     + b"From: u@test.example\nTo: t@x.y\n\n"),
    ("s", b"Return-Path: <u@test.example>\n" + STAMP % b"test.example"
     + b"From: u@test.example\nTo: t@x.y\n\n"),
    ("i", b"Return-Path: <rp@x.y>\nMessage-ID: <20251105070309.4242.qmail@test.example>\n"
     b"From: u@test.example\nDate: d\nTo: t@x.y\n\n"),
])
def test_injectLetters(home, letters, out):
    msg = b"Return-Path: <rp@x.y>\nTo: t@x.y\n\n"
    if letters == "i":
        msg = b"Return-Path: <rp@x.y>\nDate: d\nMessage-ID: <old@x>\nTo: t@x.y\n\n"
    r = run(home, ["-n"], msg, USER="u", QMAILINJECT=letters)
    assert r.out == out


def test_senderOption(home):
    r = run(home, ["-f", "boss", "-n"], b"Return-Path: <rp@x.y>\nTo: t@x.y\n\n", USER="u")
    assert r.out.startswith(b"Return-Path: <boss@test.example>\n")
    r = run(home, ["-fa b@c.d", "-n"], b"To: t@x.y\n\n", USER="u")
    assert r.out.startswith(b'Return-Path: <"a b"@c.d>\n')
    r = run(home, ["-f", "", "x@y.z"], b"To: t@x.y\n\n", USER="u")
    [(env, _)] = queuedMessages(home)
    assert env == envelope(b"", b"x@y.z")


def test_completion(home):
    with open(os.path.join(home.control, "defaultdomain"), "w") as f:
        f.write("berkeley.edu\n")
    with open(os.path.join(home.control, "plusdomain"), "w") as f:
        f.write("berkeley.edu\n")
    r = run(home, ["-n"], b"To: djb@silverton, eric@mammoth.cs+, fred\n\n", USER="u")
    assert b"\nTo: djb@silverton.berkeley.edu, eric@mammoth.cs.berkeley.edu,\n" \
           b"  fred@test.example\n" in r.out


def test_mailFollowupTo(home, tmp_path):
    lists = tmp_path / "lists"
    lists.write_bytes(b"List@x.y\n")
    r = run(home, ["-n"], b"To: a@x.y, list@x.y\nCc: c@x.y\n\n", USER="u",
            QMAILMFTFILE=str(lists))
    assert (b"Cc: c@x.y\n" not in r.out.split(b"To:")[0])
    assert b"Mail-Followup-To: c@x.y,\n  a@x.y,\n  list@x.y\nTo: " in r.out
    r = run(home, ["-n"], b"To: a@x.y\n\n", USER="u", QMAILMFTFILE=str(lists))
    assert b"Mail-Followup-To" not in r.out


def test_invalidLineEndsHeader(home):
    r = run(home, ["-n"], b"To: t@x.y\nnot a header\nSubject: no\n", USER="u")
    assert r.out.endswith(b"To: t@x.y\n\nnot a header\nSubject: no\n")


def test_lastLineGetsNewline(home):
    r = run(home, [], b"To: t@x.y\n\nno newline", USER="u")
    assert r.code == 0
    [(_, mess)] = queuedMessages(home)
    assert mess.endswith(b"\n\nno newline\n")


def test_mboxFromLineKept(home):
    r = run(home, ["-n"], b"From joe Mon Nov  3 00:00:00 2025\nTo: t@x.y\n\n", USER="u")
    assert r.out.endswith(b"From: u@test.example\n"
                          b"MBOX-Line: From joe Mon Nov  3 00:00:00 2025\nTo: t@x.y\n\n")


@pytest.mark.parametrize("args,stdin,environ,err", [
    (["-f", "a\nTo: evil@x"], b"To: t@x.y\n\n", {}, b"qmail-inject: fatal: newline in -f\n"),
    (["a\r\nBcc: evil@x"], b"", {}, b"qmail-inject: fatal: newline in a recipient argument\n"),
    ([], b"To: t@x.y\n\n", {"MAILUSER": "joe\nBcc: evil@x"},
     b"qmail-inject: fatal: newline in MAILUSER\n"),
    ([], b"To: t@x.y\n\n", {"NAME": "x\ny"}, b"qmail-inject: fatal: newline in NAME\n"),
    ([], b"To: t@x.y\n\n", {"QMAILHOST": "h\r"}, b"qmail-inject: fatal: newline in QMAILHOST\n"),
    ([], b"To: t@x.y\n\n", {"QMAILDEFAULTHOST": "h\n"},
     b"qmail-inject: fatal: newline in QMAILDEFAULTHOST\n"),
    ([], b"To: (unbalanced\n\n", {}, b"qmail-inject: fatal: unable to parse this line:\n"
     b"To: (unbalanced\n"),
    ([], b"From: a@b\nReply-To: ]x\n\n", {},
     b"qmail-inject: fatal: unable to parse this line:\nReply-To: ]x\n"),
    (["x@(y"], b"", {}, b"qmail-inject: fatal: unable to parse address: x@(y\n"),
    (["-f", "x@(y"], b"", {}, b"qmail-inject: fatal: unable to parse this line:\nx@(y\n"),
    (["-z"], b"", {}, inject.USAGE.encode() + b"\n"),
    (["-f"], b"", {}, inject.USAGE.encode() + b"\n"),
])
def test_refusedNothingQueued(home, args, stdin, environ, err):
    r = run(home, args, stdin, **environ)
    assert (r.code, r.err) == (100, err)
    assert queuedMessages(home) == []
    assert os.listdir(home.queue.sub("pid")) == []


def _stub(tmp_path, body: str) -> str:
    path = tmp_path / "qq"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("code,exit,text", [
    (31, 100, b"mail server permanently rejected message (#5.3.0)"),
    (11, 100, b"envelope address too long for qq (#5.1.3)"),
    (53, 111, b"qq write error or disk full (#4.3.0)"),
    (71, 111, b"mail server temporarily rejected message (#4.3.0)"),
    (99, 111, b"qq temporary problem (#4.3.0)"),
    (20, 100, b"qq permanent problem (#5.3.0)"),
])
def test_queueErrors(home, tmp_path, code, exit, text):
    qq = _stub(tmp_path, f"cat >/dev/null; exit {code}\n")
    r = run(home, ["t@x.y"], b"To: t@x.y\n\n", USER="u", QMAILQUEUE=qq)
    assert (r.code, r.err) == (exit, b"qmail-inject: fatal: " + text + b"\n")


def test_qmailqueueProgramGetsMessageAndEnvelope(home, tmp_path):
    out = tmp_path / "out"
    qq = _stub(tmp_path, f"cat > {out}.m; cat <&1 > {out}.e; exit 0\n")
    r = run(home, ["a@x.y", "b@x.y"], b"Subject: s\n\nbody\n", USER="u", QMAILQUEUE=qq)
    assert r.code == 0, r.err
    assert (tmp_path / "out.e").read_bytes() == b"Fu@test.example\0Ta@x.y\0Tb@x.y\0\0"
    assert (tmp_path / "out.m").read_bytes() == (
        STAMP % b"test.example" + b"From: u@test.example\n"
        b"Cc: recipient list not shown: ;\nSubject: s\n\nbody\n")
    assert queuedMessages(home) == []


def test_qmailqueueKilled(home, tmp_path):
    qq = _stub(tmp_path, "kill -9 $$\n")
    r = run(home, ["a@x.y"], b"\n", USER="u", QMAILQUEUE=qq)
    assert (r.code, r.err) == (111, b"qmail-inject: fatal: qq crashed (#4.3.0)\n")


def test_queueMissing(home):
    import shutil

    shutil.rmtree(home.queue.sub("todo"))
    os.mkdir(home.queue.sub("todo"))
    os.chmod(home.queue.sub("todo"), stat.S_IRUSR)
    r = run(home, ["a@x.y"], b"\n", USER="u")
    if os.getuid() == 0:  # root writes anyway
        assert r.code == 0
    else:
        assert (r.code, r.err) == (
            111, b"qmail-inject: fatal: qq trouble creating files in queue (#4.3.0)\n")


def test_noDaemonNoWriteAccess(home, monkeypatch):
    monkeypatch.setattr(queueclient, "queueWritable", lambda home: False)
    r = run(home, ["a@x.y"], b"\n", USER="u")
    assert (r.code, r.err) == (
        111, b"qmail-inject: fatal: qq trouble creating files in queue (#4.3.0)\n")


def test_viaDaemonSocket(home, monkeypatch):
    import socket
    import threading

    monkeypatch.setattr(queueclient, "queueWritable", lambda home: False)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(home.queueSocket)
    server.listen(1)
    got = []

    def serve():
        conn, _ = server.accept()
        data = b""
        while data.count(b",") < 2 or not data.endswith(b"\0\0,"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        got.append(data)
        conn.sendall(b"0\n")
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        r = run(home, ["a@x.y"], b"Subject: s\n\nb\n", USER="u")
    finally:
        t.join(10)
        server.close()
    assert (r.code, r.err) == (0, b"")
    message = (STAMP % b"test.example" + b"From: u@test.example\n"
               b"Cc: recipient list not shown: ;\nSubject: s\n\nb\n")
    envelopeData = b"Fu@test.example\0Ta@x.y\0\0"
    assert got == [b"%d:%s,%d:%s," % (len(message), message, len(envelopeData), envelopeData)]


def test_help(home):
    r = run(home, ["--help"])
    assert (r.code, r.out) == (0, inject.USAGE.encode() + b"\n")


def test_qmailqueueCannotRun(home, tmp_path):
    r = run(home, ["a@x.y"], b"\n", USER="u", QMAILQUEUE=str(tmp_path / "missing"))
    assert (r.code, r.err) == (111, b"qmail-inject: fatal: unable to run qmail-queue\n")


@pytest.mark.parametrize("reply,code,text", [
    (b"31\n", 100, b"mail server permanently rejected message (#5.3.0)"),
    (b"53\n", 111, b"qq write error or disk full (#4.3.0)"),
    (b"", 111, b"communication with mail server failed (#4.4.2)"),
    (b"ok\n", 111, b"communication with mail server failed (#4.4.2)"),
])
def test_daemonSocketFailures(home, monkeypatch, reply, code, text):
    import socket
    import threading

    monkeypatch.setattr(queueclient, "queueWritable", lambda home: False)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(home.queueSocket)
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        data = b""
        while not data.endswith(b"\0\0,"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        conn.sendall(reply)
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        r = run(home, ["a@x.y"], b"\n", USER="u")
    finally:
        t.join(10)
        server.close()
    assert (r.code, r.err) == (code, b"qmail-inject: fatal: " + text + b"\n")


def test_crInDefaulthostIsIgnoredWithWarning(home):
    """A CR in control/defaulthost would go into the From line and make the envelope
    unstorable ("qq internal bug"); it counts as missing (me), with a warning naming it."""
    with open(os.path.join(home.control, "defaulthost"), "wb") as f:
        f.write(b"af.mil\rBcc: spy@evil.example\n")
    r = run(home, [], b"To: fred\n\nhi\n", USER="joe")
    assert r.code == 0
    assert r.err == (b"qmail-inject: warning: control/defaulthost line 1: contains a control "
                     b"character; using default test.example\n")
    [(env, mess)] = queuedMessages(home)
    assert env == envelope(b"joe@test.example", b"fred@test.example")
    assert stripReceived(mess) == (
        STAMP % b"test.example" + b"From: joe@test.example\nTo: fred@test.example\n\nhi\n")
