"""
Peers for the outbound TLS policy tests: a private CA made with the cryptography library, the
certificates it (or a stranger) issues, and a loopback HTTPS server (twisted.web) that serves
an MTA-STS policy file and counts its requests.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from typing import Any

from attrs import define, field
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto
from twisted.internet import reactor, ssl
from twisted.web import resource, server

PEM = serialization.Encoding.PEM
DER = serialization.Encoding.DER


@define
class Issued:
    """A server certificate and key, and the TLS server options serving them."""

    cert: x509.Certificate
    key: Any
    chain: list[x509.Certificate]

    def options(self) -> ssl.CertificateOptions:
        return ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(self.key),
            certificate=crypto.X509.from_cryptography(self.cert),
            extraCertChain=[crypto.X509.from_cryptography(c) for c in self.chain])

    def spkiSHA256(self) -> bytes:
        """The TLSA 3 1 1 data of this certificate."""
        return hashlib.sha256(self.cert.public_key().public_bytes(
            DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()


class PrivateCA:
    """A throw-away certificate authority (EC P-256, valid from yesterday to the day after)."""

    def __init__(self, name: str = "qmtwist tls-policy test CA") -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(PEM)

    def issue(self, names: list[str], withCA: bool = False) -> Issued:
        """A server certificate for C{names}; C{withCA}: the CA certificate goes in the chain."""
        now = datetime.datetime.now(datetime.timezone.utc)
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[Any] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(cert, key, [self.cert] if withCA else [])


class _Policy(resource.Resource):
    isLeaf = True

    def __init__(self, owner: PolicyServer) -> None:
        super().__init__()
        self.owner = owner

    def render_GET(self, request: Any) -> bytes:
        self.owner.requests.append((request.getRequestHostname(), request.path))
        if request.path != b"/.well-known/mta-sts.txt":
            request.setResponseCode(404)
            return b"not found\n"
        request.setResponseCode(self.owner.status)
        request.setHeader(b"content-type", self.owner.contentType)
        return self.owner.bodies.get(request.getRequestHostname(), self.owner.body)


@define(eq=False)
class PolicyServer:
    """
    HTTPS on 127.0.0.x port 0 serving C{body} at C{/.well-known/mta-sts.txt}.

    @ivar requests: C{(host, path)} of every request, for assertions.
    @ivar bodies: host name -> the policy served for it (else C{body}).
    """

    issued: Issued
    body: bytes = b""
    bodies: dict[bytes, bytes] = field(factory=dict)
    status: int = 200
    contentType: bytes = b"text/plain"
    requests: list[tuple[bytes, bytes]] = field(factory=list)
    port: Any = None

    def start(self, interface: str = "127.0.0.3") -> int:
        site = server.Site(_Policy(self))
        self.port = reactor.listenSSL(0, site, self.issued.options(), interface=interface)
        return int(self.port.getHost().port)

    def stop(self) -> Any:
        return self.port.stopListening()


def policy(mode: str, *mx: str, maxAge: int = 86400) -> bytes:
    """An STSv1 policy file."""
    lines = ["version: STSv1", f"mode: {mode}"] + [f"mx: {m}" for m in mx] + [f"max_age: {maxAge}"]
    return "\r\n".join(lines).encode() + b"\r\n"
