"""
The SMTP extensions on real sockets (docs/behaviour/smtp-extensions.md 20): BDAT through the
whole daemon into a Maildir, BDAT and DATA mixed, and the recipient check at RCPT (unknown user,
alias catch-all, a virtual domain, relay clients) with what is left in the queue.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread

from qmtwist.home import Home, setup
from tests.integration.daemon import Daemon, waitFor
from tests.integration.smtp.conftest import Client, queuedMessages, queueFiles
from tests.support import freePort, until

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
NOMAILBOX = b"550 5.1.1 sorry, no mailbox here by that name (#5.1.1)\r\n"


def talk(port: int, data: bytes) -> bytes:
    c = Client(port)
    c.send(data)
    return c.readAll()


def test_bdat_chunk_with_dot_line_is_one_message_delivered_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    r = subprocess.run([sys.executable, "-m", "qmtwist.cli", "--home", home.path, "user", "add",
                        "alice"], capture_output=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    port = freePort()
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", f"tcp:{port}:interface=127.0.0.1",
                               "--qmtp", "none", "--pop3", "none"], str(tmp_path / "log"))
    d.start()
    try:
        d.waitLine("status: local 0/10 remote 0/20")
        first = b"Subject: chunks\r\n\r\nbefore\r\n.\r\nafter the dot line\r\n"
        second = b"..two dots stay\r\n\x00\x01\xff\xfe binary\rcr\r\n"  # CR LF split below
        stream = (b"EHLO client.example\r\nMAIL FROM:<joe@example.org>\r\n"
                  b"RCPT TO:<alice@test.example>\r\n"
                  b"BDAT %d\r\n" % (len(first) + 1) + first + second[:1] +
                  b"BDAT %d LAST\r\n" % (len(second) - 1) + second[1:] + b"QUIT\r\n")
        c = Client(port)
        c.send(stream)
        out = c.readAll()
        assert b"\r\n250 2.0.0 ok %d bytes\r\n250 2.0.0 ok " % (len(first) + 1) in out, out
        assert out.endswith(b"\r\n221 2.0.0 test.example\r\n")
        new = os.path.join(home.homes, "alice", "Maildir", "new")
        [name] = waitFor(lambda: os.listdir(new), "the message in alice's Maildir",
                         context=d.tail)
        with open(os.path.join(new, name), "rb") as f:
            got = f.read()
        assert got.endswith(b"\n  by test.example with SMTP; " + got.split(b" with SMTP; ")[1]
                            .split(b"\n")[0] + b"\n" + (first + second).replace(b"\r\n", b"\n"))
        assert got.count(b"Subject: chunks") == 1
    finally:
        assert d.stop() == 0


@pytest_twisted.inlineCallbacks
def test_bdat_then_data_is_refused_and_nothing_queued(startSMTP):
    srv = startSMTP()
    out = yield deferToThread(talk, srv.port,
                              b"MAIL FROM:<a@x.example>\r\nRCPT TO:<bob@test.example>\r\n"
                              b"BDAT 5\r\nab\r\n.DATA\r\nhi\r\n.\r\nRSET\r\nQUIT\r\n")
    assert out == (b"220 test.example ESMTP\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n"
                   b"250 2.0.0 ok 5 bytes\r\n"
                   b"503 5.5.1 sorry, BDAT and DATA may not be mixed (#5.5.1)\r\n"
                   b"502 5.5.1 unimplemented (#5.5.1)\r\n"   # "hi": the transaction is gone
                   b"502 5.5.1 unimplemented (#5.5.1)\r\n"   # "."
                   b"250 2.0.0 flushed\r\n221 2.0.0 test.example\r\n")
    # an aborted message's files are removed on a thread, just after the session
    yield ensureDeferred(until(lambda: queueFiles(srv.home) == [], "no queue files"))


RCPTS = (b"MAIL FROM:<a@x.example>\r\nRCPT TO:<nobody@test.example>\r\n"
         b"RCPT TO:<postmaster@test.example>\r\nRCPT TO:<x@virt.example>\r\n"
         b"RCPT TO:<far@elsewhere.example>\r\n")


def setVirtual(home) -> None:
    with open(os.path.join(home.control, "virtualdomains"), "wb") as f:
        f.write(b"virt.example:alias-virt\n")
    with open(os.path.join(home.control, "rcpthosts"), "ab") as f:
        f.write(b"virt.example\n")


@pytest_twisted.inlineCallbacks
def test_rcpt_to_unknown_local_user_is_550_and_nothing_queued(startSMTP):
    srv = startSMTP(catchAll=False)
    setVirtual(srv.home)
    srv.ctx.controls.reload()
    out = yield deferToThread(talk, srv.port, RCPTS + b"QUIT\r\n")
    nogw = b"553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\r\n"
    assert out == (b"220 test.example ESMTP\r\n250 2.1.0 ok\r\n" + NOMAILBOX +
                   b"250 2.1.5 ok\r\n" + NOMAILBOX + nogw +  # postmaster is there (alias/)
                   b"221 2.0.0 test.example\r\n")
    out = yield deferToThread(talk, srv.port, RCPTS.replace(b"<postmaster@", b"<nobody2@") +
                              b"DATA\r\nQUIT\r\n")
    assert out.endswith(NOMAILBOX + nogw + b"503 5.5.1 RCPT first (#5.5.1)\r\n"
                        b"221 2.0.0 test.example\r\n")
    # an aborted message's files are removed on a thread, just after the session
    yield ensureDeferred(until(lambda: queueFiles(srv.home) == [], "no queue files"))


@pytest_twisted.inlineCallbacks
def test_alias_catch_all_makes_every_name_deliverable(startSMTP):
    srv = startSMTP(catchAll=False)
    setVirtual(srv.home)
    with open(os.path.join(srv.home.alias, ".qmail-default"), "wb"):
        pass
    srv.ctx.controls.reload()
    out = yield deferToThread(talk, srv.port, RCPTS + b"DATA\r\nhi\r\n.\r\nQUIT\r\n")
    assert out.startswith(b"220 test.example ESMTP\r\n250 2.1.0 ok\r\n" + b"250 2.1.5 ok\r\n" * 3 +
                          b"553 5.7.1 ")
    [(env, _)] = queuedMessages(srv.home)
    assert list(env.recipients) == [b"nobody@test.example", b"postmaster@test.example",
                                    b"x@virt.example"]


@pytest_twisted.inlineCallbacks
def test_relay_clients_are_not_checked(startSMTP):
    srv = startSMTP(rules=b'127.:allow,RELAYCLIENT=""\n', catchAll=False)
    out = yield deferToThread(talk, srv.port, b"MAIL FROM:<a@x.example>\r\n"
                              b"RCPT TO:<nobody@test.example>\r\nQUIT\r\n")
    assert out == (b"220 test.example ESMTP\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n"
                   b"221 2.0.0 test.example\r\n")
