"""
FAQ items end to end (issue 8): each test starts C{twistd -n qmtwist} on a fresh home, injects
with the HOME/bin programs (or the queue's C{inject}), lets the daemon deliver, and looks at the
mailbox, the program's record, the log and the bounce.

FAQ 1.1, 2.3, 2.4, 4.2 (qlist2), 5.5 (full form), 6.2, 8.2 (both forms).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest

from qmtwist.home import Home, setup
from qmtwist.queue.store import inject
from qmtwist.users import userCommand
from tests.bounceparts import qsbmf
from tests.integration.daemon import Daemon
from tests.integration.tools.conftest import childEnv
from tests.integration.tools.test_serial import Peer

NO_LISTENERS = ["--smtp", "none", "--qmtp", "none", "--pop3", "none"]


@pytest.fixture
def qm(tmp_path):
    """A fresh home (me = test.example) and a daemon on it, not yet started."""
    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    d = Daemon(str(tmp_path), ["--home", home.path, *NO_LISTENERS], str(tmp_path / "log"))
    yield home, d
    assert d.stop() == 0


# -- helpers -------------------------------------------------------------------------------


def control(home: Home, name: str, text: bytes, append: bool = False) -> None:
    path = os.path.join(home.control, name)
    with open(path, "ab" if append else "wb") as f:
        f.write(text)
    os.chmod(path, 0o644)


def user(home: Home, name: str) -> str:
    """A user made with C{qmtwist user add}; its home directory."""
    assert userCommand(home, ["add", name]) == 0
    return os.path.join(home.homes, name)


def owned(homeDir: str, path: str) -> None:
    """As root, C{path} (and below) belongs to the owner of C{homeDir}, as the user's own would."""
    if os.getuid() != 0:
        return
    st = os.stat(homeDir)
    os.chown(path, st.st_uid, st.st_gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), st.st_uid, st.st_gid)


def dotqmail(homeDir: str, name: str, text: bytes) -> None:
    path = os.path.join(homeDir, name)
    with open(path, "wb") as f:
        f.write(text)
    os.chmod(path, 0o644)
    owned(homeDir, path)


def start(d: Daemon) -> None:
    d.start()
    d.waitLine("status: local 0/10")


def files(maildir: str) -> list[bytes]:
    """Every message in C{new/} and C{cur/}, oldest name first."""
    out = []
    for sub in ("new", "cur"):
        p = os.path.join(maildir, sub)
        for n in sorted(os.listdir(p)):
            with open(os.path.join(p, n), "rb") as f:
                out.append(f.read())
    return out


def waitFiles(d: Daemon, maildir: str, n: int) -> list[bytes]:
    return d.waitFor(lambda: len(files(maildir)) >= n and files(maildir),
                     f"{n} message(s) in {maildir}")


