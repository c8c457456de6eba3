"""The helper programs of docs/behaviour/tools.md 13: argv, environment, exit codes and exact output."""

from __future__ import annotations

import os
import syslog

import pytest

from qmtwist.queue.envelope import encodeChannel, encodeInfo
from qmtwist.tools import (
    bouncesaying, condredirect, except_, forward, maildir2mbox, maildirmake, preline, qread,
    qstat, showctl, splogger)
from tests.unit.tools.helpers import queuedMessages, runMain, stripReceived

DELIVERY = {
    "UFLINE": "From a@b.c Wed Nov 05 07:03:09 2025\n",
    "RPLINE": "Return-Path: <a@b.c>\n",
    "DTLINE": "Delivered-To: me@x.y\n",
    "SENDER": "a@b.c",
    "NEWSENDER": "me-owner@x.y",
    "PATH": os.environ["PATH"],
}
MSG = b"Subject: hi\n\nbody\n"


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def envelope(sender: bytes, *recipients: bytes) -> bytes:
    return (b"u%d\0p%d\0F" % (os.getuid(), os.getpid()) + sender + b"\0"
            + b"".join(b"T" + r + b"\0" for r in recipients))


# -- forward -------------------------------------------------------------------------------

def test_forward(home):
    r = runMain(forward.main, home, ["forward", "x@far.example", "y@far.example"], MSG,
                **DELIVERY)
    assert (r.code, r.err) == (0, b"forward: qp %d\n" % os.getpid())
    [(env, mess)] = queuedMessages(home)
    assert env == envelope(b"me-owner@x.y", b"x@far.example", b"y@far.example")
    assert stripReceived(mess) == b"Delivered-To: me@x.y\n" + MSG


@pytest.mark.parametrize("missing,err", [
    ("NEWSENDER", b"forward: fatal: NEWSENDER not set\n"),
    ("DTLINE", b"forward: fatal: DTLINE not set\n")])
def test_forwardMissing(home, missing, err):
    environ = {k: v for k, v in DELIVERY.items() if k != missing}
    r = runMain(forward.main, home, ["forward", "x@y"], MSG, **environ)
    assert (r.code, r.err) == (100, err)
    assert queuedMessages(home) == []


@pytest.mark.parametrize("code,exit", [(31, 100), (53, 111)])
def test_forwardQueueError(home, tmp_path, code, exit):
    qq = tmp_path / "qq"
    qq.write_text(f"#!/bin/sh\nexit {code}\n")
    qq.chmod(0o755)
    r = runMain(forward.main, home, ["forward", "x@y"], MSG, QMAILQUEUE=str(qq), **DELIVERY)
    assert r.code == exit
    assert r.err.startswith(b"forward: fatal: ")


# -- preline -------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,prefix", [
    ([], b"From a@b.c Wed Nov 05 07:03:09 2025\nReturn-Path: <a@b.c>\nDelivered-To: me@x.y\n"),
    (["-f"], b"Return-Path: <a@b.c>\nDelivered-To: me@x.y\n"),
    (["-d"], b"From a@b.c Wed Nov 05 07:03:09 2025\nReturn-Path: <a@b.c>\n"),
    (["-df"], b"Return-Path: <a@b.c>\n"),
    (["-d", "-f"], b"Return-Path: <a@b.c>\n"),
    (["-r"], b"From a@b.c Wed Nov 05 07:03:09 2025\nDelivered-To: me@x.y\n"),
    (["-dfr"], b""),
    (["-dD"], b"From a@b.c Wed Nov 05 07:03:09 2025\nReturn-Path: <a@b.c>\nDelivered-To: me@x.y\n"),
    (["-fF", "-R"], b"From a@b.c Wed Nov 05 07:03:09 2025\nReturn-Path: <a@b.c>\n"
     b"Delivered-To: me@x.y\n"),
])
def test_prelineBytes(home, flags, prefix):
    r = runMain(preline.main, home, ["preline", *flags, "cat"], MSG, **DELIVERY)
    assert (r.code, r.out, r.err) == (0, prefix + MSG, b"")


