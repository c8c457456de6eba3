"""
Reading a queued message back and writing its final copy (qmtwist/inbound/message.py): where
the client's message starts, the bounded header scan, and the removal of Authentication-Results
fields that claim our authserv-id (RFC 8601 5; docs/behaviour/authentication.md 22.5), on real
files laid out as the SMTP session writes them.
"""

from __future__ import annotations

import pytest

from qmtwist.inbound import message
from qmtwist.inbound.message import Removed, authservId, claimsUs

QUEUE_LINE = b"Received: (qmail 7 invoked from network); 2 Dec 2026 10:00:00 -0000\n"
OUR_RECEIVED = (b"Received: from unknown (HELO client.example) (127.0.0.1)\n"
                b"  by mx.test with SMTP; 2 Dec 2026 10:00:00 -0000\n")
OURS = b"Authentication-Results: mx.test;\n\tspf=pass smtp.mailfrom=a@b.example\n"


def queued(tmp_path, client: bytes) -> message.Queued:
    path = tmp_path / "mess"
    path.write_bytes(QUEUE_LINE + OUR_RECEIVED + client)
    return message.open(str(path))


def final(tmp_path, client: bytes) -> tuple[bytes, int]:
    q = queued(tmp_path, client)
    removed = Removed()
    try:
        out = b"".join(message.finalChunks(q, OURS, b"mx.test", removed))
    finally:
        q.close()
    return out, removed.count


def test_open_finds_the_client_message(tmp_path):
    client = b"From: a@b.example\n\nbody\n"
    q = queued(tmp_path, client)
    try:
        assert q.traceStart == len(QUEUE_LINE)
        assert q.start == len(QUEUE_LINE + OUR_RECEIVED)
        assert q.size == len(client)
        assert message.whole(q) == client
    finally:
        q.close()


def test_final_copy_puts_our_field_first_and_keeps_everything_else(tmp_path):
    client = (b"From: a@b.example\nAuthentication-Results: other.example; none\n"
              b"Subject: s\n\nAuthentication-Results: mx.test; in the body stays\n")
    out, removed = final(tmp_path, client)
    assert out == OURS + OUR_RECEIVED + client
    assert removed == 0


@pytest.mark.parametrize("forged", [
    b"Authentication-Results: mx.test; dkim=pass\n",
    b"authentication-results : MX.TEST;\n spf=pass\n\tsmtp.mailfrom=x\n",
    b"Authentication-Results:\n (a (nested) comment) mx.test; none\n",
    b'Authentication-Results: "mx.test"; none\n',
    b"Authentication-Results: (never closed mx.test; none\n",
    b"Authentication-Results:\n",
])
def test_fields_claiming_us_are_removed(tmp_path, forged):
    client = b"From: a@b.example\n" + forged + b"Subject: s\n\nbody\n"
    out, removed = final(tmp_path, client)
    assert out == OURS + OUR_RECEIVED + b"From: a@b.example\nSubject: s\n\nbody\n"
    assert removed == 1


def test_a_field_longer_than_the_limit_is_removed(tmp_path):
    huge = b"Authentication-Results: other.example;\n" + b" x\n" * (message.FIELD_LIMIT // 3 + 10)
    out, removed = final(tmp_path, b"A: 1\n" + huge + b"B: 2\n\nbody\n")
    assert out == OURS + OUR_RECEIVED + b"A: 1\nB: 2\n\nbody\n" and removed == 1


def test_long_lines_and_a_header_without_body_are_copied_exactly(tmp_path):
    long = b"X-Long: " + b"y" * (3 * message.CHUNK + 5) + b"\n"
    body = b"\n" + b"z" * (2 * message.CHUNK) + b"\nend"
    client = long + b"Authentication-Results: mx.test; none\n" + long + body
    out, removed = final(tmp_path, client)
    assert out == OURS + OUR_RECEIVED + long + long + body and removed == 1
    out, removed = final(tmp_path, b"Subject: only a header")
    assert out == OURS + OUR_RECEIVED + b"Subject: only a header" and removed == 0


@pytest.mark.parametrize("text, found", [
    (b"Authentication-Results: mx.test; none", b"mx.test"),
    (b"Authentication-Results:   MX.Test (comment); spf=pass", b"mx.test"),
    (b"Authentication-Results: (c \\) still c) mx.test 1; none", b"mx.test"),
    (b'Authentication-Results: "mx\\"x"; none', b'mx"x'),
    (b"Authentication-Results: ; none", None),
    (b'Authentication-Results: "open', None),
])
def test_authserv_id(text, found):
    assert authservId(text) == found


def test_claims_us():
    assert claimsUs(b"Authentication-Results: mx.test; none", b"MX.test")
    assert not claimsUs(b"Authentication-Results: mx.test.evil; none", b"mx.test")
    assert not claimsUs(b"Authentication-Results: other.example; none", b"mx.test")


def test_scan_keeps_from_and_signatures_bounded(tmp_path):
    sigs = b"".join(b"DKIM-Signature: v=1; d=d%d.example;\n s=s; b=x\n" % i
                    for i in range(message.MAX_SIGNATURES + 2))
    client = (b"Received: from elsewhere\nFrom: Bob\n <bob@b.example>\n" + sigs +
              b"X-Big: " + b"q" * (2 * message.VALUE_LIMIT) + b"\n\nFrom: not a header\n")
    q = queued(tmp_path, client)
    try:
        s = message.scan(q)
    finally:
        q.close()
    assert s.fromValues == [b" Bob\n <bob@b.example>\n"]
    assert len(s.signatures) == message.MAX_SIGNATURES and s.tooManySignatures
    assert s.signatures[0] == b" v=1; d=d0.example;\n s=s; b=x\n"


def test_whole_refuses_a_message_over_the_dkim_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(message, "DKIM_LIMIT", 100)
    q = queued(tmp_path, b"Subject: s\n\n" + b"x" * 100)
    try:
        assert message.whole(q) is None
    finally:
        q.close()
