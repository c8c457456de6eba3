"""The session's own log lines (qmtwist/smtp/sessionlog.py, docs/behaviour/submission.md 16.5)."""

from __future__ import annotations

from twisted.logger import Logger, formatEvent

from qmtwist.smtp.sessionlog import commandForLog, replyCode
from tests.unit.smtp.helpers import makeSession


def test_reply_code_and_command_text():
    assert replyCode(b"553 sorry, that domain isn't in my list (#5.7.1)") == "553"
    assert replyCode(b"535 5.7.8 authentication failed (#5.7.8)") == "535 5.7.8"
    assert commandForLog(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==") == "AUTH PLAIN"
    assert commandForLog(b"auth login YWxpY2U=") == "AUTH login"
    assert commandForLog(b"MAIL FROM:<t\xc3\xa9st@x>\x01") == "MAIL FROM:<t??st@x>?"
    assert commandForLog(b"X" * 300).endswith("X...") and len(commandForLog(b"X" * 300)) == 203
    assert commandForLog(None) == "(none)"


def test_each_refused_command_is_logged_on_the_smtp_listener(logEvents):
    proto, t, _, clock = makeSession()
    proto.dataReceived(b"HELO c\r\nRCPT TO:<a@test.example>\r\nMAIL FROM:<a@b>\r\n"
                       b"RCPT TO:<x@elsewhere.example>\r\nRCPT TO:<bob@test.example>\r\n"
                       b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
    lines = [formatEvent(e) for e in logEvents if "refused" in e.get("log_format", "")]
    assert lines == [
        "smtp: refused 127.0.0.1 503 5.5.1 RCPT TO:<a@test.example>",
        "smtp: refused 127.0.0.1 553 5.7.1 RCPT TO:<x@elsewhere.example>",
        "smtp: refused 127.0.0.1 502 5.5.1 AUTH PLAIN",
    ]
    clock.advance(proto.control.timeoutsmtpd + 1)
    assert [formatEvent(e) for e in logEvents if "refused" in e.get("log_format", "")][-1] == (
        "smtp: refused 127.0.0.1 451 4.4.2 (timeout)")


def _selfSigned(cn: str):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _handshake(clientCert: bool):
    """A real TLS handshake between two pyOpenSSL connections over memory BIOs; the server
    asks for and verifies a client certificate."""
    from OpenSSL import SSL, crypto

    skey, scert = _selfSigned("server.example")
    server = SSL.Context(SSL.TLS_METHOD)
    server.use_certificate(scert)
    server.use_privatekey(skey)
    client = SSL.Context(SSL.TLS_METHOD)
    if clientCert:
        ckey, ccert = _selfSigned("client.example")
        client.use_certificate(ccert)
        client.use_privatekey(ckey)
        server.get_cert_store().add_cert(crypto.X509.from_cryptography(ccert))
    server.set_verify(SSL.VERIFY_PEER, lambda conn, cert, err, depth, ok: bool(ok))
    s, c = SSL.Connection(server, None), SSL.Connection(client, None)
    s.set_accept_state()
    c.set_connect_state()
    for _ in range(10):
        for conn in (c, s):
            try:
                conn.do_handshake()
            except SSL.WantReadError:
                pass
        for a, b in ((c, s), (s, c)):
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    return s


class _Transport:
    def __init__(self, conn) -> None:
        self.conn = conn

    def getHandle(self):
        return self.conn


def test_tls_line_names_protocol_cipher_and_a_verified_peer(logEvents):
    from qmtwist.smtp.sessionlog import logTLS, tlsDescription

    protocol, cipher, subject = tlsDescription(_Transport(_handshake(clientCert=True)))
    assert protocol.startswith("TLSv1.") and cipher != "unknown"
    assert subject == "CN=client.example"
    assert tlsDescription(_Transport(_handshake(clientCert=False)))[2] is None
    assert tlsDescription(object()) == ("unknown", "unknown", None)
    logTLS(Logger(), "smtp", {"TCPREMOTEIP": b"192.0.2.1"}, _Transport(_handshake(True)))
    [line] = [formatEvent(e) for e in logEvents if "tls" in e.get("log_format", "")]
    assert line.startswith("smtp: tls 192.0.2.1 TLSv1.")
    assert line.endswith(" peer CN=client.example")