def test_prelineExitCodes(home):
    r = runMain(preline.main, home, ["preline", *sh("cat >/dev/null; exit 100")], MSG,
                **DELIVERY)
    assert r.code == 100
    r = runMain(preline.main, home, ["preline", *sh("exit 0")], MSG, **DELIVERY)
    assert r.code == 0
    r = runMain(preline.main, home, ["preline", *sh("kill -9 $$")], MSG, **DELIVERY)
    assert (r.code, r.err) == (111, b"preline: fatal: child crashed\n")
    r = runMain(preline.main, home, ["preline", "/nonexistent/prog"], MSG, **DELIVERY)
    assert (r.code, r.err) == (
        100, b"preline: fatal: unable to run /nonexistent/prog: No such file or directory\n")


@pytest.mark.parametrize("argv,environ", [
    (["preline"], DELIVERY),
    (["preline", "-x", "cat"], DELIVERY),
    (["preline", "-d"], DELIVERY),
    (["preline", "cat"], {k: v for k, v in DELIVERY.items() if k != "UFLINE"}),
    (["preline", "cat"], {k: v for k, v in DELIVERY.items() if k != "RPLINE"}),
    (["preline", "cat"], {k: v for k, v in DELIVERY.items() if k != "DTLINE"}),
])
def test_prelineUsage(home, argv, environ):
    r = runMain(preline.main, home, argv, MSG, **environ)
    assert (r.code, r.err) == (100, b"preline: usage: preline cmd [ arg ... ]\n")


# -- condredirect, bouncesaying, except ----------------------------------------------------

def test_condredirectForwards(home):
    r = runMain(condredirect.main, home,
                ["condredirect", "new@x.y", *sh("grep -q body")], MSG, **DELIVERY)
    assert (r.code, r.err) == (99, b"condredirect: qp %d\n" % os.getpid())
    [(env, mess)] = queuedMessages(home)
    assert env == envelope(b"a@b.c", b"new@x.y")
    assert stripReceived(mess) == b"Delivered-To: me@x.y\n" + MSG


def test_condredirectRewindsRealFile(home, tmp_path):
    import io
    from qmtwist.tools.base import ProgramEnv

    f = tmp_path / "msg"
    f.write_bytes(MSG)
    with open(f, "rb") as stdin:
        err = io.BytesIO()
        env = ProgramEnv(home, dict(DELIVERY), stdin, io.BytesIO(), err)
        code = condredirect.main(["condredirect", "new@x.y", *sh("cat >/dev/null")], env)
    assert code == 99
    [(_, mess)] = queuedMessages(home)
    assert stripReceived(mess) == b"Delivered-To: me@x.y\n" + MSG


@pytest.mark.parametrize("script,code,err", [
    ("exit 1", 0, b""),
    ("exit 100", 0, b""),
    ("exit 111", 111, b"condredirect: fatal: temporary child error\n"),
    ("kill -9 $$", 111, b"condredirect: fatal: child crashed\n"),
])
def test_condredirectNoForward(home, script, code, err):
    r = runMain(condredirect.main, home, ["condredirect", "n@x.y", *sh(script)], MSG,
                **DELIVERY)
    assert (r.code, r.err) == (code, err)
    assert queuedMessages(home) == []


def test_condredirectMissing(home):
    r = runMain(condredirect.main, home, ["condredirect", "n@x.y"], MSG, **DELIVERY)
    assert (r.code, r.err) == (
        100, b"condredirect: usage: condredirect newaddress program [ arg ... ]\n")
    r = runMain(condredirect.main, home, ["condredirect", "n@x.y", "true"], MSG,
                **{k: v for k, v in DELIVERY.items() if k != "SENDER"})
    assert (r.code, r.err) == (100, b"condredirect: fatal: SENDER not set\n")
    r = runMain(condredirect.main, home, ["condredirect", "n@x.y", "/no/such"], MSG, **DELIVERY)
    assert r.code == 0


@pytest.mark.parametrize("argv,code,err", [
    (["bouncesaying", "Go away."], 100, b"Go away.\n"),
    (["bouncesaying", "Go away.", *sh("exit 0")], 100, b"Go away.\n"),
    (["bouncesaying", "Go away.", *sh("exit 1")], 0, b""),
    (["bouncesaying", "Go away.", *sh("exit 111")], 111,
     b"bouncesaying: fatal: temporary child error\n"),
    (["bouncesaying"], 100, b"bouncesaying: usage: bouncesaying error [ program [ arg ... ] ]\n"),
    (["except", *sh("exit 0")], 100, b""),
    (["except", *sh("exit 1")], 0, b""),
    (["except", *sh("exit 100")], 0, b""),
    (["except", *sh("exit 111")], 111, b"except: fatal: temporary child error\n"),
    (["except", *sh("kill -9 $$")], 111, b"except: fatal: child crashed\n"),
    (["except", "/no/such/program"], 0, b""),
    (["except"], 100, b"except: usage: except program [ arg ... ]\n"),
])
def test_bouncesayingExcept(home, argv, code, err):
    main = bouncesaying.main if argv[0] == "bouncesaying" else except_.main
    r = runMain(main, home, argv, MSG, **DELIVERY)
    assert (r.code, r.err) == (code, err)


