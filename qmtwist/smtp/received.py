"""
The Received line qmail-smtpd puts first in the message it queues (docs/behaviour/smtp.md 7.9); pure.
"""

from __future__ import annotations

from typing import Any

from qmtwist.received import date822

_SAFE = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.@%+/=:-[]"
)


#: the C{with} protocol by (SMTPUTF8, TLS)
#: (SMTPUTF8, TLS) -> the "with" word; an authenticated session adds "A" (RFC 3848, RFC 6531)
_PROTOCOLS = {(False, False): b"SMTP", (False, True): b"ESMTPS",
              (True, False): b"UTF8SMTP", (True, True): b"UTF8SMTPS"}


def safe(text: bytes) -> bytes:
    """Every byte other than letters, digits and C{.@%+/=:-[]} becomes C{?} (notqmail 1.08)."""
    return bytes(c if c in _SAFE else 0x3F for c in text)


def smtpReceived(
    remoteHost: bytes | None,
    helo: bytes | None,
    remoteIP: bytes,
    localHost: bytes,
    when: float,
    tls: bool = False,
    remoteInfo: bytes | None = None,
    user: bytes | None = None,
    utf8: bool = False,
) -> bytes:
    """
    C{Received: from RHOST (HELO ARG) (RIP)\\n  by LHOST with SMTP; DATE822\\n}.

    @param remoteHost: C{TCPREMOTEHOST} or L{None} (written C{unknown}).
    @param helo: the last HELO/EHLO argument, or L{None} before any.
    @param localHost: C{TCPLOCALHOST}, else C{TCPLOCALIP}.
    @param tls: the session is encrypted (C{ESMTPS}).
    @param user: the name the client authenticated as: a line C{  (authenticated as NAME)}
        before the C{by} line, and C{ESMTPA}/C{ESMTPSA} (RFC 3848; docs/behaviour/submission.md
        16.3).
    @param utf8: the transaction said SMTPUTF8: C{UTF8SMTP}, C{UTF8SMTPS} under TLS (RFC 6531
        section 3.7.3).
    """
    rhost = remoteHost if remoteHost else b"unknown"
    out = [b"Received: from ", safe(rhost)]
    if helo is not None and helo.lower() != rhost.lower():
        out += [b" (HELO ", safe(helo), b")"]
    out.append(b" (")
    if remoteInfo:
        out += [safe(remoteInfo), b"@"]
    out += [safe(remoteIP), b")\n"]
    if user is not None:
        out += [b"  (authenticated as ", safe(user), b")\n"]
    proto = _PROTOCOLS[utf8, tls]
    if user is not None:
        proto = b"ESMTPA" if proto == b"SMTP" else proto + b"A"
    out += [b"  by ", safe(localHost), b" with ", proto, b"; ", date822(when), b"\n"]
    return b"".join(out)


def sessionReceived(session: Any) -> bytes:
    """The Received line for the message an L{qmtwist.smtp.server.SMTPServer} session is
    receiving now (its environment, last HELO, clock, TLS and authenticated user)."""
    env = session.env
    return smtpReceived(
        env.get("TCPREMOTEHOST"), session.helo, env.get("TCPREMOTEIP", b"unknown"),
        env.get("TCPLOCALHOST") or env.get("TCPLOCALIP") or b"unknown",
        session.clock.seconds(), session.tls, env.get("TCPREMOTEINFO"), session.policy.user,
        utf8=getattr(session, "utf8", False))
