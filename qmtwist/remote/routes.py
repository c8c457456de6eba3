"""
Artificial routes: C{control/qmtproutes} and C{control/smtproutes} (docs/behaviour/remote.md 11.1, qmtp.md
9.3), and the
C{control/tlsverify} match (docs/behaviour/control.md 2.3, remote.md 11.5). Pure functions over a L{Control}
snapshot.

qmail-remote looks up the recipient domain, then each suffix starting at a dot (longest first),
then the empty key; the first key found decides. qmtwist consults qmtproutes first (an empty
value there means "not by QMTP") and adds QMTP as a protocol.
"""

from __future__ import annotations

import ipaddress

from attrs import frozen

from qmtwist.control import Control

SMTP = "smtp"
QMTP = "qmtp"
DEFAULT_PORTS = {SMTP: 25, QMTP: 209}


@frozen
class Route:
    """
    Where a domain's mail goes.

    @ivar protocol: L{SMTP} or L{QMTP}.
    @ivar relay: the relay host name or IP address (brackets removed), or L{None} for "by MX".
    @ivar port: TCP port.
    """

    protocol: str
    relay: bytes | None
    port: int

    @property
    def isLiteral(self) -> bool:
        """Whether the relay is an IP address (no DNS lookup)."""
        return self.relay is not None and isAddress(self.relay)


def isAddress(host: bytes) -> bool:
    """Whether C{host} is a literal IPv4 or IPv6 address (without brackets)."""
    try:
        ipaddress.ip_address(host.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def domainLiteral(domain: bytes) -> bytes | None:
    """The address of a C{[a.b.c.d]} or dotted-quad recipient domain, else L{None}."""
    inner = domain[1:-1] if domain.startswith(b"[") and domain.endswith(b"]") else domain
    if inner.lower().startswith(b"ipv6:"):
        inner = inner[5:]
    return inner if isAddress(inner) else None


def lookupKeys(domain: bytes) -> list[bytes]:
    """C{D}, then each suffix of D starting at a dot (longest first), then the empty key."""
    domain = domain.lower()
    keys = [domain]
    for i, ch in enumerate(domain):
        if ch == ord("."):
            keys.append(domain[i:])
    keys.append(b"")
    return keys


def findEntry(table: dict[bytes, bytes], domain: bytes) -> bytes | None:
    """The value of the first key of L{lookupKeys} present in C{table}, else L{None}."""
    for key in lookupKeys(domain):
        if key in table:
            return table[key]
    return None


def parseRelay(value: bytes, protocol: str) -> Route:
    """
    C{relay}, C{relay:port}, C{[ip]}, C{[ip]:port}; an empty value means "by MX".

    A port that is not a number keeps the default, as qmail's C{scan_ulong} reads no digits.
    """
    value = value.strip()
    port = DEFAULT_PORTS[protocol]
    if not value:
        return Route(protocol, None, port)
    if value.startswith(b"["):
        end = value.find(b"]")
        host, rest = (value[1:end], value[end + 1 :]) if end > 0 else (value[1:], b"")
        if host.lower().startswith(b"ipv6:"):
            host = host[5:]
        portText = rest[1:] if rest.startswith(b":") else b""
    else:
        host, _, portText = value.partition(b":")
    digits = b""
    for ch in portText:
        if 48 <= ch <= 57:
            digits += bytes([ch])
        else:
            break
    if digits and 0 < int(digits) < 65536:
        port = int(digits)
    return Route(protocol, host.rstrip(b".") or None, port)


def selectRoute(control: Control, domain: bytes) -> Route:
    """
    The route for recipient C{domain} (docs/behaviour/remote.md 11.1).

    @return: a L{Route}; C{relay is None} means deliver by SMTP to the domain's MX.
    """
    qmtp = findEntry(control.qmtproutes, domain)
    if qmtp is not None:
        route = parseRelay(qmtp, QMTP)
        if route.relay is not None:
            return route
    smtp = findEntry(control.smtproutes, domain)
    if smtp is not None:
        return parseRelay(smtp, SMTP)
    return Route(SMTP, None, DEFAULT_PORTS[SMTP])


@frozen
class TLSPolicy:
    """
    @ivar required: the certificate must verify (C{control/tlsverify} matched).
    @ivar cafile: absolute path of the CA file to trust, or L{None} for the system store.
    """

    required: bool
    cafile: str | None = None


def tlsPolicy(control: Control, domain: bytes, controlDir: str) -> TLSPolicy:
    """Match C{domain} against C{control/tlsverify} lines C{DOMAIN} or C{.SUFFIX}, C{:CAFILE}."""
    import os

    domain = domain.lower()
    for entry in control.tlsverify:
        pattern, _, cafile = entry.partition(b":")
        pattern = pattern.strip().lower()
        if not pattern:
            continue
        hit = domain.endswith(pattern) if pattern.startswith(b".") else domain == pattern
        if hit:
            path = None
            if cafile.strip():
                path = os.path.join(controlDir, os.fsdecode(cafile.strip()))
            return TLSPolicy(True, path)
    return TLSPolicy(False)