def test_childSeesMessageAndOutputPassesThrough(home):
    r = runMain(except_.main, home, ["except", *sh("cat; echo out; echo err >&2; exit 3")],
                MSG, **DELIVERY)
    assert (r.code, r.out, r.err) == (0, MSG + b"out\n", b"err\n")


# -- maildirmake, maildir2mbox ------------------------------------------------------------

def test_maildirmake(home, tmp_path):
    d = tmp_path / "pppdir"
    r = runMain(maildirmake.main, home, ["maildirmake", str(d)])
    assert r.code == 0
    assert sorted(os.listdir(d)) == ["cur", "new", "tmp"]
    for p in (d, d / "tmp", d / "new", d / "cur"):
        assert os.stat(p).st_mode & 0o777 == 0o700
    r = runMain(maildirmake.main, home, ["maildirmake", str(d)])
    assert (r.code, r.err) == (
        111, f"maildirmake: fatal: unable to mkdir {d}: File exists\n".encode())
    r = runMain(maildirmake.main, home, ["maildirmake"])
    assert (r.code, r.err) == (100, b"maildirmake: usage: maildirmake name\n")


def test_maildir2mbox(home, tmp_path):
    md = tmp_path / "Maildir"
    runMain(maildirmake.main, home, ["maildirmake", str(md)])
    (md / "new" / "1762326189.1.host").write_bytes(
        b"Return-Path: <a b@c.d>\nDelivered-To: me@x\n\nFrom the start\n>From quoted\nlast")
    (md / "cur" / "1762326190.2.host:2,S").write_bytes(b"Return-Path: <>\n\nbounce\n")
    (md / "new" / "1762326191.3.host").write_bytes(b"No-Return-Path: x\n\nplain\n")
    mbox = tmp_path / "mbox"
    mbox.write_bytes(b"From old Mon Jan 01 00:00:00 2024\nold\n\n")
    r = runMain(maildir2mbox.main, home, ["maildir2mbox"], MAILDIR=str(md), MAIL=str(mbox),
                MAILTMP=str(tmp_path / "mbox.tmp"))
    assert (r.code, r.err) == (0, b"")
    assert mbox.read_bytes() == (
        b"From old Mon Jan 01 00:00:00 2024\nold\n\n"
        b"From a-b@c.d Wed Nov 05 07:03:09 2025\n"
        b"Return-Path: <a b@c.d>\nDelivered-To: me@x\n\n>From the start\n>>From quoted\nlast\n\n"
        b"From MAILER-DAEMON Wed Nov 05 07:03:10 2025\nReturn-Path: <>\n\nbounce\n\n"
        b"From XXX Wed Nov 05 07:03:11 2025\nNo-Return-Path: x\n\nplain\n\n")
    assert os.listdir(md / "new") == [] and os.listdir(md / "cur") == []
    assert not (tmp_path / "mbox.tmp").exists()


def test_maildir2mboxErrors(home, tmp_path):
    r = runMain(maildir2mbox.main, home, ["maildir2mbox"], MAIL="x", MAILTMP="y")
    assert (r.code, r.err) == (111, b"maildir2mbox: fatal: MAILDIR not set\n")
    md = tmp_path / "Maildir"
    runMain(maildirmake.main, home, ["maildirmake", str(md)])
    (md / "new" / "1.1.h").write_bytes(b"x\n")
    r = runMain(maildir2mbox.main, home, ["maildir2mbox"], MAILDIR=str(md),
                MAIL=str(tmp_path / "mbox"), MAILTMP=str(tmp_path / "no" / "tmp"))
    assert r.code == 111
    assert os.listdir(md / "new") == ["1.1.h"]


# -- qmail-qread, qmail-qstat, qmail-showctl ----------------------------------------------

