"""
The session policy (qmtwist/policy.py): one table of cases, run through the policy itself, an SMTP
session and a QMTP session, so both listeners are held to the same relay rule
(docs/behaviour/smtp.md 7.1, 7.4, 7.5; docs/behaviour/qmtp.md 9.2).
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from qmtwist.control import Control
from qmtwist.policy import (
    QMTP, SMTP, Accepted, Refusal, SessionPolicy, envDatabytes, relayDecision)
from qmtwist.qmtp.netstring import encode, encodeList
from qmtwist.qmtp.server import QMTPServer
from tests.unit.smtp.helpers import FakeInjector, makeSession

NOW = 1700000000

C = Control(me=b"me.example", locals=frozenset({b"me.example"}),
            rcpthosts=(b"heaven.af.mil", b".sub.af.mil"), morercpthosts=(b"more.example",))
NO_RCPTHOSTS = Control(me=b"me.example", locals=frozenset({b"me.example", b"localhost"}),
                       rcpthosts=None, virtualdomains={b"virt.example": b"bob"})

NOT_ALLOWED = Refusal.NOT_IN_RCPTHOSTS
UNSTORABLE = Refusal.UNSTORABLE

# (id, control, env, recipient, what is queued or why it is refused)
RECIPIENTS = [
    ("listed", C, {}, b"a@heaven.af.mil", b"a@heaven.af.mil"),
    ("listed-case", C, {}, b"a@HEAVEN.Af.Mil", b"a@HEAVEN.Af.Mil"),
    ("wildcard", C, {}, b"a@x.sub.af.mil", b"a@x.sub.af.mil"),
    ("wildcard-not-itself", C, {}, b"a@sub.af.mil", NOT_ALLOWED),
    ("not-a-subdomain", C, {}, b"a@x.heaven.af.mil", NOT_ALLOWED),
    ("morercpthosts", C, {}, b"a@more.example", b"a@more.example"),
    ("elsewhere", C, {}, b"victim@example.com", NOT_ALLOWED),
    ("locals-not-rcpthosts", C, {}, b"a@me.example", NOT_ALLOWED),
    ("no-at", C, {}, b"postmaster", b"postmaster"),
    ("last-at-decides", C, {}, b"victim@example.com@heaven.af.mil",
     b"victim@example.com@heaven.af.mil"),
    ("last-at-relay", C, {}, b"a@heaven.af.mil@evil.example", NOT_ALLOWED),
    ("percent-is-local-part", C, {}, b"victim%example.com@heaven.af.mil",
     b"victim%example.com@heaven.af.mil"),
    ("relayclient-empty", C, {"RELAYCLIENT": b""}, b"victim@example.com", b"victim@example.com"),
    ("relayclient-appended", C, {"RELAYCLIENT": b"@fixme"}, b"joe@x.com", b"joe@x.com@fixme"),
    ("missing-rcpthosts-locals", NO_RCPTHOSTS, {}, b"a@localhost", b"a@localhost"),
    ("missing-rcpthosts-virtual", NO_RCPTHOSTS, {}, b"a@virt.example", b"a@virt.example"),
    ("missing-rcpthosts-not-open", NO_RCPTHOSTS, {}, b"a@example.com", NOT_ALLOWED),
    ("nul", C, {}, b"a\0@heaven.af.mil", UNSTORABLE),
    ("cr", C, {}, b"a\r@heaven.af.mil", UNSTORABLE),
    ("nul-even-relayclient", C, {"RELAYCLIENT": b""}, b"a\0@x.com", UNSTORABLE),
]

SENDERS = [
    ("plain", b"a@b.example", True),
    ("null", b"", True),
    ("nul", b"a\0b@x.example", False),
    ("cr", b"a\rb@x.example", False),  # (an LF would end the SMTP command line)
]


def ids(cases):
    return [c[0] for c in cases]


def smtpRecipient(control, env, rcpt):
    """What an SMTP session does with RCPT TO:<rcpt>: the queued address or the refusal."""
    proto, t, inj, _ = makeSession(control=control, env={"TCPREMOTEIP": b"127.0.0.1", **env})
    t.clear()
    proto.dataReceived(b"MAIL FROM:<s@x.example>\r\nRCPT TO:<" + rcpt + b">\r\n")
    reply = t.value().split(b"\r\n")[1]
    if reply == b"250 2.1.5 ok":
        proto.dataReceived(b"DATA\r\n.\r\n")
        [(_, queued)] = [w.committed for w in inj.committed]
        return queued[0]
    return {b"553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)":
            NOT_ALLOWED, b"555 5.5.4 syntax error (#5.5.4)": UNSTORABLE}[reply]


def qmtpSession(control, env):
    clock = Clock()
    clock.advance(NOW)
    inj = FakeInjector()
    proto = QMTPServer(inj, control, clock, {"TCPREMOTEIP": b"127.0.0.1", **env})
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, inj


def qmtpRecipient(control, env, rcpt):
    """What a QMTP session does with a package for rcpt: the queued address or the refusal."""
    proto, t, inj = qmtpSession(control, env)
    proto.dataReceived(encode(b"\nx\n") + encode(b"s@x.example") + encodeList([rcpt]))
    if t.value().startswith(b"%d:K" % len(b"Kok %d qp 100" % NOW)):
        [(_, queued)] = [w.committed for w in inj.committed]
        return queued[0]
    assert inj.committed == []
    return {encode(b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"): NOT_ALLOWED,
            encode(b"Dsorry, I can't handle that recipient (#5.1.3)"): UNSTORABLE}[t.value()]


@pytest.mark.parametrize("case, control, env, rcpt, expected", RECIPIENTS, ids=ids(RECIPIENTS))
@pytest.mark.parametrize("dialect", [SMTP, QMTP], ids=["smtp", "qmtp"])
def test_recipient_policy(case, control, env, rcpt, expected, dialect):
    verdict = SessionPolicy.fromEnv(control, env, dialect).recipient(rcpt)
    assert verdict == (expected if isinstance(expected, Refusal) else Accepted(expected))


@pytest.mark.parametrize("case, control, env, rcpt, expected", RECIPIENTS, ids=ids(RECIPIENTS))
def test_recipient_smtp(case, control, env, rcpt, expected):
    assert smtpRecipient(control, env, rcpt) == expected


@pytest.mark.parametrize("case, control, env, rcpt, expected", RECIPIENTS, ids=ids(RECIPIENTS))
def test_recipient_qmtp(case, control, env, rcpt, expected):
    assert qmtpRecipient(control, env, rcpt) == expected


@pytest.mark.parametrize("case, control, env, rcpt, expected", RECIPIENTS, ids=ids(RECIPIENTS))
def test_relayDecision(case, control, env, rcpt, expected):
    if expected is UNSTORABLE:
        return  # the relay rule alone does not judge storability
    assert relayDecision(control, env, rcpt) == (None if expected is NOT_ALLOWED else expected)


@pytest.mark.parametrize("case, sender, ok", SENDERS, ids=ids(SENDERS))
def test_sender_both_protocols(case, sender, ok):
    for dialect in (SMTP, QMTP):
        verdict = SessionPolicy.fromEnv(C, {}, dialect).sender(sender)
        assert verdict == (Accepted(sender) if ok else Refusal.UNSTORABLE)
    proto, t, inj, _ = makeSession(control=C)
    t.clear()
    proto.dataReceived(b"MAIL FROM:<" + sender + b">\r\n")
    assert t.value() == (b"250 2.1.0 ok\r\n" if ok else b"555 5.5.4 syntax error (#5.5.4)\r\n")
    proto, t, inj = qmtpSession(C, {})
    proto.dataReceived(encode(b"\nx\n") + encode(sender) + encodeList([b"a@heaven.af.mil"]))
    assert (b"Kok" in t.value()) is ok
    if not ok:
        assert t.value() == encode(b"Dunacceptable sender (#5.1.7)")


def test_address_limits_differ_by_protocol():
    """SMTP: 900 bytes of parsed address; QMTP: 1000 bytes with RELAYCLIENT."""
    relay = {"RELAYCLIENT": b"@0123456789"}
    smtp = SessionPolicy.fromEnv(C, relay, SMTP)
    qmtp = SessionPolicy.fromEnv(C, relay, QMTP)
    assert smtp.recipient(b"a" * 899) == Accepted(b"a" * 899 + b"@0123456789")
    assert smtp.recipient(b"a" * 900) is Refusal.UNSTORABLE
    assert qmtp.recipient(b"a" * 988) == Accepted(b"a" * 988 + b"@0123456789")
    assert qmtp.recipient(b"a" * 989) is Refusal.UNSTORABLE
    assert qmtp.sender(b"s" * 999) == Accepted(b"s" * 999)
    assert qmtp.sender(b"s" * 1000) is Refusal.UNSTORABLE


def test_badmailfrom_is_smtp_only_and_refuses_at_rcpt():
    c = Control(me=b"me.example", rcpthosts=(b"me.example",), badmailfrom=(b"@spam.example",))
    smtp = SessionPolicy.fromEnv(c, {}, SMTP)
    assert smtp.sender(b"x@SPAM.example") == Accepted(b"x@SPAM.example", barred=True)
    assert smtp.recipient(b"a@me.example", barred=True) is Refusal.BAD_MAIL_FROM
    assert smtp.recipient(b"a\0@me.example", barred=True) is Refusal.UNSTORABLE
    assert SessionPolicy.fromEnv(c, {}, QMTP).sender(b"x@spam.example") == Accepted(
        b"x@spam.example")


def test_maxrcpt_room():
    c = Control(me=b"me.example", rcpthosts=(b"me.example",), maxrcpt=2)
    p = SessionPolicy.fromEnv(c, {})
    assert p.roomFor(1) and not p.roomFor(2)
    assert p.recipient(b"a@me.example", held=2) is Refusal.TOO_MANY
    assert p.recipient(b"a@elsewhere.example", held=2) is Refusal.NOT_IN_RCPTHOSTS
    assert SessionPolicy.fromEnv(Control(maxrcpt=0), {}).roomFor(10**9)


@pytest.mark.parametrize("value, control, limit", [
    (None, 100, 100), (b"50", 100, 50), (b"100k", 0, 100), (b" 7 ", 100, 7),
    (b"0", 100, 0), (b"abc", 100, 0), (b"", 100, 0),
])
def test_databytes_from_env(value, control, limit):
    assert envDatabytes(value, control) == limit


def test_non_numeric_databytes_means_no_limit_in_both_protocols():
    """qmail's reading: DATABYTES=abc is 0, no limit, even with control/databytes 100."""
    c = Control(me=b"me.example", smtpgreeting=b"me.example", rcpthosts=(b"me.example",),
                databytes=100)
    env = {"DATABYTES": b"abc"}
    proto, t, inj, _ = makeSession(control=c, env={"TCPREMOTEIP": b"127.0.0.1", **env})
    t.clear()
    proto.dataReceived(b"EHLO x\r\nMAIL FROM:<a@b> SIZE=5000\r\nRCPT TO:<u@me.example>\r\nDATA\r\n" +
                       b"y" * 500 + b"\r\n.\r\n")
    assert t.value() == (b"250-me.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 0\r\n"
                         b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
                         b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"
                         b"250 2.0.0 ok 1700000000 qp 100\r\n")
    proto, t, inj = qmtpSession(c, env)
    proto.dataReceived(encode(b"\n" + b"y" * 500) + encode(b"") + encodeList([b"u@me.example"]))
    assert b"Kok" in t.value() and len(inj.committed) == 1
