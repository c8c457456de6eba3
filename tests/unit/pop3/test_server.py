"""qmail-popup and qmail-pop3d dialogues on a StringTransport (docs/behaviour/pop3.md 10.1, 10.3)."""

from __future__ import annotations

import os

import pytest
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from qmtwist.pop3.checkpassword import ILogin, Result
from qmtwist.pop3.server import POP3Server, Pop3dServer
from tests.conftest import logLines
from tests.unit.pop3.test_mailbox import makeMaildir, put

NOW = 1762326189


@pytest.fixture
def maildir(tmp_path):
    md = makeMaildir(tmp_path / "Maildir")
    put(md, "cur/100.A.h:2,S", b"Subject: one\n\nfirst\n.dot\n")
    put(md, "new/200.B.h", b"Subject: two\n\nl1\nl2\nl3\n")
    put(md, "new/300.C.h", b"Subject: three\n\n\xe9\xff\n")
    return md


def pop3d(maildir):
    clock = Clock()
    clock.advance(NOW)
    proto = Pop3dServer(maildir, clock, maybeDeferred)
    tr = StringTransport()
    proto.makeConnection(tr)
    return proto, tr, clock


def talk(proto, tr, line: bytes) -> bytes:
    tr.clear()
    proto.dataReceived(line)
    return tr.value()


# (command, reply) in one session; sizes: 25, 23, 19 octets
DIALOGUE = [
    (b"STAT\r\n", b"+OK 3 67\r\n"),
    (b"stat\n", b"+OK 3 67\r\n"),
    (b"LIST\r\n", b"+OK \r\n1 25\r\n2 23\r\n3 19\r\n.\r\n"),
    (b"LIST 2\r\n", b"+OK 2 23\r\n"),
    (b"LIST x\r\n", b"-ERR syntax error\r\n"),
    (b"LIST 0\r\n", b"-ERR messages are counted from 1\r\n"),
    (b"LIST 4\r\n", b"-ERR not that many messages\r\n"),
    (b"LIST 99999999999999999999999\r\n", b"-ERR not that many messages\r\n"),
    (b"UIDL\r\n", b"+OK \r\n1 100.A.h\r\n2 200.B.h\r\n3 300.C.h\r\n.\r\n"),
    (b"UIDL 1\r\n", b"+OK 1 100.A.h\r\n"),
    (b"RETR 1\r\n", b"+OK \r\nSubject: one\r\n\r\nfirst\r\n..dot\r\n\r\n.\r\n"),
    (b"RETR 3\r\n", b"+OK \r\nSubject: three\r\n\r\n\xe9\xff\r\n\r\n.\r\n"),
    (b"TOP 2 1\r\n", b"+OK \r\nSubject: two\r\n\r\nl1\r\n\r\n.\r\n"),
    (b"TOP 2 0\r\n", b"+OK \r\nSubject: two\r\n\r\n\r\n.\r\n"),
    (b"TOP 2\r\n", b"+OK \r\nSubject: two\r\n\r\n\r\n.\r\n"),
    (b"TOP\r\n", b"-ERR syntax error\r\n"),
    (b"LAST\r\n", b"+OK 0\r\n"),
    (b"DELE 2\r\n", b"+OK \r\n"),
    (b"DELE 2\r\n", b"-ERR already deleted\r\n"),
    (b"RETR 2\r\n", b"-ERR already deleted\r\n"),
    (b"LAST\r\n", b"+OK 2\r\n"),
    (b"STAT\r\n", b"+OK 2 44\r\n"),
    (b"LIST\r\n", b"+OK \r\n1 25\r\n3 19\r\n.\r\n"),
    (b"RSET\r\n", b"+OK \r\n"),
    (b"LAST\r\n", b"+OK 0\r\n"),
    (b"STAT\r\n", b"+OK 3 67\r\n"),
    (b"NOOP\r\n", b"+OK \r\n"),
    (b"CAPA\r\n", b"-ERR unimplemented\r\n"),
    (b"USER x\r\n", b"-ERR unimplemented\r\n"),
    (b"\r\n", b"-ERR unimplemented\r\n"),
    (b"X" * 5000 + b"\r\n", b"-ERR line too long\r\n"),
    (b"DELE 1\r\nDELE 3\r\n", b"+OK \r\n+OK \r\n"),
]