def program(home: Home, name: str, args: list[str], stdin: bytes = b"",
            **environ: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([os.path.join(home.bin, name), *args], input=stdin, check=False,
                          capture_output=True, env=childEnv(**environ), timeout=60)


def header(message: bytes) -> bytes:
    return message.split(b"\n\n", 1)[0] + b"\n"


# -- FAQ 1.1 -------------------------------------------------------------------------------


def test_faq11_hostMasqueradingDelivered(qm):
    home, d = qm
    control(home, "defaulthost", b"af.mil\n")
    control(home, "locals", b"af.mil\n", append=True)
    fred = user(home, "fred")
    start(d)
    r = program(home, "qmail-inject", [], b"To: fred\n\nx\n", USER="joe")
    assert (r.returncode, r.stderr) == (0, b"")
    [m] = waitFiles(d, os.path.join(fred, "Maildir"), 1)
    assert m.startswith(b"Return-Path: <joe@af.mil>\nDelivered-To: fred@af.mil\nReceived: ")
    h = header(m)
    assert b"\nFrom: joe@af.mil\n" in h and b"\nTo: fred@af.mil\n" in h
    assert m.endswith(b"\n\nx\n")
    d.waitLine("end msg")
    assert any(re.match(r"info msg \d+: bytes \d+ from <joe@af\.mil> ", x) for x in d.lines())
    assert any(re.match(r"starting delivery \d+: msg \d+ to local fred@af\.mil$", x)
               for x in d.lines())


# -- FAQ 2.3 -------------------------------------------------------------------------------

FAQ23 = '|preline -df {uux} - -r -gC -a"$SENDER" gonzo!rmail "($EXT2@$HOST)"\n'


def test_faq23_uucpThroughTheDaemon(qm, tmp_path):
    home, d = qm
    control(home, "virtualdomains", b":alias-uucp\n")
    snd = user(home, "snd")
    record = tmp_path / "uux-record"
    record.mkdir()
    owned(home.alias, str(record))
    uux = tmp_path / "fake-uux"
    uux.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > {record}/args\n'
                   f'cat > {record}/stdin\nexit $(cat {record}/exit 2>/dev/null || echo 0)\n')
    uux.chmod(0o755)
    dotqmail(home.alias, ".qmail-uucp-default", FAQ23.format(uux=uux).encode())
    start(d)
    message = b"From: snd@test.example\nSubject: uucp\n\nFrom the body\n"
    inject(home.queue, b"snd@test.example", [b"joe@far.org"], message, b"by uid 0",
           controlDir=home.control)
    d.waitFor(lambda: (record / "stdin").exists() and (record / "args").exists()
              and any(x.startswith("delivery ") for x in d.lines()), "the uux record")
    d.waitLine("end msg")
    assert any(re.match(r"starting delivery \d+: msg \d+ to local alias-uucp-joe@far\.org$", x)
               for x in d.lines())
    assert (record / "args").read_bytes() == (
        b"-\n-r\n-gC\n-asnd@test.example\ngonzo!rmail\n(joe@far.org)\n")
    given = (record / "stdin").read_bytes()
    assert given.startswith(b"Return-Path: <snd@test.example>\nReceived: (qmail ")
    assert given.endswith(b"\n" + message)
    assert b"Delivered-To" not in given and not given.startswith(b"From ")
    assert given.count(b"\n") == message.count(b"\n") + 2  # Return-Path + one Received

    # uux refusing (exit 100): the sender gets a bounce naming the recipient
    (record / "exit").write_text("100\n")
    inject(home.queue, b"snd@test.example", [b"joe@far.org"], message, b"by uid 0",
           controlDir=home.control)
    [bounce] = waitFiles(d, os.path.join(snd, "Maildir"), 1)
    assert bounce.startswith(b"Return-Path: <>\nDelivered-To: snd@test.example\n")
    assert b"\n<joe@far.org>:\n" in bounce
    assert (b"\n--- Below this line is a copy of the message.\n\n"
            b"Return-Path: <snd@test.example>\nReceived: (qmail ") in bounce
    assert qsbmf(bounce).endswith(b"\n" + message)  # qmail's text is the report's first part


# -- FAQ 2.4 -------------------------------------------------------------------------------


def test_faq24_pppQueueFlushedWithMaildirsmtp(qm):
    home, d = qm
    control(home, "virtualdomains", b"virt.host:joe-ppp\n")
    joe = user(home, "joe")
    dotqmail(joe, ".qmail-ppp-default", b"./pppdir/\n")
    pppdir = os.path.join(joe, "pppdir")
    r = program(home, "maildirmake", [pppdir])
    assert (r.returncode, r.stderr) == (0, b"")
    owned(joe, pppdir)
    start(d)
    for rcpt, body in ((b"ann@virt.host", b"first\n.\nline\n"), (b"bob@virt.host", b"second\n")):
        inject(home.queue, b"alice@here.example", [rcpt], b"Subject: ppp\n\n" + body,
               b"by uid 0", controlDir=home.control)
    piled = waitFiles(d, pppdir, 2)
    assert sorted(m.split(b"\n", 2)[1] for m in piled) == [
        b"Delivered-To: joe-ppp-ann@virt.host", b"Delivered-To: joe-ppp-bob@virt.host"]
    assert os.listdir(os.path.join(pppdir, "cur")) == []

    peer = Peer("smtp")
    try:
        r = program(home, "maildirsmtp", [pppdir, "joe-ppp-", "127.0.0.1", "helohost"],
                    PORT=str(peer.port))
    finally:
        peer.close()
    assert (r.returncode, r.stderr) == (0, b"")
    assert peer.helo == b"helohost"
    got = sorted(peer.accepted)
    assert [(s, rc) for s, rc, _ in got] == [(b"alice@here.example", b"ann@virt.host"),
                                             (b"alice@here.example", b"bob@virt.host")]
    assert got[0][2].startswith(b"Received: (qmail ")
    assert got[0][2].endswith(b"\r\nSubject: ppp\r\n\r\nfirst\r\n.\r\nline\r\n")
    assert got[1][2].endswith(b"\r\nSubject: ppp\r\n\r\nsecond\r\n")
    assert files(pppdir) == []


