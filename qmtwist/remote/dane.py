"""
DANE for SMTP (RFC 7672; docs/behaviour/tls-policy.md 19.3): the TLSA records of
C{_25._tcp.MXHOST} and their match against the peer's certificate chain after STARTTLS.

twisted.names has no TLSA type and does not report the AD bit, so the lookup is dnspython's,
sent to the same servers as every other lookup (the C{--dns} servers, else resolv.conf's, taken
from the daemon's twisted.names resolver), on a pool thread. Records count only when the
answer has the AD bit: the resolver validated them with DNSSEC (RFC 7672 2.2). Usable are
DANE-TA(2) and DANE-EE(3) with selector 0 (certificate) or 1 (public key) and matching type 0
(exact), 1 (SHA-256) or 2 (SHA-512); PKIX-TA(0) and PKIX-EE(1) are not used for SMTP (RFC 7672
3.1.3).
"""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any, Callable, Sequence

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from OpenSSL import crypto

from qmtwist.remote.certcheck import verifyChain


DANE_TA = 2
DANE_EE = 3


@frozen
class TLSA:
    usage: int
    selector: int
    matching: int
    data: bytes

    @property
    def usable(self) -> bool:
        """DANE-TA or DANE-EE with a known selector and matching type (RFC 7672 3.1)."""
        return (self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1)
                and self.matching in (0, 1, 2))

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.matching}"


@frozen
class Lookup:
    """
    @ivar kind: C{"secure"} (AD bit set), C{"insecure"} (no AD), C{"none"} (no records,
        NXDOMAIN) or C{"soft"} (SERVFAIL, timeout: the lookup failed).
    @ivar records: the TLSA records of a C{secure} or C{insecure} answer.
    @ivar why: for C{soft}, what failed.
    """

    kind: str
    records: tuple[TLSA, ...] = ()
    why: str = ""

    @property
    def usable(self) -> tuple[TLSA, ...]:
        """The records DANE applies with: usable ones of a secure answer."""
        return tuple(r for r in self.records if r.usable) if self.kind == "secure" else ()


def tlsaName(host: bytes, port: int = 25) -> bytes:
    """C{_25._tcp.HOST} (RFC 7672 2.2.3; the MX host name, not a CNAME target)."""
    return b"_%d._tcp.%s" % (port, host.rstrip(b"."))


def servers(resolver: Any) -> list[tuple[str, int]]:
    """The servers the daemon's twisted.names resolver asks (C{--dns}, else resolv.conf)."""
    found = list(getattr(resolver, "servers", None) or []) + \
        list(getattr(resolver, "dynServers", None) or [])
    return [(str(h), int(p)) for h, p in found] or [("127.0.0.1", 53)]


def query(name: bytes, where: Sequence[tuple[str, int]], timeouts: Sequence[float]) -> Lookup:
    """
    Ask for the TLSA records of C{name} (blocking: run on a thread). Each timeout is one
    round over the servers, as twisted.names does.
    """
    import dns.exception
    import dns.flags
    import dns.message
    import dns.query
    import dns.rcode
    import dns.rdatatype

    why = "no answer"
    for timeout in timeouts:
        for host, port in where:
            q = dns.message.make_query(name.decode("ascii"), dns.rdatatype.TLSA)
            q.flags |= dns.flags.AD  # RFC 6840 5.7: ask for the AD bit
            try:
                r, _tcp = dns.query.udp_with_fallback(q, host, timeout=timeout, port=port)
            except (dns.exception.DNSException, OSError) as e:
                why = str(e) or type(e).__name__
                continue
            rcode = r.rcode()
            if rcode == dns.rcode.NXDOMAIN:
                return Lookup("none")
            if rcode != dns.rcode.NOERROR:
                why = dns.rcode.to_text(rcode)
                continue
            records = tuple(
                TLSA(rd.usage, rd.selector, rd.mtype, bytes(rd.cert))
                for rrset in r.answer if rrset.rdtype == dns.rdatatype.TLSA for rd in rrset)
            if not records:
                return Lookup("none")
            return Lookup("secure" if r.flags & dns.flags.AD else "insecure", records)
    return Lookup("soft", (), why)


class TLSAResolver:
    """
    TLSA lookups for remote delivery.

    @param resolver: the daemon's twisted.names resolver (only its server list is used).
    @param runInThread: runs the dnspython query off the reactor thread.
    """

    def __init__(self, resolver: Any, runInThread: Callable[[Callable[[], Any]], Any],
                 timeouts: Sequence[float] = (1, 3, 11)) -> None:
        self.resolver = resolver
        self.runInThread = runInThread
        self.timeouts = tuple(timeouts)

    async def lookup(self, host: bytes) -> Lookup:
        """The TLSA answer for MX host C{host}; L{Lookup.kind} C{none} for a literal name."""
        if not _hostName(host):
            return Lookup("none")
        result: Lookup = await self.runInThread(
            partial(query, tlsaName(host), servers(self.resolver), self.timeouts))
        return result


def _hostName(host: bytes) -> bool:
    labels = host.rstrip(b".").split(b".")
    return len(labels) >= 2 and not host.replace(b".", b"").isdigit() and all(
        labels) and all(c == 45 or c == 95 or 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122
                        for label in labels for c in label)


def _selected(der: bytes, selector: int) -> bytes:
    cert = x509.load_der_x509_certificate(der)
    if selector == 0:
        return der
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _digest(data: bytes, matching: int) -> bytes:
    if matching == 1:
        return hashlib.sha256(data).digest()
    if matching == 2:
        return hashlib.sha512(data).digest()
    return data


def matches(record: TLSA, der: bytes) -> bool:
    """Whether C{record} names the certificate C{der} (by its selector and matching type)."""
    try:
        return _digest(_selected(der, record.selector), record.matching) == record.data
    except ValueError:
        return False


def check(records: Sequence[TLSA], chain: Sequence[bytes], host: bytes) -> tuple[TLSA | None, str]:
    """
    Match the peer's C{chain} (leaf first, DER) against usable C{records} (RFC 7672 3.1):
    DANE-EE against the leaf alone, with no check of names or dates; DANE-TA against a
    certificate of the chain that must then have issued it, and the leaf must name C{host}.

    @return: C{(record, "")} for the record that matched, else C{(None, why)}.
    """
    if not chain:
        return None, "no certificate"
    for r in records:
        if r.usage == DANE_EE and matches(r, chain[0]):
            return r, ""
    for r in records:
        if r.usage != DANE_TA:
            continue
        for i, der in enumerate(chain):
            if i and matches(r, der):
                why = _issuedBy(chain[: i + 1], host)
                if why is None:
                    return r, ""
                return None, why
    return None, "no TLSA record matched the certificate"


def _issuedBy(chain: Sequence[bytes], host: bytes) -> str | None:
    """The leaf chains to C{chain[-1]} (the trust anchor) and names C{host}; else why not."""
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(x509.load_der_x509_certificate(chain[-1])))
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    return verifyChain(store, tuple(chain), host,
                       notTrusted="certificate does not chain to the DANE-TA certificate")
