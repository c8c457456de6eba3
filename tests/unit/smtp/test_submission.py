"""The submission session (qmtwist/smtp/submission.py, docs/behaviour/submission.md 16) on a
StringTransport and a Clock: AUTH replies and delays, MAIL rules, relaying, Received, log lines."""

from __future__ import annotations

import base64
import io

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import ISSLTransport
from zope.interface import directlyProvides

from qmtwist.ratelimit import FailureLimiter
from qmtwist.smtp.auth import makePortal
from qmtwist.smtp.senders import SenderCheck
from qmtwist.smtp.submission import AUTH_DELAY, Authority, SubmissionServer
from qmtwist.users.command import userCommand
from tests.unit.smtp.helpers import (
    ENV, FakeCertificate, FakeInjector, TLSStringTransport, makeControl)
from twisted.internet.task import Clock


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def addUser(home, name: str, password: bytes) -> None:
    assert userCommand(home, ["add", name, "--password-stdin"], stdin=io.BytesIO(password + b"\n"),
                       stdout=io.StringIO(), stderr=io.StringIO()) == 0


def session(home, tls: bool = True, limiter: FailureLimiter | None = None, clock=None):
    clock = clock or Clock()
    if not clock.seconds():
        clock.advance(1700000000)
    authority = Authority(makePortal(home, maybeDeferred), SenderCheck(home),
                          limiter if limiter is not None else FailureLimiter(clock), maybeDeferred)
    injector = FakeInjector()
    control = makeControl(rcpthosts=(b"test.example",))
    proto = SubmissionServer(injector, control, clock, FakeCertificate(), authority)
    proto.env = dict(ENV)
    transport = TLSStringTransport()
    if tls:
        directlyProvides(transport, ISSLTransport)
    proto.makeConnection(transport)
    transport.clear()
    return proto, transport, injector, clock


def said(transport) -> bytes:
    out = transport.value()
    transport.clear()
    return out


def logged(events) -> list[str]:
    from twisted.logger import formatEvent
    return [formatEvent(e) for e in events if e.get("log_namespace", "").startswith("qmtwist.s")]


