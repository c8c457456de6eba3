"""SMTPUTF8 in remote delivery (qmtwist/remote/smtputf8.py and its hook in smtpclient.transact,
docs/behaviour/smtp-extensions.md 20.6), on a StringTransport peer."""

from __future__ import annotations

import pytest
from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from qmtwist.delivery import Report
from qmtwist.remote.smtpclient import ReplyProtocol, TLSSetting, transact
from qmtwist.remote.smtputf8 import mailFrom, needsSMTPUTF8, offersSMTPUTF8, quoteAddress

TEST = "tést@x.example".encode()
NOT_OFFERED = (b"Connected to 127.0.0.1 but it does not offer SMTPUTF8, needed for a UTF-8 "
               b"address. (#5.6.7)\n")


def test_helpers():
    assert needsSMTPUTF8(b"a@b", [b"c@d", TEST]) and needsSMTPUTF8(TEST, [b"c@d"])
    assert not needsSMTPUTF8(b"", [b"c@d"])
    assert offersSMTPUTF8([b"250-me", b"250-PIPELINING", b"250 SMTPUTF8"])
    assert not offersSMTPUTF8([b"250 SMTPUTF8"])  # the greeting line is not a keyword
    assert not offersSMTPUTF8(None)
    assert quoteAddress(TEST, True) == TEST
    assert quoteAddress(TEST, False) == '"tést"@x.example'.encode()
    assert quoteAddress('a b\u00e9@x'.encode(), True) == '"a bé"@x'.encode()
    assert mailFrom(TEST, [b"c@d"], True) == b"MAIL FROM:<" + TEST + b"> SMTPUTF8"
    assert mailFrom(b"a@b", [b"c@d"], True) == b"MAIL FROM:<a@b>"
    assert mailFrom(b"", [TEST], True) == b"MAIL FROM:<> SMTPUTF8"


def run(tmp_path, ehlo: bytes, sender: bytes, recipients: list[bytes], replies: bytes):
    path = tmp_path / "m"
    path.write_bytes("Subject: é\n\nbody\n".encode())
    proto = ReplyProtocol(Clock(), 30)
    t = StringTransport()
    proto.makeConnection(t)
    proto.dataReceived(b"220 peer ESMTP\r\n" + ehlo + replies)
    d = ensureDeferred(transact(proto, "127.0.0.1", b"me.example", sender, recipients,
                                str(path), TLSSetting(allowed=False), maybeDeferred))
    while t.producer is not None:
        t.producer.resumeProducing()
    got: list = []
    d.addBoth(got.append)
    return t.value(), got[0]


OFFERS = b"250-peer\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
PLAIN = b"250-peer\r\n250 8BITMIME\r\n"


def test_peer_that_offers_gets_the_parameter_and_unquoted_addresses(tmp_path):
    sent, reports = run(tmp_path, OFFERS, TEST, [TEST, b"b@y.example"],
                        b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n")
    lines = sent.split(b"\r\n")
    assert lines[1:4] == [b"MAIL FROM:<" + TEST + b"> SMTPUTF8", b"RCPT TO:<" + TEST + b">",
                          b"RCPT TO:<b@y.example>"]
    assert "Subject: é\r\n".encode() in sent
    assert [r.outcome.value for r in reports] == ["success", "success"]


def test_peer_without_it_fails_the_utf8_recipient_only(tmp_path):
    sent, reports = run(tmp_path, PLAIN, b"a@b.example", [TEST, b"b@y.example"],
                        b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n")
    assert sent.split(b"\r\n")[1:3] == [b"MAIL FROM:<a@b.example>", b"RCPT TO:<b@y.example>"]
    assert reports[0] == Report.failure(NOT_OFFERED)
    assert reports[1].outcome.value == "success"


@pytest.mark.parametrize("recipients", [[b"b@y.example"], [TEST]])
def test_peer_without_it_fails_a_utf8_sender_before_mail(tmp_path, recipients):
    sent, reports = run(tmp_path, PLAIN, TEST, recipients, b"")
    assert sent == b"EHLO me.example\r\nQUIT\r\n"
    assert reports == [Report.failure(NOT_OFFERED)]


def test_ascii_envelope_is_unchanged_whatever_the_headers(tmp_path):
    sent, reports = run(tmp_path, OFFERS, b"a@b.example", [b"c@d.example"],
                        b"250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n")
    assert sent.split(b"\r\n")[1] == b"MAIL FROM:<a@b.example>"
    assert reports[0].outcome.value == "success"
