"""
Inbound SPF, DKIM and DMARC through the whole daemon (docs/behaviour/authentication.md): a
C{twistd qmtwist} child with C{--dns} on the loopback DNS server of this test process, messages
sent with smtplib (on a thread, so that the reactor goes on answering the daemon's lookups) and
swaks, the Authentication-Results field read from the delivered Maildir file.

The zones: SPF records for pass/fail/softfail/none senders, a DKIM key made here (dkimpy signs the
test messages with it; its TXT record is served at sel._domainkey.signed.example) and DMARC
p=reject records.
"""

from __future__ import annotations

import base64
import os
import re
import smtplib
import subprocess

import dkim
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.threads import deferToThread
from twisted.names import dns

from tests.dnsserver import loopbackDNS  # noqa: F401
from tests.integration.daemon import Daemon, twistdWith
from tests.support import freePort, until

ME = b"test.example"
# a silent DNS server costs 0.5 + 0.5 s per lookup rather than 1 + 3 s
SHORT_DNS = twistdWith("from qmtwist.inbound import dns\ndns.TIMEOUTS = (0.5, 0.5)")


def _key() -> tuple[bytes, bytes]:
    """A 1024-bit RSA key: (PKCS#1 PEM private key, DKIM TXT record)."""
    k = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                          serialization.NoEncryption())
    der = k.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


KEY, KEY_TXT = _key()


def txt(server, name: bytes, text: bytes) -> None:
    """A TXT record, split into strings of at most 255 bytes."""
    server.add(name, dns.Record_TXT(*[text[i:i + 255] for i in range(0, len(text), 255)], ttl=0))


@pytest.fixture
def zones(loopbackDNS):  # noqa: F811
    z = loopbackDNS
    txt(z, b"pass.example", b"v=spf1 ip4:127.0.0.1 -all")
    txt(z, b"fail.example", b"v=spf1 -all")
    txt(z, b"soft.example", b"v=spf1 ~all")
    txt(z, b"client.example", b"v=spf1 a:client.example -all")
    z.a(b"client.example", "127.0.0.1")
    z.a(b"none.example", "192.0.2.1")  # exists, no SPF record
    txt(z, b"sel._domainkey.signed.example", KEY_TXT)
    txt(z, b"_dmarc.signed.example", b"v=DMARC1; p=reject")
    txt(z, b"_dmarc.pass.example", b"v=DMARC1; p=reject")
    txt(z, b"_dmarc.strict.example", b"v=DMARC1; p=reject; adkim=s; aspf=s")
    return z


@pytest.fixture
def mx(home, tmp_path, zones):
    port = freePort()
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", f"tcp:{port}:interface=127.0.0.1",
                               "--qmtp", "none", "--pop3", "none",
                               "--dns", f"127.0.0.1:{zones.port}"],
               str(tmp_path / "log"), twistd=SHORT_DNS)
    d.port = port
    yield d
    if d.proc is not None and d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


async def start(d: Daemon) -> None:
    d.start()
    await d.until(lambda: any("tcpserver: status: 0/40" in x for x in d.lines()), "listening")


def _send(port: int, sender: str, message: bytes, helo: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo) as s:
        try:
            s.sendmail(sender, ["postmaster@test.example"], message)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error
    return 250, b""


async def send(d: Daemon, sender: str, message: bytes, helo: str = "client.example"
               ) -> tuple[int, bytes]:
    return await deferToThread(_send, d.port, sender, message, helo)


def maildirFiles(home) -> list[bytes]:
    new = os.path.join(home.alias, "Maildir", "new")
    out = []
    for n in sorted(os.listdir(new), key=lambda n: os.stat(os.path.join(new, n)).st_mtime_ns):
        with open(os.path.join(new, n), "rb") as f:
            out.append(f.read())
    return out


async def delivered(d: Daemon, home, count: int) -> list[bytes]:
    return await d.until(lambda: len(maildirFiles(home)) >= count and maildirFiles(home),
                         f"{count} messages in alias/Maildir/new")


def authResults(mess: bytes) -> list[bytes]:
    """The Authentication-Results fields of the header, unfolded, top first."""
    head = mess.split(b"\n\n", 1)[0]
    fields = re.split(rb"\n(?![ \t])", head)
    return [re.sub(rb"\n[ \t]+", b" ", f) for f in fields
            if f.lower().startswith(b"authentication-results:")]


def bySubject(messages: list[bytes]) -> dict[bytes, bytes]:
    """Our Authentication-Results field of each message, by its Subject."""
    return {re.search(rb"\nSubject: ([^\n]*)", m).group(1): ours(m) for m in messages}


def ours(mess: bytes) -> bytes:
    [first, *_] = authResults(mess)
    assert first.startswith(b"Authentication-Results: test.example; "), first
    return first