def test_ehlo_offers_auth_only_inside_tls(home):
    proto, t, _, _ = session(home, tls=False)
    proto.dataReceived(b"EHLO c\r\n")
    out = said(t)
    assert b"STARTTLS" in out and b"AUTH" not in out
    proto.dataReceived(b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n")
    assert said(t) == b"538 5.7.11 encryption required for requested authentication mechanism" \
                      b" (#5.7.11)\r\n"
    proto, t, _, _ = session(home)
    proto.dataReceived(b"EHLO c\r\n")
    assert said(t).endswith(b"250 AUTH PLAIN LOGIN\r\n")


def test_plain_success_relays_and_names_the_user(home, logEvents):
    addUser(home, "alice", b"secret")
    proto, t, inj, _ = session(home)
    proto.dataReceived(b"EHLO c\r\nMAIL FROM:<alice@test.example>\r\n")
    assert said(t).endswith(b"530 5.7.0 authentication required (#5.7.0)\r\n")
    proto.dataReceived(b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n")
    assert said(t) == b"235 2.7.0 authentication successful (#2.7.0)\r\n"
    proto.dataReceived(b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n")
    assert said(t) == b"503 5.5.1 you are already authenticated (#5.5.1)\r\n"
    proto.dataReceived(b"MAIL FROM:<alice-lists@test.example>\r\nRCPT TO:<x@elsewhere.example>\r\n"
                       b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\n")
    assert said(t) == b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n250 2.0.0 ok 1700000000 qp 100\r\n"
    [w] = inj.writers
    assert w.committed == (b"alice-lists@test.example", [b"x@elsewhere.example"])
    assert w.data.split(b"\n")[:3] == [
        b"Received: from unknown (HELO c) (127.0.0.1)", b"  (authenticated as alice)",
        b"  by test.example with ESMTPSA; 14 Nov 2023 22:13:20 -0000"]
    lines = logged(logEvents)
    assert "submission: refused 127.0.0.1 530 5.7.0 MAIL FROM:<alice@test.example>" in lines
    assert "submission: auth ok alice from 127.0.0.1 (PLAIN)" in lines


def test_login_mechanism(home, logEvents):
    addUser(home, "alice", b"secret")
    proto, t, _, _ = session(home)
    proto.dataReceived(b"EHLO c\r\nAUTH LOGIN\r\n")
    assert said(t).endswith(b"334 VXNlcm5hbWU6\r\n")
    proto.dataReceived(b64(b"alice") + b"\r\n")
    assert said(t) == b"334 UGFzc3dvcmQ6\r\n"
    proto.dataReceived(b64(b"secret") + b"\r\n")
    assert said(t) == b"235 2.7.0 authentication successful (#2.7.0)\r\n"
    assert proto.policy.user == b"alice"
    # the SASL lines never reach the log
    assert not [line for line in logged(logEvents) if b64(b"secret").decode() in line]


def test_failure_answered_after_the_delay_and_the_third_ends_the_session(home, logEvents):
    addUser(home, "alice", b"secret")
    proto, t, _, clock = session(home)
    proto.dataReceived(b"EHLO c\r\n")
    said(t)
    for n in (1, 2):
        # pipelined NOOP waits behind the delayed answer
        proto.dataReceived(b"AUTH PLAIN " + b64(b"\0alice\0wrong") + b"\r\nNOOP\r\n")
        assert said(t) == b""
        clock.advance(AUTH_DELAY - 0.01)
        assert said(t) == b""
        clock.advance(0.01)
        assert said(t) == b"535 5.7.8 authentication failed (#5.7.8)\r\n250 2.0.0 ok\r\n"
    proto.dataReceived(b"AUTH LOGIN " + b64(b"alice") + b"\r\n")
    assert said(t) == b"334 UGFzc3dvcmQ6\r\n"
    proto.dataReceived(b64(b"nope") + b"\r\n")
    clock.advance(AUTH_DELAY)
    assert said(t) == b"421 4.7.0 too many failed logins, closing connection (#4.7.0)\r\n"
    assert t.disconnecting
    lines = logged(logEvents)
    assert lines.count("submission: auth failed alice from 127.0.0.1 (PLAIN): "
                       "no such user or bad password") == 2
    assert "submission: auth failed alice from 127.0.0.1 (LOGIN): no such user or bad password" \
        in lines
    assert "submission: refused 127.0.0.1 421 4.7.0 AUTH LOGIN" in lines


def test_authzid_borrowing_refused_even_with_the_right_password(home, logEvents):
    addUser(home, "alice", b"secret")
    addUser(home, "bob", b"bobpw")
    proto, t, _, clock = session(home)
    proto.dataReceived(b"AUTH PLAIN " + b64(b"alice\0bob\0bobpw") + b"\r\n")
    clock.advance(AUTH_DELAY)
    assert said(t) == b"535 5.7.8 authentication failed (#5.7.8)\r\n"
    assert proto.policy.user is None
    assert "submission: auth failed bob from 127.0.0.1 (PLAIN): authorization identity alice " \
           "refused" in logged(logEvents)
    proto.dataReceived(b"AUTH PLAIN " + b64(b"bob\0bob\0bobpw") + b"\r\n")
    assert said(t) == b"235 2.7.0 authentication successful (#2.7.0)\r\n"


def test_limiter_refuses_an_address_across_sessions(home):
    clock = Clock()
    clock.advance(1700000000)
    limiter = FailureLimiter(clock, failures=3)
    proto, t, _, _ = session(home, limiter=limiter, clock=clock)
    for _ in range(3):
        proto.dataReceived(b"AUTH PLAIN " + b64(b"\0x\0y") + b"\r\n")
        clock.advance(AUTH_DELAY)
    proto2, t2, _, _ = session(home, limiter=limiter, clock=clock)
    proto2.dataReceived(b"AUTH PLAIN " + b64(b"\0x\0y") + b"\r\n")
    assert said(t2) == b"454 4.7.0 too many failed logins from your address, try later" \
                       b" (#4.7.0)\r\n"


def test_cancel_syntax_and_mechanism_replies(home):
    proto, t, _, _ = session(home)
    proto.dataReceived(b"AUTH LOGIN\r\n*\r\nAUTH PLAIN !!!\r\nAUTH CRAM-MD5\r\n")
    assert said(t) == (b"334 VXNlcm5hbWU6\r\n501 5.0.0 authentication cancelled (#5.0.0)\r\n"
                       b"501 5.5.2 cannot decode the authentication response (#5.5.2)\r\n"
                       b"504 5.5.4 unrecognized authentication type (#5.5.4)\r\n")


def test_sender_must_be_the_users(home):
    addUser(home, "alice", b"secret")
    addUser(home, "bob", b"bobpw")
    with open(home.users + "/senders", "wb") as f:
        f.write(b"alice:alice@elsewhere.example\nalice:@alice.example\nbob:@bob.example\n")
    proto, t, _, _ = session(home)
    proto.dataReceived(b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n")
    said(t)
    refused = b"553 5.7.1 sorry, that address is not yours to send from (#5.7.1)\r\n"
    for sender, reply in [(b"bob@test.example", refused), (b"bob-x@test.example", refused),
                          (b"postmaster@test.example", refused), (b"x@bob.example", refused),
                          (b"alice@far.example", refused),
                          (b"ALICE@test.example", b"250 2.1.0 ok\r\n"),
                          (b"alice-ext@localhost", b"250 2.1.0 ok\r\n"),
                          (b"alice@elsewhere.example", b"250 2.1.0 ok\r\n"),
                          (b"anyone@Alice.Example", b"250 2.1.0 ok\r\n"), (b"", b"250 2.1.0 ok\r\n")]:
        proto.dataReceived(b"MAIL FROM:<" + sender + b">\r\n")
        assert said(t) == reply, sender


def test_no_relay_without_auth(home):
    proto, t, inj, _ = session(home)
    proto.dataReceived(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n")
    assert said(t) == (b"530 5.7.0 authentication required (#5.7.0)\r\n"
                       b"503 5.5.1 MAIL first (#5.5.1)\r\n503 5.5.1 MAIL first (#5.5.1)\r\n")
    assert inj.writers == []
