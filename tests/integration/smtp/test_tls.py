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
            assert s.starttls(context=noVerify()) == (220, b"ready for tls")
            code, text = s.ehlo()
            assert text == b"test.example\nPIPELINING\n8BITMIME"
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
        before = c.readUntil(b"220 ready for tls\r\n")
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
                      b"250-8BITMIME\r\n250 STARTTLS\r\n220 ready for tls\r\n")
    assert after == b"250 ok\r\n503 MAIL first (#5.5.1)\r\n221 test.example\r\n"


@pytest_twisted.inlineCallbacks
def test_smtps_endpoint(certHome, startSMTP):
    pem = os.path.join(certHome.control, "servercert.pem")
    srv = startSMTP(endpoint=f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}")

    def talk():
        with smtplib.SMTP_SSL("127.0.0.1", srv.port, local_hostname="client.example",
                              context=noVerify()) as s:
            code, text = s.ehlo()
            assert text == b"test.example\nPIPELINING\n8BITMIME"
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
    assert b"<-  250 ok " in out
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
    assert b"<-  220 ready for tls" in out and b"TLS started" in out
    [(env, mess)] = queuedMessages(srv.home)
    checkMessage(mess, b"ESMTPS")


@pytest_twisted.inlineCallbacks
def test_smtps_endpoint_defaults_to_servercert(certHome, startSMTP):
    srv = startSMTP(endpoint="ssl:0:interface=127.0.0.1")

    def talk():
        with smtplib.SMTP_SSL("127.0.0.1", srv.port, context=noVerify()) as s:
            return s.noop()

    assert (yield deferToThread(talk)) == (250, b"ok")
