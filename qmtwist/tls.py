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

import errno
import os
import re
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding, PublicFormat, load_pem_private_key)
from twisted.internet import ssl
from twisted.logger import Logger

from qmtwist.control import NotRegularFile, notRegularWarning, readControlFile

_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class KeyMismatch(ValueError):
    """The private key is not the key of the (first) certificate: no TLS handshake can work."""

    def __init__(self) -> None:
        super().__init__("private key does not match certificate")


def _publicDER(key: Any) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[no-any-return]


def checkKeyPair(privateKey: Any, certificate: x509.Certificate) -> None:
    """
    Refuse a key that does not belong to C{certificate} (what OpenSSL's C{check_privatekey}
    finds only when the first handshake builds the context, after STARTTLS was offered).

    @param privateKey: a C{cryptography} private key.
    @raise KeyMismatch: the public halves differ.
    """
    if _publicDER(privateKey.public_key()) != _publicDER(certificate.public_key()):
        raise KeyMismatch()


def loadServerOptions(path: str) -> ssl.CertificateOptions:
    """
    Build server options from a PEM file with a private key and a certificate chain.

    The file is read as a control file (a FIFO or other non-regular file is not opened for
    reading, L{qmtwist.control.readControlFile}), and the key must be the certificate's.

    @raise OSError: the file is missing or cannot be read.
    @raise NotRegularFile: it is not a regular file.
    @raise KeyMismatch: the private key does not match the certificate.
    @raise ValueError: it holds no usable key or certificate.
    """
    data = readControlFile(path)
    if data is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    try:
        key = load_pem_private_key(data, password=None)
        certs = [x509.load_pem_x509_certificate(m) for m in _CERT.findall(data)]
    except (ValueError, TypeError) as e:
        raise ValueError(f"bad PEM data in {path}: {e}") from e
    if not certs:
        raise ValueError(f"no certificate in {path}")
    checkKeyPair(key, certs[0])
    return ssl.CertificateOptions(
        privateKey=key, certificate=certs[0], extraCertChain=certs[1:]
    )


class ServerCertificate:
    """
    C{control/servercert.pem}, reloaded when it changes.

    Given the daemon's L{qmtwist.context.ControlCache}, it registers with it: the cache's
    refresh, which runs on a thread before every connection, calls L{check}, and L{options}
    never touches the disk (nothing blocks the reactor; a FIFO in C{control/} cannot hang it).
    Without one, L{options} checks the file itself (one process per connection, unit tests).

    @ivar path: the PEM file.
    """

    log = Logger(namespace="qmtwist.tls")

    def __init__(self, path: str, controls: object = None) -> None:
        self.path = path
        self.name = "control/" + os.path.basename(path)
        self._stamp: object = None
        self._options: ssl.CertificateOptions | None = None
        watch = getattr(controls, "watch", None)
        self._watched = watch is not None
        if watch is not None:
            watch(self)

    def options(self) -> ssl.CertificateOptions | None:
        """
        Server options, or L{None} when the file is missing or unusable: then neither STARTTLS
        (SMTP EHLO) nor STLS (POP3 CAPA) is offered.
        """
        if not self._watched:
            apply = self.check()
            if apply is not None:
                apply()
        return self._options

    def check(self) -> Callable[[], None] | None:
        """
        Look at the file (blocking: a thread's work) and load it when it changed.

        @return: what to run on the reactor thread to take the new state in and log about it,
            or L{None} when nothing changed.
        """
        try:
            st = os.stat(self.path)
        except OSError:
            if self._stamp is None and self._options is None:
                return None
            return lambda: self._set(None, None, None)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return None
        options: ssl.CertificateOptions | None = None
        line: str | None = None
        try:
            options = loadServerOptions(self.path)
        except KeyMismatch as e:
            line = f"warning: {self.name}: {e}; STARTTLS disabled"
        except NotRegularFile:
            line = notRegularWarning(os.path.basename(self.path))
        except (OSError, ValueError) as e:
            line = f"warning: unable to load {self.path}: {e}"
        return lambda: self._set(stamp, options, line)

    def _set(self, stamp: object, options: ssl.CertificateOptions | None,
             line: str | None) -> None:
        self._stamp, self._options = stamp, options
        if line is not None:
            self.log.warn("{line}", line=line)


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