def message(frm: str, subject: str, body: bytes = b"hello\n", sign: bool = False,
            extra: bytes = b"") -> bytes:
    m = (b"From: " + frm.encode() + b"\r\nTo: postmaster@test.example\r\nSubject: " +
         subject.encode() + b"\r\n" + extra + b"\r\n" + body.replace(b"\n", b"\r\n"))
    if sign:
        sig = dkim.sign(m, b"sel", b"signed.example", KEY,
                        canonicalize=(b"relaxed", b"relaxed"))
        m = sig + m
    return m


@pytest_twisted.ensureDeferred
async def test_spf_results(home, mx):
    await start(mx)
    for sender in ("a@pass.example", "a@fail.example", "a@soft.example", "a@none.example"):
        assert (await send(mx, sender, message("x@other.example", sender)))[0] == 250
    got = await delivered(mx, home, 4)
    h = bySubject(got)
    heads = [h[s.encode()] for s in ("a@pass.example", "a@fail.example", "a@soft.example",
                                     "a@none.example")]
    assert heads[0] == (b"Authentication-Results: test.example; spf=pass smtp.mailfrom="
                        b"a@pass.example; spf=pass smtp.helo=client.example; dkim=none; "
                        b"dmarc=none header.from=other.example")
    assert b"; spf=fail smtp.mailfrom=a@fail.example; " in heads[1], heads[1]
    assert b"; spf=softfail smtp.mailfrom=a@soft.example; " in heads[2], heads[2]
    assert b"; spf=none smtp.mailfrom=a@none.example; " in heads[3], heads[3]
    # the field is first after the queue's Received line, before the session's Received
    [passed] = [m for m in got if b"Subject: a@pass.example" in m]
    lines = passed.split(b"\n")
    i = lines.index(b"Authentication-Results: test.example;")
    assert lines[i - 1].startswith(b"Received: (qmail ") and lines[i + 5].startswith(
        b"Received: from "), lines[:12]
    await mx.until(lambda: any("inbound: qp " in x and "spf=pass dkim=none dmarc=none" in x
                               for x in mx.lines()), "the inbound log line")


@pytest_twisted.ensureDeferred
async def test_dkim_and_dmarc(home, mx):
    await start(mx)
    # signed and aligned: DKIM pass, DMARC pass (SPF fails: the DKIM pass is enough)
    good = message("Bob <bob@signed.example>", "signed", b"signed body\n", sign=True)
    assert (await send(mx, "bob@fail.example", good))[0] == 250
    # the same signed message with its body changed on the way: DKIM fail, DMARC fail
    tampered = good.replace(b"signed body", b"changed body")
    assert (await send(mx, "bob@fail.example", tampered))[0] == 250
    # unsigned, SPF pass for an aligned envelope domain: DMARC pass through SPF
    assert (await send(mx, "bob@pass.example", message("bob@pass.example", "spf")))[0] == 250
    # SPF pass but not aligned under aspf=s, unsigned: DMARC fail (p=reject, delivered)
    assert (await send(mx, "bob@pass.example", message("c@strict.example", "strict")))[0] == 250
    # From a subdomain with no record of its own: the organizational domain's policy, and
    # relaxed alignment with the parent's signature
    sub = message("d@sub.signed.example", "sub", b"sub body\n", sign=True)
    assert (await send(mx, "d@none.example", sub))[0] == 250
    got = await delivered(mx, home, 5)
    byName = bySubject(got)
    h = [byName[s] for s in (b"signed", b"signed", b"spf", b"strict")]
    h[1] = next(ours(m) for m in got if b"changed body" in m)
    h[0] = next(ours(m) for m in got if b"signed body" in m)
    assert b"; dkim=pass header.d=signed.example header.s=sel; " in h[0], h[0]
    assert h[0].endswith(b"; dmarc=pass (p=reject dis=none) header.from=signed.example"), h[0]
    assert (b"; dkim=fail (body hash mismatch) header.d=signed.example header.s=sel; "
            in h[1]), h[1]
    assert h[1].endswith(b"; dmarc=fail (p=reject dis=reject) header.from=signed.example"), h[1]
    assert b"spf=pass smtp.mailfrom=bob@pass.example" in h[2]
    assert h[2].endswith(b"; dkim=none; dmarc=pass (p=reject dis=none) header.from=pass.example")
    assert h[3].endswith(b"; dmarc=fail (p=reject dis=reject) header.from=strict.example"), h[3]
    assert byName[b"sub"].endswith(b"; dkim=pass header.d=signed.example header.s=sel; "
                                   b"dmarc=pass (p=reject dis=none) header.from=sub.signed.example")
    # the delivered copy still verifies (the header went in front of the signed fields)
    signed = next(m for m in got if b"signed body" in m)
    body = signed.split(b"Received: from ", 1)[1].split(b"\n", 2)[2]
    assert dkim.verify(body, dnsfunc=lambda name, timeout=5: KEY_TXT)


