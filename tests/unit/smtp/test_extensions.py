"""SMTPUTF8, SIZE, ENHANCEDSTATUSCODES and the RCPT check on a StringTransport
(qmtwist/smtp/extensions.py, replies.py, rcptcheck.py; docs/behaviour/smtp-extensions.md 20)."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, succeed

from qmtwist.errors import PermanentFailure, TemporaryFailure
from qmtwist.smtp import replies as R
from qmtwist.smtp.extensions import MailParameters, mailParameters
from qmtwist.smtp.state import State
from tests.unit.smtp.helpers import makeControl, makeSession

UTF8 = "tést@test.example".encode()
NEED = b"553 5.6.7 sorry, a non-ASCII address needs SMTPUTF8 (#5.6.7)\r\n"


@pytest.mark.parametrize("arg, params", [
    (b"FROM:<a@b>", MailParameters()),
    (b"FROM:<a@b> SIZE=10 smtputf8 BODY=8BITMIME", MailParameters(10, True)),
    (b"FROM:<a@b> SMTPUTF8=x SIZE=x", MailParameters()),
    (b"FROM:a@b SMTPUTF8", MailParameters()),  # no angle brackets: no parameters (qmail)
])
def test_mailParameters(arg, params):
    assert mailParameters(arg) == params


@pytest.mark.parametrize("text, permanent, code", [
    ("qq write error or disk full (#4.3.0)", False, b"4.3.0"),
    ("envelope address too long for qq (#5.1.3)", True, b"5.1.3"),
    ("mail server permanently rejected message (#5.3.0)", False, b"4.3.0"),  # class follows reply
    ("no code here", True, b"5.3.0"),
])
def test_enhancedCode(text, permanent, code):
    assert R.enhancedCode(text.encode(), permanent) == code
    err = (PermanentFailure if permanent else TemporaryFailure)(text)
    assert R.queueErrorReply(err) == (b"554 " if permanent else b"451 ") + code + b" " + text.encode()


def test_every_reply_constant_carries_its_code():
    """2xx/4xx/5xx: X.Y.Z after the code, the class agreeing, the qmail (#X.Y.Z) the same."""
    import re
    for name in dir(R):
        value = getattr(R, name)
        if not (name.startswith("R_") and isinstance(value, bytes)) or value.startswith(b"3"):
            continue
        m = re.match(rb"([245])\d\d ([245])\.(\d{1,3}\.\d{1,3}) ", value)
        assert m and m.group(1) == m.group(2), name
        hashed = re.search(rb"\(#(\d\.\d+\.\d+)\)$", value)
        assert hashed is None or hashed.group(1) == m.group(2) + b"." + m.group(3), name


def test_utf8_sender_needs_smtputf8():
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(b"MAIL FROM:<" + UTF8 + b">\r\nMAIL FROM:<" + UTF8 + b"> SMTPUTF8\r\n")
    assert t.value() == NEED + b"250 2.1.0 ok\r\n"
    assert proto.sender == UTF8 and proto.utf8


def test_utf8_recipient_needs_smtputf8_in_its_transaction():
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<" + UTF8 + b">\r\n"
                       b"MAIL FROM:<a@b> SMTPUTF8\r\nRCPT TO:<" + UTF8 + b">\r\n"
                       b"RSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<" + UTF8 + b">\r\n")
    assert t.value() == (b"250 2.1.0 ok\r\n" + NEED + b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"
                         b"250 2.0.0 flushed\r\n250 2.1.0 ok\r\n" + NEED)


def test_invalid_utf8_is_refused_even_with_smtputf8():
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(b"MAIL FROM:<t\xe9st@b> SMTPUTF8\r\nMAIL FROM:<a@b> SMTPUTF8\r\n"
                       b"RCPT TO:<\xc3(@test.example>\r\n")
    bad = b"553 5.6.7 sorry, that address is not valid UTF-8 (#5.6.7)\r\n"
    assert t.value() == bad + b"250 2.1.0 ok\r\n" + bad


