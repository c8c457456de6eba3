"""STARTTLS and SMTPS with a self-signed certificate (docs/behaviour/smtp.md 7.2, 7.10); smtplib and swaks
peers."""

from __future__ import annotations

import datetime
import os
import shutil
import smtplib
import ssl

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue

from tests.conftest import logLines
from tests.integration.smtp.conftest import Client, queuedMessages
from tests.integration.smtp.test_listener import MSG, checkMessage


def writeCertificate(path: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test.example")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def writeMismatchedCertificate(path: str) -> None:
    """A PEM file whose private key is not the key of its certificate (two fresh pairs mixed)."""
    writeCertificate(path + ".a")
    writeCertificate(path + ".b")
    with open(path + ".a", "rb") as f:
        key = f.read().split(b"-----BEGIN CERTIFICATE-----")[0]
    with open(path + ".b", "rb") as f:
        cert = b"-----BEGIN CERTIFICATE-----" + f.read().split(b"-----BEGIN CERTIFICATE-----")[1]
    os.unlink(path + ".a")
    os.unlink(path + ".b")
    with open(path, "wb") as f:
        f.write(key + cert)


MISMATCH = ("warning: control/servercert.pem: private key does not match certificate; "
            "STARTTLS disabled")


@pytest.fixture
def certHome(home):
    writeCertificate(os.path.join(home.control, "servercert.pem"))
    return home


def noVerify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest_twisted.inlineCallbacks
def test_smtplib_starttls(certHome, startSMTP):
    srv = startSMTP()

    def talk():
        with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.example") as s:
            code, text = s.ehlo()
            assert text.split(b"\n")[-1] == b"STARTTLS"
            assert s.starttls(context=noVerify()) == (220, b"2.0.0 ready for tls")
            code, text = s.ehlo()
            assert text == (b"test.example\nPIPELINING\n8BITMIME\nSIZE 52428800\n"
                            b"ENHANCEDSTATUSCODES\nSMTPUTF8\nCHUNKING")
            return s.sendmail("alice@example.org", ["bob@test.example"], MSG)

    assert (yield deferToThread(talk)) == {}
    [(env, mess)] = queuedMessages(srv.home)
    assert checkMessage(mess, b"ESMTPS") == b"Subject: t\n\nbody\n"


@pytest_twisted.inlineCallbacks
def test_pipelined_after_starttls_discarded(certHome, startSMTP):
    srv = startSMTP()

    def talk():
        c = Client(srv.port)
        c.send(b"EHLO client.example\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@x>\r\n")
        before = c.readUntil(b"220 2.0.0 ready for tls\r\n")
        tls = noVerify().wrap_socket(c.sock, server_hostname="test.example")
        tls.sendall(b"NOOP\r\nRCPT TO:<bob@test.example>\r\nQUIT\r\n")
        out = b""
        while True:
            chunk = tls.recv(4096)
            if not chunk:
                break
            out += chunk
        return before, out

    before, after = yield deferToThread(talk)
    assert before == (b"220 test.example ESMTP\r\n250-test.example\r\n250-PIPELINING\r\n"
                      b"250-8BITMIME\r\n250-SIZE 52428800\r\n250-ENHANCEDSTATUSCODES\r\n"
                      b"250-SMTPUTF8\r\n250-CHUNKING\r\n250 STARTTLS\r\n220 2.0.0 ready for tls\r\n")
    assert after == b"250 2.0.0 ok\r\n503 5.5.1 MAIL first (#5.5.1)\r\n221 2.0.0 test.example\r\n"


@pytest_twisted.inlineCallbacks
def test_smtps_endpoint(certHome, startSMTP):
    pem = os.path.join(certHome.control, "servercert.pem")
    srv = startSMTP(endpoint=f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}")

    def talk():
        with smtplib.SMTP_SSL("127.0.0.1", srv.port, local_hostname="client.example",
                              context=noVerify()) as s:
            code, text = s.ehlo()
            assert text == (b"test.example\nPIPELINING\n8BITMIME\nSIZE 52428800\n"
                            b"ENHANCEDSTATUSCODES\nSMTPUTF8\nCHUNKING")
            return s.sendmail("alice@example.org", ["bob@test.example"], MSG)

    assert (yield deferToThread(talk)) == {}
    [(env, mess)] = queuedMessages(srv.home)
    assert checkMessage(mess, b"ESMTPS") == b"Subject: t\n\nbody\n"


SWAKS = shutil.which("swaks")
needSwaks = pytest.mark.skipif(SWAKS is None, reason="swaks not installed (Debian package swaks)")


def swaks(port: int, *extra: str):
    args = ["--server", "127.0.0.1", "--port", str(port), "--helo", "client.example",
            "--from", "alice@example.org", "--to", "bob@test.example",
            "--header", "Subject: swaks", "--body", "hello from swaks", "--pipeline", *extra]
    return getProcessOutputAndValue(SWAKS, args, env={"PATH": os.environ.get("PATH", "")})


@needSwaks
@pytest_twisted.inlineCallbacks
def test_swaks_plain(startSMTP):
    srv = startSMTP()
    out, err, code = yield swaks(srv.port)
    assert code == 0, out + err
    assert b"<-  250 2.0.0 ok " in out
    [(env, mess)] = queuedMessages(srv.home)
    assert (env.sender, list(env.recipients)) == (b"alice@example.org", [b"bob@test.example"])
    body = checkMessage(mess)
    assert b"\nSubject: swaks\n" in b"\n" + body
    assert body.endswith(b"\n\nhello from swaks\n\n\n")


@needSwaks
@pytest_twisted.inlineCallbacks
def test_swaks_tls(certHome, startSMTP):
    srv = startSMTP()
    out, err, code = yield swaks(srv.port, "--tls")
    assert code == 0, out + err
    assert b"<-  220 2.0.0 ready for tls" in out and b"TLS started" in out
    [(env, mess)] = queuedMessages(srv.home)
    checkMessage(mess, b"ESMTPS")


@pytest_twisted.inlineCallbacks
def test_smtps_endpoint_defaults_to_servercert(certHome, startSMTP):
    srv = startSMTP(endpoint="ssl:0:interface=127.0.0.1")

    def talk():
        with smtplib.SMTP_SSL("127.0.0.1", srv.port, context=noVerify()) as s:
            return s.noop()

    assert (yield deferToThread(talk)) == (250, b"2.0.0 ok")


@pytest_twisted.inlineCallbacks
def test_mismatched_key_no_starttls(home, startSMTP, logEvents):
    """
    A key that is not the certificate's: STARTTLS was advertised and every handshake then
    failed (no 220, an unhandled error; a Postfix peer defers all its mail). Now it is not
    offered, one warning says why, and mail goes on in plaintext.
    """
    writeMismatchedCertificate(os.path.join(home.control, "servercert.pem"))
    srv = startSMTP()

    def talk():
        c = Client(srv.port)
        c.send(b"EHLO client.example\r\nSTARTTLS\r\nMAIL FROM:<a@x.example>\r\n"
               b"RCPT TO:<bob@test.example>\r\nDATA\r\n" + MSG + b".\r\nQUIT\r\n")
        return c.readAll()

    out = yield deferToThread(talk)
    ehlo = out.split(b"\r\n")[1:8]
    assert ehlo[-1].startswith(b"250 ") and b"STARTTLS" not in out.split(b"502")[0], out
    assert b"\r\n502 5.5.1 unimplemented (#5.5.1)\r\n250 2.1.0 ok\r\n" in out
    assert len(queuedMessages(srv.home)) == 1
    lines = logLines(logEvents)
    assert lines.count(MISMATCH) == 1
    assert not [e for e in logEvents if e.get("isError") or e.get("log_failure")]


@pytest_twisted.inlineCallbacks
def test_mismatched_key_then_fixed_offers_starttls(home, startSMTP, logEvents):
    """The file is checked again for the next connection once it changes."""
    pem = os.path.join(home.control, "servercert.pem")
    writeMismatchedCertificate(pem)
    srv = startSMTP()

    def ehlo():
        with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.example") as s:
            return s.ehlo()[1]

    assert b"STARTTLS" not in (yield deferToThread(ehlo))
    writeCertificate(pem + ".new")
    os.replace(pem + ".new", pem)
    assert (yield deferToThread(ehlo)).split(b"\n")[-1] == b"STARTTLS"


def test_smtps_endpoint_mismatched_key_fails_at_start(home, startSMTP, logEvents):
    """An ssl: endpoint that serves such a file does not start, with one line naming it."""
    writeMismatchedCertificate(os.path.join(home.control, "servercert.pem"))
    with pytest.raises(ValueError):
        startSMTP(endpoint="ssl:0:interface=127.0.0.1")
    assert [line for line in logLines(logEvents) if line.startswith("alert:")] == [
        "alert: cannot start: unable to listen on ssl:0:interface=127.0.0.1: "
        "control/servercert.pem: private key does not match certificate"]