def _fakeQueued(home, n: int, sender: bytes, local: list[bytes], remote: list[bytes],
                size: int = 10, bounce: bool = False) -> None:
    layout = home.queue
    with open(layout.mess(n), "wb") as f:
        f.write(b"x" * size)
    with open(layout.info(n), "wb") as f:
        f.write(encodeInfo(sender))
    os.utime(layout.info(n), (1762326189, 1762326189))
    if local:
        with open(layout.local(n), "wb") as f:
            f.write(encodeChannel(local))
    if remote:
        with open(layout.remote(n), "wb") as f:
            f.write(encodeChannel(remote))
    if bounce:
        open(layout.bounce(n), "wb").close()


def test_qread(home):
    _fakeQueued(home, 46, b"a@b.c", [b"me@x.y"], [b"r1@far", b"r\x01x@far"], size=123)
    with open(home.queue.remote(46), "r+b") as f:
        f.write(b"D")
    _fakeQueued(home, 47, b"", [b"postmaster@x.y"], [], bounce=True)
    r = runMain(qread.main, home, ["qmail-qread"])
    assert (r.code, r.out) == (0,
        b"5 Nov 2025 07:03:09 GMT  #46  123  <a@b.c> \n"
        b"\tlocal\tme@x.y\n"
        b"  done\tremote\tr1@far\n"
        b"\tremote\tr_x@far\n"
        b"5 Nov 2025 07:03:09 GMT  #47  10  <>  bouncing\n"
        b"\tlocal\tpostmaster@x.y\n")


def test_qstat(home):
    _fakeQueued(home, 46, b"a@b.c", [b"me@x.y"], [])
    open(home.queue.todo(99), "wb").close()
    r = runMain(qstat.main, home, ["qmail-qstat"])
    assert (r.code, r.out) == (
        0, b"messages in queue: 1\nmessages in queue but not yet preprocessed: 1\n")


def test_showctl(home):
    with open(os.path.join(home.control, "concurrencyremote"), "w") as f:
        f.write("100\n")
    with open(os.path.join(home.control, "mystery"), "w") as f:
        f.write("?\n")
    r = runMain(showctl.main, home, ["qmail-showctl"])
    assert r.code == 0
    out = r.out.decode()
    assert out.startswith(f"qmail home directory: {home.path}.\nuser-ext delimiter: -.\n"
                          "subdirectory split: 23.\n")
    assert "\nconcurrencyremote: Remote concurrency is 100.\n" in out
    assert "\nconcurrencylocal: (Default.) Local concurrency is 10.\n" in out
    assert "\nme: My name is test.example.\n" in out
    assert "\ndefaulthost: (Default.) Default host name is test.example.\n" in out
    assert "\nlocals: \nMessages for test.example are delivered locally.\n" \
           "Messages for localhost are delivered locally.\n" in out
    assert "\nvirtualdomains: (Default.) No virtual domains.\n" in out
    assert out.endswith("\nmystery: I have no idea what this file does.\n")


# -- splogger -------------------------------------------------------------------------------

def test_spLoggerRecords():
    assert splogger.records(b"", "1.0") == []
    assert splogger.records(b"status: ok", "1.0") == [(syslog.LOG_INFO, "1.0 status: ok")]
    assert splogger.records(b"alert: oops\x01", "1.0") == [
        (syslog.LOG_ALERT, "1.0 alert: oops?")]
    assert splogger.records(b"warning: w", "1.0") == [(syslog.LOG_WARNING, "1.0 warning: w")]
    long = splogger.records(b"a" * 800, "1.0")
    assert long == [(syslog.LOG_INFO, "1.0 " + "a" * 799), (syslog.LOG_INFO, "1.0+a")]
    assert splogger.timestamp(1762326189.000042) == "1762326189.000042"


def test_spLoggerMain(home):
    import io
    from qmtwist.tools.base import ProgramEnv

    got = []
    env = ProgramEnv(home, {}, io.BytesIO(b"one\n\nalert: two\n"), io.BytesIO(), io.BytesIO())
    assert splogger.main(["splogger", "smtpd", "3"], env, log=lambda p, t: got.append((p, t))) == 0
    assert [(p, t.split(" ", 1)[1]) for p, t in got] == [
        (syslog.LOG_INFO, "one"), (syslog.LOG_ALERT, "alert: two")]