def test_transaction_dialogue(maildir):
    proto, tr, _ = pop3d(maildir)
    assert tr.value() == b"+OK \r\n"
    for send, expect in DIALOGUE:
        assert (send[:20], talk(proto, tr, send)) == (send[:20], expect)
    assert talk(proto, tr, b"QUIT\r\n") == b"+OK \r\n"
    assert tr.disconnecting
    assert os.listdir(os.path.join(maildir, "new")) == []
    assert os.listdir(os.path.join(maildir, "cur")) == ["200.B.h:2,"]


def test_pipelined_commands_answered_in_order(maildir):
    proto, tr, _ = pop3d(maildir)
    assert talk(proto, tr, b"STAT\r\nRETR 3\r\nDELE 1\r\nLAST\r\nUIDL 3\r\n") == (
        b"+OK 3 67\r\n+OK \r\nSubject: three\r\n\r\n\xe9\xff\r\n\r\n.\r\n+OK \r\n+OK 1\r\n"
        b"+OK 3 300.C.h\r\n")


def test_drop_without_quit_changes_nothing(maildir):
    before = {d: sorted(os.listdir(os.path.join(maildir, d))) for d in ("new", "cur")}
    proto, tr, _ = pop3d(maildir)
    talk(proto, tr, b"DELE 1\r\nDELE 2\r\nRETR 3\r\n")
    proto.connectionLost(None)
    assert {d: sorted(os.listdir(os.path.join(maildir, d))) for d in ("new", "cur")} == before


def test_vanished_message(maildir):
    proto, tr, _ = pop3d(maildir)
    os.unlink(os.path.join(maildir, "new/200.B.h"))
    assert talk(proto, tr, b"RETR 2\r\n") == b"-ERR unable to open that message\r\n"
    assert talk(proto, tr, b"TOP 2 1\r\n") == b"-ERR unable to open that message\r\n"
    assert talk(proto, tr, b"DELE 2\r\nQUIT\r\n") == (
        b"+OK \r\n-ERR unable to unlink all deleted messages\r\n+OK \r\n")
    assert sorted(os.listdir(os.path.join(maildir, "cur"))) == ["100.A.h:2,S", "300.C.h:2,"]


def test_no_maildir(tmp_path):
    proto, tr, _ = pop3d(str(tmp_path / "nothing"))
    assert tr.value() == b"-ERR this user has no $HOME/Maildir\r\n"
    assert tr.disconnecting


def test_idle_timeout_closes_silently(maildir):
    proto, tr, clock = pop3d(maildir)
    clock.advance(1199)
    talk(proto, tr, b"NOOP\r\n")
    clock.advance(1199)
    assert not tr.disconnecting
    tr.clear()
    clock.advance(1)
    assert tr.disconnecting and tr.value() == b"" and proto.exitStatus == 256


# -- qmail-popup -------------------------------------------------------------------------------