# -- FAQ 4.2 (qlist2) ----------------------------------------------------------------------


def test_faq42_qlist2SubscriptionByMail(qm):
    home, d = qm
    me = user(home, "me")
    sub = user(home, "sub")
    dotqmail(me, ".qmail-sos", b"&me@test.example\n")
    dotqmail(me, ".qmail-sos-owner", b"")
    dotqmail(me, ".qmail-sos-request", b"| qlist2 sos test.example\n")
    start(d)
    r = program(home, "qmail-inject", ["me-sos-request@test.example"], b"", USER="sub")
    assert (r.returncode, r.stderr) == (0, b"")
    [confirm] = waitFiles(d, os.path.join(sub, "Maildir"), 1)
    h = header(confirm)
    assert h.startswith(b"Return-Path: <me-sos-owner@test.example>\n"
                        b"Delivered-To: sub@test.example\n")
    cookie = re.search(rb"\nSubject: (confirm [0-9a-f]{32})\n", h).group(1)
    replyTo = re.search(rb"\nReply-To: (\S+)\n", h).group(1)
    assert replyTo == b"me-sos-request@test.example"
    with open(os.path.join(me, ".qmail-sos"), "rb") as f:
        assert f.read() == b"&me@test.example\n"

    r = program(home, "qmail-inject", [replyTo.decode()],
                b"Subject: Re: " + cookie + b"\n\nyes\n", USER="sub")
    assert (r.returncode, r.stderr) == (0, b"")
    msgs = waitFiles(d, os.path.join(sub, "Maildir"), 2)
    ack = [m for m in msgs if m != confirm]
    assert len(ack) == 1
    assert b"Acknowledgment: sub@test.example is now a subscriber." in ack[0]
    with open(os.path.join(me, ".qmail-sos"), "rb") as f:
        assert f.read() == b"&me@test.example\n&sub@test.example\n"


# -- FAQ 5.5 -------------------------------------------------------------------------------

FAQ55 = (b"| bouncesaying 'Permission denied' [ \"@$HOST\" != \"@fixme\" ]\n"
         b"| qmail-inject -f \"$SENDER\" -- \"$EXT2\"\n")


def test_faq55_fixupFullForm(qm):
    home, d = qm
    control(home, "virtualdomains", b"fixme:fixup\nother.example:fixup\n")
    # the re-injected copy goes remote; a closed local port defers it at once
    control(home, "smtproutes", b"x.example:127.0.0.1:1\n")
    snd = user(home, "snd")
    dotqmail(home.alias, ".qmail-fixup-default", FAQ55)
    start(d)
    inject(home.queue, b"snd@test.example", [b"joe@x.example@fixme"],
           b"To: joe@x.example\nSubject: fix\n\nbody\n", b"by uid 0", controlDir=home.control)
    d.waitLine("to local fixup-joe@x.example@fixme")
    d.waitLine("to remote joe@x.example")
    lines = d.lines()
    info = [x for x in lines if re.match(r"info msg \d+: bytes \d+ from <snd@test\.example> ", x)]
    assert len(info) == 2  # the original and the re-injected copy, both from the sender

    inject(home.queue, b"snd@test.example", [b"joe@x.example@other.example"],
           b"Subject: not fixme\n\nbody\n", b"by uid 0", controlDir=home.control)
    [bounce] = waitFiles(d, os.path.join(snd, "Maildir"), 1)
    assert bounce.startswith(b"Return-Path: <>\nDelivered-To: snd@test.example\n")
    assert b"\n<joe@x.example@other.example>:\nPermission denied\n" in bounce
    d.waitLine("to local fixup-joe@x.example@other.example")


