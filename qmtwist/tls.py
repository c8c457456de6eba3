"""
TLS contexts: the servers' certificate from C{control/servercert.pem} and client options.

C{servercert.pem} holds the private key and the certificate chain in one PEM file (docs/behaviour/smtp.md
7.10,
control.md 2.2; qmail's STARTTLS patch uses the same file). L{ServerCertificate} rereads it when its mtime
changes, so a new certificate applies to the next connection. L{clientOptions} is for the remote
delivery agent: service_identity host-name checks against a CA file or the system trust store
(docs/behaviour/remote.md 11.5).
"""

from __future__ import annotations

import os
import re

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet import ssl
from twisted.logger import Logger

_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def loadServerOptions(path: str) -> ssl.CertificateOptions:
    """
    Build server options from a PEM file with a private key and a certificate chain.

    @raise OSError: the file cannot be read.
    @raise ValueError: it holds no usable key or certificate.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        key = load_pem_private_key(data, password=None)
        certs = [x509.load_pem_x509_certificate(m) for m in _CERT.findall(data)]
    except (ValueError, TypeError) as e:
        raise ValueError(f"bad PEM data in {path}: {e}") from e
    if not certs:
        raise ValueError(f"no certificate in {path}")
    return ssl.CertificateOptions(
        privateKey=key, certificate=certs[0], extraCertChain=certs[1:]
    )


class ServerCertificate:
    """
    C{control/servercert.pem}, reloaded when it changes.

    @ivar path: the PEM file.
    """

    log = Logger(namespace="qmtwist.tls")

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: object = None
        self._options: ssl.CertificateOptions | None = None

    def options(self) -> ssl.CertificateOptions | None:
        """Server options, or L{None} when the file is missing or unusable (no STARTTLS)."""
        try:
            st = os.stat(self.path)
        except OSError:
            self._stamp, self._options = None, None
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._options = loadServerOptions(self.path)
            except (OSError, ValueError) as e:
                self.log.warn("warning: unable to load {path}: {err}", path=self.path, err=str(e))
                self._options = None
        return self._options


def clientOptions(hostname: str, caFile: str | None = None) -> object:
    """
    Client TLS options that verify C{hostname} (service_identity).

    @param caFile: a PEM file of trusted CAs; L{None} uses the system trust store.
    @return: an C{IOpenSSLClientConnectionCreator} for C{startTLS} or C{wrapClientTLS}.
    """
    trustRoot = None
    if caFile is not None:
        with open(caFile, "rb") as f:
            data = f.read()
        certs = [ssl.Certificate.loadPEM(m) for m in _CERT.findall(data)]
        trustRoot = ssl.trustRootFromCertificates(certs)
    return ssl.optionsForClientTLS(hostname, trustRoot=trustRoot)


def unverifiedClientOptions() -> ssl.CertificateOptions:
    """Encrypt without checking the peer (opportunistic STARTTLS to domains not in tlsverify)."""
    return ssl.CertificateOptions(verify=False)