def test_smtputf8_message_is_stored_byte_for_byte_with_utf8smtp():
    proto, t, inj, _ = makeSession()
    text = "Subject: ünïcödé\r\nFrom: tést@test.example\r\n\r\nçà et là ☃\r\n".encode()
    proto.dataReceived(b"MAIL FROM:<" + UTF8 + b"> SMTPUTF8\r\nRCPT TO:<" + UTF8 + b">\r\n"
                       b"DATA\r\n" + text + b".\r\n")
    w = inj.writers[0]
    received, rest = w.data.split(b"\n", 2)[1:]
    assert received.endswith(b" with UTF8SMTP; 14 Nov 2023 22:13:20 -0000")
    assert rest == text.replace(b"\r\n", b"\n")
    assert w.committed == (UTF8, [UTF8])


def test_size_zero_when_there_is_no_limit():
    proto, t, inj, _ = makeSession(control=makeControl(databytes=0))
    t.clear()
    proto.dataReceived(b"EHLO x\r\nMAIL FROM:<a@b> SIZE=999999999\r\n")
    assert b"250-SIZE 0\r\n" in t.value() and t.value().endswith(b"250 2.1.0 ok\r\n")


class HeldCheck:
    """A recipient checker whose answers the test gives."""

    def __init__(self) -> None:
        self.asked: list[bytes] = []
        self.pending: list[Deferred] = []

    def check(self, address: bytes) -> Deferred:
        self.asked.append(address)
        d: Deferred = Deferred()
        self.pending.append(d)
        return d


def test_rcpt_check_pauses_the_session_and_keeps_the_order():
    proto, t, inj, clock = makeSession()
    proto.mailboxes = check = HeldCheck()
    t.clear()
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<nobody@test.example>\r\nNOOP\r\n"
                       b"RCPT TO:<bob@test.example>\r\nDATA\r\n")
    assert t.value() == b"250 2.1.0 ok\r\n"
    assert proto.state is State.CHECK and t.producerState == "paused"
    clock.advance(3600)  # the idle timer does not fire while we wait for our own answer
    assert not t.disconnecting
    check.pending[0].callback(False)
    assert t.value() == (b"250 2.1.0 ok\r\n"
                         b"550 5.1.1 sorry, no mailbox here by that name (#5.1.1)\r\n"
                         b"250 2.0.0 ok\r\n")
    check.pending[1].callback(True)
    assert t.value().endswith(b"250 2.1.5 ok\r\n354 go ahead\r\n")
    assert check.asked == [b"nobody@test.example", b"bob@test.example"]
    assert proto.recipients == [b"bob@test.example"] and t.producerState == "producing"


def test_rcpt_check_answered_at_once():
    proto, t, inj, _ = makeSession()

    class Known:
        def check(self, address: bytes) -> Deferred:
            return succeed(address.startswith(b"bob"))

    proto.mailboxes = Known()
    t.clear()
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@test.example>\r\nRCPT TO:<bob@test.example>\r\n")
    assert t.value() == (b"250 2.1.0 ok\r\n550 5.1.1 sorry, no mailbox here by that name (#5.1.1)"
                         b"\r\n250 2.1.5 ok\r\n")


def test_rcpt_check_skipped_for_relay_clients_and_refused_domains():
    proto, t, inj, _ = makeSession(env={"TCPREMOTEIP": b"127.0.0.1", "RELAYCLIENT": b""})
    proto.mailboxes = check = HeldCheck()
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<nobody@test.example>\r\n")
    proto, t, inj, _ = makeSession()
    proto.mailboxes = check
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@elsewhere.example>\r\n")
    assert check.asked == []


def test_connection_lost_during_the_check():
    proto, t, inj, _ = makeSession()
    proto.mailboxes = check = HeldCheck()
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@test.example>\r\n")
    t.clear()
    proto.connectionLost(None)
    check.pending[0].callback(True)
    assert t.value() == b"" and proto.recipients == []
