"""qmail-smtpd dialogues as data (docs/behaviour/smtp.md 7.2): lines sent, exact replies expected."""

from __future__ import annotations

import pytest

from tests.unit.smtp.helpers import makeControl, makeSession

G = b"220 test.example ESMTP\r\n"
ENV_RELAY = {"TCPREMOTEIP": b"127.0.0.1", "TCPLOCALIP": b"127.0.0.1", "RELAYCLIENT": b""}
ENV_FIXME = {"TCPREMOTEIP": b"127.0.0.1", "RELAYCLIENT": b"@fixme"}
NOGW = b"553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\r\n"

# (id, control overrides, env or None, client bytes, server bytes after the greeting)
DIALOGUES = [
    ("helo", {}, None, b"HELO client.example\r\n", b"250 test.example\r\n"),
    ("helo-lower", {}, None, b"helo x\r\n", b"250 test.example\r\n"),
    ("ehlo", {}, None, b"EHLO x\r\n",
     b"250-test.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 0\r\n"
     b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"),
    ("ehlo-size", {"databytes": 1000}, None, b"EHLO x\r\n",
     b"250-test.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 1000\r\n"
     b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"),
    ("ehlo-env-databytes", {"databytes": 1000}, {"DATABYTES": b"50"}, b"EHLO x\r\n",
     b"250-test.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 50\r\n"
     b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"),
    # an address that cannot be stored in an envelope is refused at once, not after DATA
    ("mail-nul", {}, None, b"MAIL FROM:<a\x00b@x.example>\r\n", b"555 5.5.4 syntax error (#5.5.4)\r\n"),
    ("mail-cr", {}, None, b"MAIL FROM:<a\rb@x.example>\r\n", b"555 5.5.4 syntax error (#5.5.4)\r\n"),
    ("rcpt-nul", {}, None, b"MAIL FROM:<a@x.example>\r\nRCPT TO:<v@example.com\x00@test.example>\r\n",
     b"250 2.1.0 ok\r\n555 5.5.4 syntax error (#5.5.4)\r\n"),
    # DATABYTES is read like qmail's scan_ulong: "100k" is 100, not "no limit"
    ("ehlo-env-databytes-suffix", {"databytes": 0}, {"DATABYTES": b"100k"}, b"EHLO x\r\n",
     b"250-test.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 100\r\n"
     b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"),
    ("greeting-env", {}, {"SMTPGREETING": b"hi there"}, b"QUIT\r\n", b"221 2.0.0 hi there\r\n"),
    ("noop", {}, None, b"NOOP\r\n", b"250 2.0.0 ok\r\n"),
    ("noop-arg", {}, None, b"noop whatever\r\n", b"250 2.0.0 ok\r\n"),
    ("rset", {}, None, b"RSET\r\n", b"250 2.0.0 flushed\r\n"),
    ("vrfy", {}, None, b"VRFY bob\r\n", b"252 2.0.0 send some mail, i'll try my best\r\n"),
    ("help", {}, None, b"HELP\r\n", b"214 2.0.0 qmtwist home page: https://cr.yp.to/qmail.html\r\n"),
    ("quit", {}, None, b"QUIT\r\n", b"221 2.0.0 test.example\r\n"),
    ("empty-line", {}, None, b"\r\n", b"502 5.5.1 unimplemented (#5.5.1)\r\n"),
    ("expn", {}, None, b"EXPN list\r\n", b"502 5.5.1 unimplemented (#5.5.1)\r\n"),
    ("auth", {}, None, b"AUTH PLAIN xx\r\n", b"502 5.5.1 unimplemented (#5.5.1)\r\n"),
    ("turn", {}, None, b"TURN\r\n", b"502 5.5.1 unimplemented (#5.5.1)\r\n"),
    ("starttls-not-offered", {}, None, b"STARTTLS\r\n", b"502 5.5.1 unimplemented (#5.5.1)\r\n"),
    ("weird-verb", {}, None, b"MA_IL x\r\n", b"502 5.5.1 unimplemented (#5.5.1)\r\n"),
    ("bare-lf-command", {}, None, b"NOOP\nNOOP\n", b"250 2.0.0 ok\r\n250 2.0.0 ok\r\n"),
    ("mail", {}, None, b"MAIL FROM:<a@b.example>\r\n", b"250 2.1.0 ok\r\n"),
    ("mail-null", {}, None, b"MAIL FROM:<>\r\n", b"250 2.1.0 ok\r\n"),
    ("mail-noangle", {}, None, b"MAIL FROM: a@b\r\n", b"250 2.1.0 ok\r\n"),
    ("mail-long", {}, None, b"MAIL FROM:<" + b"a" * 900 + b">\r\n",
     b"555 5.5.4 syntax error (#5.5.4)\r\n"),
    ("mail-899", {}, None, b"MAIL FROM:<" + b"a" * 899 + b">\r\n", b"250 2.1.0 ok\r\n"),
    ("mail-size-over", {"databytes": 100}, None, b"MAIL FROM:<a@b> SIZE=101\r\n",
     b"552 5.3.4 sorry, that message size exceeds my databytes limit (#5.3.4)\r\n"),
    ("mail-size-ok", {"databytes": 100}, None, b"MAIL FROM:<a@b> SIZE=100\r\n", b"250 2.1.0 ok\r\n"),
    ("rcpt-first", {}, None, b"RCPT TO:<bob@test.example>\r\n", b"503 5.5.1 MAIL first (#5.5.1)\r\n"),
    ("rcpt-ok", {}, None, b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@test.example>\r\n",
     b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"),
    ("rcpt-case", {}, None, b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@TEST.Example>\r\n",
     b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"),
    ("rcpt-noat", {}, None, b"MAIL FROM:<a@b>\r\nRCPT TO:<bob>\r\n", b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"),
    ("rcpt-suffix", {}, None, b"MAIL FROM:<a@b>\r\nRCPT TO:<x@a.sub.example>\r\n",
     b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"),
    ("rcpt-suffix-bare", {}, None, b"MAIL FROM:<a@b>\r\nRCPT TO:<x@sub.example>\r\n",
     b"250 2.1.0 ok\r\n" + NOGW),
    ("rcpt-relay-refused", {}, None, b"MAIL FROM:<a@b>\r\nRCPT TO:<victim@example.com>\r\n",
     b"250 2.1.0 ok\r\n" + NOGW),
    ("rcpt-route", {}, None, b"MAIL FROM:<a@b>\r\nRCPT TO:<@test.example:victim@example.com>\r\n",
     b"250 2.1.0 ok\r\n" + NOGW),
    ("rcpt-quoted", {}, None,
     b'MAIL FROM:<a@b>\r\nRCPT TO:<"victim@example.com"@example.com>\r\n', b"250 2.1.0 ok\r\n" + NOGW),
    ("rcpt-percent", {}, None, b"MAIL FROM:<a@b>\r\nRCPT TO:<victim%example.com@test.example>\r\n",
     b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"),
    ("rcpt-double-at", {}, None, b"MAIL FROM:<a@b>\r\nRCPT TO:<victim@example.com@test.example>\r\n",
     b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"),
    ("rcpt-relayclient", {}, ENV_RELAY, b"MAIL FROM:<a@b>\r\nRCPT TO:<victim@example.com>\r\n",
     b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"),
    ("rcpt-long", {}, None, b"MAIL FROM:<a@b>\r\nRCPT TO:<" + b"b" * 900 + b">\r\n",
     b"250 2.1.0 ok\r\n555 5.5.4 syntax error (#5.5.4)\r\n"),
    ("badmailfrom", {"badmailfrom": (b"bad@evil.example",)}, None,
     b"MAIL FROM:<BAD@evil.example>\r\nRCPT TO:<bob@test.example>\r\n",
     b"250 2.1.0 ok\r\n553 5.7.1 sorry, your envelope sender is in my badmailfrom list (#5.7.1)\r\n"),
    ("badmailfrom-host", {"badmailfrom": (b"@evil.example",)}, ENV_RELAY,
     b"MAIL FROM:<x@Evil.Example>\r\nRCPT TO:<bob@test.example>\r\n",
     b"250 2.1.0 ok\r\n553 5.7.1 sorry, your envelope sender is in my badmailfrom list (#5.7.1)\r\n"),
    ("badmailfrom-reset", {"badmailfrom": (b"@evil.example",)}, None,
     b"MAIL FROM:<x@evil.example>\r\nMAIL FROM:<x@good.example>\r\nRCPT TO:<bob@test.example>\r\n",
     b"250 2.1.0 ok\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n"),
    ("data-no-mail", {}, None, b"DATA\r\n", b"503 5.5.1 MAIL first (#5.5.1)\r\n"),
    ("data-no-rcpt", {}, None, b"MAIL FROM:<a@b>\r\nDATA\r\n",
     b"250 2.1.0 ok\r\n503 5.5.1 RCPT first (#5.5.1)\r\n"),
    ("data-refused-rcpt", {}, None,
     b"MAIL FROM:<a@b>\r\nRCPT TO:<v@example.com>\r\nDATA\r\n",
     b"250 2.1.0 ok\r\n" + NOGW + b"503 5.5.1 RCPT first (#5.5.1)\r\n"),
    ("rset-forgets", {}, None, b"MAIL FROM:<a@b>\r\nRSET\r\nRCPT TO:<bob@test.example>\r\n",
     b"250 2.1.0 ok\r\n250 2.0.0 flushed\r\n503 5.5.1 MAIL first (#5.5.1)\r\n"),
    ("helo-forgets", {}, None, b"MAIL FROM:<a@b>\r\nHELO x\r\nRCPT TO:<bob@test.example>\r\n",
     b"250 2.1.0 ok\r\n250 test.example\r\n503 5.5.1 MAIL first (#5.5.1)\r\n"),
    ("long-line", {}, None, b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n",
     b"500 5.5.2 line too long (#5.5.2)\r\n250 2.0.0 ok\r\n"),
    ("line-4096-ok", {}, None, b"NOOP " + b"x" * 4091 + b"\r\n", b"250 2.0.0 ok\r\n"),
    ("line-4097", {}, None, b"NOOP " + b"x" * 4092 + b"\r\n", b"500 5.5.2 line too long (#5.5.2)\r\n"),
    ("data-flow", {}, None,
     b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@test.example>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n",
     b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n250 2.0.0 ok 1700000000 qp 100\r\n"
     b"221 2.0.0 test.example\r\n"),
    ("data-toobig", {"databytes": 5}, None,
     b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@test.example>\r\nDATA\r\n123456\r\n.\r\nNOOP\r\n",
     b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"
     b"552 5.3.4 sorry, that message size exceeds my databytes limit (#5.3.4)\r\n250 2.0.0 ok\r\n"),
    ("data-bare-lf", {}, None,
     b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@test.example>\r\nDATA\r\nhi\n.\nNOOP\r\n",
     b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n451 4.5.2 See http://pobox.com/~djb/docs/smtplf.html.\r\n"),
    ("data-lf-dot-lf", {}, None,
     b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@test.example>\r\nDATA\r\nhi\r\n\n.\n\r\n.\r\n",
     b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n451 4.5.2 See http://pobox.com/~djb/docs/smtplf.html.\r\n"),
]


@pytest.mark.parametrize(
    "control,env,sent,expected",
    [pytest.param(c, e, s, x, id=i) for i, c, e, s, x in DIALOGUES],
)
def test_dialogue(control, env, sent, expected):
    e = dict(makeSession()[0].env)
    if env is not None:
        e.update(env)
    proto, transport, injector, clock = makeSession(makeControl(**control), e)
    greeting = b"220 " + e.get("SMTPGREETING", b"test.example") + b" ESMTP\r\n"
    assert transport.value() == greeting
    transport.clear()
    proto.dataReceived(sent)
    assert transport.value() == expected


def test_dialogue_byte_at_a_time():
    """The same replies whatever the packet boundaries."""
    proto, transport, injector, _ = makeSession()
    transport.clear()
    for b in b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@test.example>\r\nDATA\r\nx\r\n..y\r\n.\r\n":
        proto.dataReceived(bytes([b]))
    assert transport.value() == (b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"
                                 b"250 2.0.0 ok 1700000000 qp 100\r\n")
    assert injector.writers[0].data.split(b"\n", 2)[2] == b"x\n.y\n"