# -- FAQ 6.2 -------------------------------------------------------------------------------


def test_faq62_pineSendmailDelivered(qm):
    home, d = qm
    homes = {n: user(home, n) for n in ("ann", "cat", "bob")}
    start(d)
    message = (b"To: ann@test.example\nCc: cat@test.example\nBcc: bob@test.example\n"
               b"Subject: pine\n\none\n.\ntwo\n")
    r = program(home, "sendmail", ["-oem", "-oi", "-t"], message, USER="pine")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    for name, h in homes.items():
        [m] = waitFiles(d, os.path.join(h, "Maildir"), 1)
        assert m.startswith(b"Return-Path: <pine@test.example>\nDelivered-To: %s@test.example\n"
                            % name.encode())
        assert b"Bcc" not in m and b"bob@" not in m.split(b"\n", 2)[2]
        assert b"\nTo: ann@test.example\n" in header(m)
        assert b"\nCc: cat@test.example\n" in header(m)
        assert m.endswith(b"\n\none\n.\ntwo\n")


# -- FAQ 8.2 -------------------------------------------------------------------------------

AWK = b"| awk '/^$/ { exit } /^[mM][eE][sS][sS][aA][gG][eE]-/ { print }'\n"


def _mboxMessages(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    parts = data.split(b"\n\nFrom ") if data else []
    return [p if i == 0 else b"From " + p for i, p in enumerate(parts)]


def test_faq82_queueextraLogsEverything(qm):
    home, d = qm
    control(home, "queueextra", b"log\n")
    dotqmail(home.alias, ".qmail-log", b"./msg-log\n")
    fred = user(home, "fred")
    snd = user(home, "snd")
    start(d)
    inject(home.queue, b"snd@test.example", [b"fred@test.example", b"nosuch@test.example"],
           b"Message-ID: <m1@test.example>\nSubject: logged\n\nbody\n", b"by uid 0",
           controlDir=home.control)
    [m] = waitFiles(d, os.path.join(fred, "Maildir"), 1)
    assert m.endswith(b"\nSubject: logged\n\nbody\n")
    [bounce] = waitFiles(d, os.path.join(snd, "Maildir"), 1)
    assert b"\n<nosuch@test.example>:\n" in bounce
    log = os.path.join(home.alias, "msg-log")
    # both messages finished (the original, then its bounce): the mbox is complete
    d.waitFor(lambda: sum(x.startswith("end msg ") for x in d.lines()) == 2, "two end msg lines")
    logged = _mboxMessages(log)
    assert len(logged) == 2
    original, bounced = logged if b"Subject: logged" in header(logged[0]) else logged[::-1]
    assert re.match(rb"From snd@test\.example .*\nReturn-Path: <snd@test\.example>\n"
                    rb"Delivered-To: log@test\.example\n", original)
    assert original.rstrip(b"\n").endswith(b"\nSubject: logged\n\nbody")
    assert re.match(rb"From MAILER-DAEMON .*\nReturn-Path: <>\n"
                    rb"Delivered-To: log@test\.example\n", bounced)
    assert b"\n<nosuch@test.example>:\n" in bounced

    # the FAQ's awk line instead: the Message-ID goes into the delivery's log line
    dotqmail(home.alias, ".qmail-log", AWK)
    inject(home.queue, b"snd@test.example", [b"fred@test.example"],
           b"Message-ID: <m2@test.example>\nSubject: awk\n\nbody\n", b"by uid 0",
           controlDir=home.control)
    d.waitLine("success: Message-ID:_<m2@test.example>/")
    waitFiles(d, os.path.join(fred, "Maildir"), 2)
    assert len(_mboxMessages(log)) == 2
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600
