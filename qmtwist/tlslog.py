"""
The one C{tls} log line every listener writes once a TLS handshake is done (STARTTLS, STLS, or
an C{ssl:} endpoint; docs/behaviour/submission.md 16.5, docs/behaviour/pop3.md 10.1): the SMTP
session (L{qmtwist.smtp.hooks}) and the POP3 server (L{qmtwist.pop3.server}) both call
L{logTLS}, so the line looks the same whichever protocol wrote it:

  C{NAME: tls IP PROTOCOL CIPHER} and C{ peer SUBJECT} when the client presented a certificate
  that OpenSSL verified; C{NAME} is C{smtp}, C{submission} or C{pop3}.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.logger import Logger

_MAXFIELD = 200


def printable(text: bytes, limit: int = _MAXFIELD) -> str:
    """C{text} for a log line: bytes outside printable ASCII become C{?}; cut at C{limit}."""
    cut = text[:limit]
    out = "".join(chr(c) if 32 <= c < 127 else "?" for c in cut)
    return out + ("..." if len(text) > limit else "")


def tlsDescription(transport: Any) -> tuple[str, str, str | None]:
    """
    The protocol, cipher and verified peer subject of a TLS transport (one that has
    C{getHandle()} giving a pyOpenSSL C{Connection}); C{"unknown"} for what it does not say.
    """
    try:
        conn = transport.getHandle()
        protocol = conn.get_protocol_version_name() or "unknown"
        cipher = conn.get_cipher_name() or "unknown"
    except Exception:
        return "unknown", "unknown", None
    subject = None
    try:
        cert = conn.get_peer_certificate(as_cryptography=True)
        # a certificate counts only when OpenSSL verified its chain
        if cert is not None and conn.get_verified_chain() is not None:
            subject = cert.subject.rfc4514_string()
    except Exception:
        subject = None
    return protocol, cipher, subject


def logTLS(log: Logger, name: str, env: Mapping[str, bytes], transport: Any) -> None:
    """C{NAME: tls IP PROTOCOL CIPHER[ peer SUBJECT]} once the handshake is done."""
    protocol, cipher, subject = tlsDescription(transport)
    peer = f" peer {printable(subject.encode('utf-8', 'replace'))}" if subject else ""
    log.info("{name}: tls {ip} {protocol} {cipher}{peer}", name=name,
             ip=printable(env.get("TCPREMOTEIP", b"unknown")), protocol=protocol,
             cipher=cipher, peer=peer)