@implementer(ILogin)
class FakeLogin:
    """Records logins; answers from a table name -> (Result, maildir)."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def start(self, session, user, password, timestamp, apop):
        self.calls.append((user, password, timestamp, apop))
        return succeed(self.answers.get((user, password), (Result.FAILED, None)))


def popup(answers=None, tls=None):
    clock = Clock()
    clock.advance(NOW)
    login = FakeLogin(answers or {})
    proto = POP3Server(login, clock, b"test.example", 7, maybeDeferred, tls)
    proto.env = {"TCPREMOTEIP": b"127.0.0.1"}
    tr = StringTransport()
    proto.makeConnection(tr)
    return proto, tr, clock, login


AUTH = [
    (b"STAT\r\n", b"-ERR authorization first\r\n"),
    (b"PASS x\r\n", b"-ERR USER first\r\n"),
    (b"USER\r\n", b"-ERR syntax error\r\n"),
    (b"NOOP\r\n", b"+OK \r\n"),
    (b"CAPA\r\n", b"+OK \r\nTOP\r\nUIDL\r\nUSER\r\n.\r\n"),
    (b"STLS\r\n", b"-ERR unimplemented\r\n"),
    (b"APOP joe\r\n", b"-ERR syntax error\r\n"),
    (b"user joe\r\n", b"+OK \r\n"),
    (b"PASS\r\n", b"-ERR syntax error\r\n"),
    (b"PASS \r\n", b"-ERR syntax error\r\n"),
    (b"RETR 1\r\n", b"-ERR authorization first\r\n"),
    (b"USER " + b"n" * 4000 + b"\r\n", b"+OK \r\n"),
    (b"USER " + b"n" * 5000 + b"\r\n", b"-ERR line too long\r\n"),
]


def test_authorization_dialogue():
    proto, tr, _, login = popup()
    assert tr.value() == b"+OK <7.%d@test.example>\r\n" % NOW
    for send, expect in AUTH:
        assert (send[:20], talk(proto, tr, send)) == (send[:20], expect)
    assert login.calls == []
    assert talk(proto, tr, b"QUIT\r\n") == b"+OK \r\n" and tr.disconnecting


def test_login_then_transaction(maildir):
    proto, tr, _, login = popup({(b"joe", b"secret pw"): (Result.SERVE, maildir)})
    assert talk(proto, tr, b"USER joe\r\nPASS secret pw\r\nSTAT\r\n") == (
        b"+OK \r\n+OK \r\n+OK 3 67\r\n")
    assert login.calls == [(b"joe", b"secret pw", b"<7.%d@test.example>" % NOW, False)]
    assert talk(proto, tr, b"QUIT\r\n") == b"+OK \r\n" and tr.disconnecting


def test_apop_passes_digest_and_timestamp():
    proto, tr, clock, login = popup()
    talk(proto, tr, b"APOP joe 0123abcd\r\n")
    assert login.calls == [(b"joe", b"0123abcd", b"<7.%d@test.example>" % NOW, True)]


def test_failed_login_is_delayed_and_logged(logEvents):
    proto, tr, clock, _ = popup()
    assert talk(proto, tr, b"USER joe\r\nPASS wrong\r\nNOOP\r\n") == b"+OK \r\n"
    clock.advance(0.999)
    assert tr.value() == b"+OK \r\n" and not tr.disconnecting
    clock.advance(0.001)
    assert tr.value() == b"+OK \r\n-ERR authorization failed\r\n"
    assert tr.disconnecting
    assert "pop3: authorization failed for joe from 127.0.0.1" in logLines(logEvents)


def test_crashed_checker():
    proto, tr, clock, _ = popup({(b"joe", b"pw"): (Result.CRASHED, None)})
    assert talk(proto, tr, b"USER joe\r\nPASS pw\r\n") == (
        b"+OK \r\n-ERR aack, child crashed\r\n")
    assert tr.disconnecting


def test_relayed_child_done_closes():
    proto, tr, clock, _ = popup({(b"joe", b"pw"): (Result.DONE, None)})
    talk(proto, tr, b"USER joe\r\nPASS pw\r\n")
    assert tr.disconnecting and proto.exitStatus is None


class FakeTLSTransport(StringTransport):
    def __init__(self):
        super().__init__()
        self.tlsStarted = None

    def startTLS(self, options):
        self.tlsStarted = options


def test_stls_with_certificate():
    clock = Clock()
    proto = POP3Server(FakeLogin({}), clock, b"h", 1, maybeDeferred, lambda: "OPTIONS")
    tr = FakeTLSTransport()
    proto.makeConnection(tr)
    assert talk(proto, tr, b"CAPA\r\n") == b"+OK \r\nTOP\r\nUIDL\r\nUSER\r\nSTLS\r\n.\r\n"
    assert talk(proto, tr, b"USER joe\r\nSTLS\r\nPASS injected\r\n") == b"+OK \r\n+OK \r\n"
    assert tr.tlsStarted == "OPTIONS"
    assert talk(proto, tr, b"CAPA\r\n") == b"+OK \r\nTOP\r\nUIDL\r\nUSER\r\n.\r\n"
    assert talk(proto, tr, b"STLS\r\n") == b"-ERR unimplemented\r\n"
    assert talk(proto, tr, b"PASS x\r\n") == b"-ERR USER first\r\n"


def test_waiting_login_holds_later_commands():
    d: Deferred = Deferred()

    @implementer(ILogin)
    class Slow:
        def start(self, session, user, password, timestamp, apop):
            return d

    clock = Clock()
    proto = POP3Server(Slow(), clock, b"h", 1, maybeDeferred)
    tr = StringTransport()
    proto.makeConnection(tr)
    assert talk(proto, tr, b"USER a\r\nPASS b\r\nNOOP\r\n") == b"+OK \r\n"
    d.callback((Result.FAILED, None))
    clock.advance(1)
    assert tr.value().endswith(b"-ERR authorization failed\r\n")


def test_end_of_input_answers_complete_lines_then_ends(maildir):
    before = {d: sorted(os.listdir(os.path.join(maildir, d))) for d in ("new", "cur")}
    proto, tr, _ = pop3d(maildir)
    tr.clear()
    proto.dataReceived(b"DELE 1\r\nSTAT\r\nLAST")
    proto.readConnectionLost()
    assert tr.value() == b"+OK \r\n+OK 2 42\r\n" and tr.disconnecting
    assert {d: sorted(os.listdir(os.path.join(maildir, d))) for d in ("new", "cur")} == before
