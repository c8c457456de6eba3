"""
Inbound SPF, DKIM and DMARC for mail that arrives by BDAT (CHUNKING, RFC 3030) instead of DATA
(docs/behaviour/authentication.md, smtp.md's CHUNKING): the same Authentication-Results field,
a tampered body fails the same way, and control/dmarcreject refuses at the LAST chunk. The
daemon and the zones are those of test_authentication.py (loopback DNS server).
"""

from __future__ import annotations

import os
import smtplib

import dkim
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.integration.smtp.test_authentication import (  # noqa: F401
    KEY_TXT, bySubject, delivered, message, mx, ours, queueFiles, start, zones)
from tests.dnsserver import loopbackDNS  # noqa: F401
from tests.support import until


def _bdat(port: int, sender: str, m: bytes, chunks: int = 3) -> tuple[int, bytes]:
    """Send C{m} in C{chunks} BDAT chunks (the last with LAST): the final reply."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example") as s:
        s.ehlo()
        assert s.has_extn("chunking")
        assert s.mail(sender)[0] == 250
        assert s.rcpt("postmaster@test.example")[0] == 250
        size = -(-len(m) // chunks)
        parts = [m[i:i + size] for i in range(0, len(m), size)]
        for i, part in enumerate(parts):
            last = b" LAST" if i == len(parts) - 1 else b""
            s.send(b"BDAT %d%s\r\n" % (len(part), last) + part)
            code, text = s.getreply()
            if last or code != 250:
                return code, text
    raise AssertionError("no LAST chunk")


async def bdat(d, sender: str, m: bytes) -> tuple[int, bytes]:
    return await deferToThread(_bdat, d.port, sender, m)


@pytest_twisted.ensureDeferred
async def test_bdat_gets_the_same_results_as_data(home, mx):  # noqa: F811
    await start(mx)
    good = message("Bob <bob@signed.example>", "signed", b"signed body\n", sign=True)
    assert (await bdat(mx, "bob@fail.example", good))[0] == 250
    tampered = good.replace(b"signed body", b"changed body")
    assert (await bdat(mx, "bob@fail.example", tampered))[0] == 250
    assert (await bdat(mx, "bob@pass.example", message("bob@pass.example", "spf")))[0] == 250
    assert (await bdat(mx, "a@soft.example", message("x@other.example", "soft")))[0] == 250
    got = await delivered(mx, home, 4)
    signed = next(m for m in got if b"signed body" in m)
    changed = next(m for m in got if b"changed body" in m)
    assert ours(signed) == (
        b"Authentication-Results: test.example; spf=fail smtp.mailfrom=bob@fail.example; "
        b"spf=pass smtp.helo=client.example; dkim=pass header.d=signed.example header.s=sel; "
        b"dmarc=pass (p=reject dis=none) header.from=signed.example"), ours(signed)
    assert (b"; dkim=fail (body hash mismatch) header.d=signed.example header.s=sel; "
            in ours(changed)), ours(changed)
    assert ours(changed).endswith(b"; dmarc=fail (p=reject dis=reject) "
                                  b"header.from=signed.example")
    h = bySubject(got)
    assert h[b"spf"] == (
        b"Authentication-Results: test.example; spf=pass smtp.mailfrom=bob@pass.example; "
        b"spf=pass smtp.helo=client.example; dkim=none; "
        b"dmarc=pass (p=reject dis=none) header.from=pass.example"), h[b"spf"]
    assert b"; spf=softfail smtp.mailfrom=a@soft.example; " in h[b"soft"], h[b"soft"]
    # the copy delivered from chunks still verifies
    body = signed.split(b"Received: from ", 1)[1].split(b"\n", 2)[2]
    assert dkim.verify(body, dnsfunc=lambda name, timeout=5: KEY_TXT)


@pytest_twisted.ensureDeferred
async def test_bdat_dmarcreject(home, mx):  # noqa: F811
    with open(os.path.join(home.control, "dmarcreject"), "w") as f:
        f.write("1\n")
    await start(mx)
    code, text = await bdat(mx, "bob@pass.example", message("c@strict.example", "strict"))
    assert (code, text) == (550, b"5.7.1 sorry, the DMARC policy of strict.example rejects "
                                 b"this message (#5.7.1)")
    assert (await bdat(mx, "bob@pass.example", message("bob@pass.example", "ok")))[0] == 250
    [got] = await delivered(mx, home, 1)
    assert b"Subject: ok" in got
    await until(lambda: not queueFiles(home), "an empty queue")