@pytest_twisted.ensureDeferred
async def test_forged_authentication_results(home, mx):
    await start(mx)
    forged = (b"Authentication-Results: test.example; dkim=pass header.d=forged.example\r\n"
              b"Authentication-Results: (folded, and in upper case)\r\n TEST.EXAMPLE;\r\n"
              b"  spf=pass smtp.mailfrom=x@forged.example\r\n"
              b"Authentication-Results: other.example; spf=pass smtp.mailfrom=x@other.example\r\n")
    m = message("x@other.example", "forged", extra=forged)
    assert (await send(mx, "a@pass.example", m))[0] == 250
    [got] = await delivered(mx, home, 1)
    fields = authResults(got)
    assert len(fields) == 2, fields
    assert fields[0].startswith(b"Authentication-Results: test.example; spf=pass smtp.mailfrom=a@")
    assert fields[1] == (b"Authentication-Results: other.example; spf=pass "
                         b"smtp.mailfrom=x@other.example")
    assert b"forged.example" not in got
    await mx.until(lambda: any("removed 2 Authentication-Results claiming our name" in x
                               for x in mx.lines()), "the removal's log line")


def queueFiles(home) -> list[str]:
    out = []
    for d in ("mess", "intd", "todo", "pid", "info", "local", "remote"):
        for dirpath, _, names in os.walk(home.queue.sub(d)):
            out += [os.path.join(dirpath, n) for n in names]
    return out


def _swaks(port: int, sender: str, data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", "client.example",
         "--from", sender, "--to", "postmaster@test.example", "--data", "-"],
        input=data, capture_output=True, timeout=60, check=False)


@pytest_twisted.ensureDeferred
async def test_dmarcreject_refuses_reject_failures(home, mx):
    with open(os.path.join(home.control, "dmarcreject"), "w") as f:
        f.write("1\n")
    await start(mx)
    bad = message("c@strict.example", "strict")
    r = await deferToThread(_swaks, mx.port, "bob@pass.example", bad)
    assert r.returncode != 0
    out = r.stdout.decode()
    assert re.search(r"<\*\* 550 5\.7\.1 sorry, the DMARC policy of strict\.example rejects this "
                     r"message \(#5\.7\.1\)", out), out
    # nothing of it queued or delivered; a message that passes still goes through
    assert (await send(mx, "bob@pass.example", message("bob@pass.example", "ok")))[0] == 250
    [got] = await delivered(mx, home, 1)
    assert b"Subject: ok" in got
    await until(lambda: not queueFiles(home), "an empty queue")
    await mx.until(lambda: any("refused: DMARC policy reject for strict.example" in x
                               for x in mx.lines()), "the refusal's log line")


@pytest_twisted.ensureDeferred
async def test_relay_client_is_not_verified(home, mx):
    with open(os.path.join(home.rules, "smtp"), "w") as f:
        f.write('127.:allow,RELAYCLIENT=""\n')
    await start(mx)
    forged = b"Authentication-Results: other.example; none\r\n"
    assert (await send(mx, "a@fail.example", message("c@strict.example", "relay",
                                                      extra=forged)))[0] == 250
    [got] = await delivered(mx, home, 1)
    assert authResults(got) == [b"Authentication-Results: other.example; none"], got
    # the log is written in batches: wait for the message's last line before looking
    await mx.until(lambda: any(x.startswith("end msg ") for x in mx.lines()), "end msg")
    assert not any("inbound: qp" in x for x in mx.lines())


@pytest_twisted.ensureDeferred
async def test_dns_failure_is_temperror_and_accepted(home, mx, zones):
    zones.silence(b"silent.example")
    await start(mx)
    m = message("a@silent.example", "silent")
    assert (await send(mx, "a@silent.example", m))[0] == 250
    [got] = await delivered(mx, home, 1)
    h = ours(got)
    assert b"; spf=temperror smtp.mailfrom=a@silent.example; " in h, h
    assert h.endswith(b"; dmarc=temperror (policy lookup failed) header.from=silent.example"), h


SMALL_DKIM = twistdWith("from qmtwist.inbound import dns, message\ndns.TIMEOUTS = (0.5, 0.5)\n"
                        "message.DKIM_LIMIT = 4096")


@pytest_twisted.ensureDeferred
async def test_message_over_the_dkim_limit_is_neutral_and_copied_whole(home, mx):
    mx.twistd = SMALL_DKIM  # the daemon verifies messages of up to 4096 bytes
    await start(mx)
    body = b"".join(b"line %06d of a long body\n" % i for i in range(20000))  # ~500 kB
    m = message("bob@signed.example", "big", body, sign=True)
    assert (await send(mx, "bob@pass.example", m))[0] == 250
    [got] = await delivered(mx, home, 1)
    h = ours(got)
    assert (b"; dkim=neutral (message too large to verify) header.d=signed.example "
            b"header.s=sel; " in h), h
    assert got.endswith(b"\n\n" + body)
    # what the client sent, byte for byte after our lines (CRLF stored as LF)
    client = got.split(b"Received: from ", 1)[1].split(b"\n", 2)[2]
    assert client == m.replace(b"\r\n", b"\n")
