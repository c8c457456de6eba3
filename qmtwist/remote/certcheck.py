"""
Trust anchors and certificate checks for the outbound TLS policy (docs/behaviour/tls-policy.md
19.4): MTA-STS's HTTPS fetch and its SMTP peers are verified against C{control/tlsca} when it
exists, else against the system's CA bundle (OpenSSL's default file, which C{SSL_CERT_FILE}
overrides, as for every OpenSSL program).

The anchors are read on a pool thread (L{AnchorCache}), and the checks of a peer's chain run
there too (L{verifyChain}): the reactor thread only copies the chain out of the TLS connection
(L{sessionOf}). Everything a peer certificate says is hostile: only its subject, cleaned, goes
into the log.
"""

from __future__ import annotations

import os
import re
import ssl as stdssl
import warnings
from functools import partial
from typing import Any, Callable

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname
from twisted.internet import defer, ssl
from twisted.internet.interfaces import ISSLTransport

from qmtwist.control import readControlFile
from qmtwist.remote.reports import printable

_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@frozen
class Anchors:
    """
    @ivar certs: the trusted CA certificates, DER.
    @ivar source: C{control/tlsca} or the system bundle's path, for messages.
    """

    certs: tuple[bytes, ...]
    source: str

    def store(self) -> crypto.X509Store:
        """An OpenSSL store holding the anchors."""
        store = crypto.X509Store()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for der in self.certs:
                store.add_cert(crypto.X509.from_cryptography(x509.load_der_x509_certificate(der)))
        return store

    def trustRoot(self) -> Any:
        """The anchors as a Twisted C{IOpenSSLTrustRoot} (for the HTTPS policy fetch)."""
        return ssl.trustRootFromCertificates(
            [ssl.Certificate.load(der, crypto.FILETYPE_ASN1) for der in self.certs])


def systemBundle() -> str:
    """The system CA file OpenSSL reads by default (C{SSL_CERT_FILE} when set)."""
    paths = stdssl.get_default_verify_paths()
    return os.environ.get(paths.openssl_cafile_env) or paths.openssl_cafile


def anchorsPath(controlDir: str) -> str:
    """C{control/tlsca} when it exists, else the system bundle (blocking: a stat)."""
    own = os.path.join(controlDir, "tlsca")
    return own if os.path.lexists(own) else systemBundle()


def loadAnchors(path: str, name: str) -> Anchors:
    """
    Read the PEM certificates of C{path} (blocking).

    @raise OSError: missing or unreadable. @raise ValueError: no certificate in it.
    """
    data = readControlFile(path)
    if data is None:
        raise FileNotFoundError(f"{name}: no such file")
    certs = []
    with warnings.catch_warnings():  # old system CAs with negative serial numbers
        warnings.simplefilter("ignore")
        for pem in _CERT.findall(data):
            try:
                certs.append(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER))
            except ValueError:
                continue
    if not certs:
        raise ValueError(f"{name}: no certificate")
    return Anchors(tuple(certs), name)


class AnchorCache:
    """
    The current anchors, reread (on a thread) when the file's mtime, size or inode changes.

    @param controlDir: C{HOME/control}.
    """

    def __init__(self, controlDir: str,
                 runInThread: Callable[[Callable[[], Any]], Any]) -> None:
        self.controlDir = controlDir
        self.runInThread = runInThread
        self._stamp: object = None
        self._anchors: Anchors | None = None
        self._lock = defer.DeferredLock()

    def _check(self, stamp: object, anchors: Anchors | None) -> tuple[object, Anchors]:
        path = anchorsPath(self.controlDir)
        st = os.stat(path)
        now = (path, st.st_mtime_ns, st.st_size, st.st_ino)
        if now == stamp and anchors is not None:
            return stamp, anchors
        name = "control/tlsca" if path == os.path.join(self.controlDir, "tlsca") else path
        return now, loadAnchors(path, name)

    async def current(self) -> Anchors:
        """
        The anchors. @raise OSError, ValueError: they cannot be read (the caller defers what
        needs them).
        """
        async with self._lock:
            self._stamp, self._anchors = await self.runInThread(
                partial(self._check, self._stamp, self._anchors))
            assert self._anchors is not None
            return self._anchors


@frozen
class Session:
    """
    What a TLS connection negotiated.

    @ivar protocol: e.g. C{TLSv1.3}. @ivar cipher: e.g. C{TLS_AES_256_GCM_SHA384}.
    @ivar chain: the peer's certificates, leaf first, DER.
    """

    protocol: str
    cipher: str
    chain: tuple[bytes, ...]

    @property
    def subject(self) -> str:
        """The leaf's subject (RFC 4514), printable, at most 200 characters."""
        if not self.chain:
            return "(none)"
        try:
            text = x509.load_der_x509_certificate(self.chain[0]).subject.rfc4514_string()
        except ValueError:
            return "(unparsable)"
        return printable(text.encode("utf-8", "replace"))[:200]


def sessionOf(transport: Any) -> Session | None:
    """The L{Session} of a transport after C{startTLS}, or L{None} when it is not TLS."""
    if not ISSLTransport.providedBy(transport):
        return None
    handle = getattr(getattr(transport, "protocol", None), "getHandle", None)
    if handle is None:
        return None
    conn = handle()
    chain = conn.get_peer_cert_chain() or []
    if not chain:
        leaf = conn.get_peer_certificate()
        chain = [leaf] if leaf is not None else []
    ders = tuple(crypto.dump_certificate(crypto.FILETYPE_ASN1, c) for c in chain)
    return Session(str(conn.get_protocol_version_name()), str(conn.get_cipher_name()), ders)


def verifyChain(store: crypto.X509Store, chain: tuple[bytes, ...], hostname: bytes,
                notTrusted: str = "certificate not trusted") -> str | None:
    """
    Check that C{chain} (leaf first) leads to an anchor of C{store} and that the leaf names
    C{hostname} (blocking: OpenSSL may look in directories).

    @param notTrusted: the reason given when the chain does not lead to an anchor.
    @return: L{None} when verified, else why not (for a report).
    """
    if not chain:
        return "no certificate"
    try:
        certs = [x509.load_der_x509_certificate(d) for d in chain]
    except ValueError:
        return "unparsable certificate"
    leaf = crypto.X509.from_cryptography(certs[0])
    rest = [crypto.X509.from_cryptography(c) for c in certs[1:]]
    try:
        crypto.X509StoreContext(store, leaf, chain=rest).verify_certificate()
    except crypto.X509StoreContextError as e:
        return f"{notTrusted} ({e})"
    try:
        verify_certificate_hostname(certs[0], hostname.decode("ascii", "replace"))
    except VerificationError:
        return f"certificate does not match {printable(hostname)}"
    return None
