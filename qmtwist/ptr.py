"""
The client's host name for C{TCPREMOTEHOST}: a PTR lookup that counts only when the name
resolves back to the client's address (tcpserver -p; docs/behaviour/tcpserver.md 8.4).

The listeners ask this only when their rules contain an C{=host} rule. The resolver is passed
in: the daemon builds one from C{--dns} in L{qmtwist.plugin} and hands the same one to the
listeners and to remote delivery, so a test DNS server (or a site's own) answers both.

Use::

    lookup = makeHostLookup(reactor, resolver)
    lookup("10.0.0.7").addCallback(print)  # "mx.example.com" or None
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IResolver

#: A PTR lookup: the client's address in, the confirmed lower-case name (or None) out.
LookupHost = Callable[[str], "Deferred[str | None]"]

#: The seconds each query may take (one try).
TIMEOUT = (5,)

_HOSTCHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


def reverseName(ip: str) -> str | None:
    """The PTR query name of an address (C{7.0.0.10.in-addr.arpa}, C{...ip6.arpa}), or None."""
    if ":" in ip:
        try:
            return ipaddress.ip_address(ip).reverse_pointer
        except ValueError:
            return None
    parts = ip.split(".")
    if len(parts) != 4:
        return None
    return ".".join(reversed(parts)) + ".in-addr.arpa"


def _plainName(result: Any) -> str | None:
    """The first PTR target of an answer, lower-cased without its dot, if it is a host name."""
    for rr in result[0]:
        target = getattr(rr.payload, "name", None)
        if target is not None:
            host = str(target).lower().rstrip(".")
            if not host or not set(host) <= _HOSTCHARS:
                return None
            return host
    return None


def _pointsAt(result: Any, ip: str) -> bool:
    """Whether an A or AAAA answer holds the address C{ip}."""
    want = ipaddress.ip_address(ip)
    for rr in result[0]:
        payload = rr.payload
        try:
            if hasattr(payload, "dottedQuad"):
                address = payload.dottedQuad()
            else:
                address = socket.inet_ntop(socket.AF_INET6, payload.address)
            if ipaddress.ip_address(address) == want:
                return True
        except (AttributeError, ValueError, OSError):
            continue
    return False


class HostLookup:
    """
    L{LookupHost} on an C{IResolver}: PTR, then A (IPv4 client) or AAAA (IPv6 client) of the
    name found; L{None} on any failure or mismatch (docs/behaviour/tcpserver.md 8.4).

    @param resolver: an C{IResolver}, or a callable that makes one when first needed.
    """

    def __init__(self, resolver: IResolver | Callable[[], IResolver]) -> None:
        self._resolver: IResolver | None = None
        self._make: Callable[[], IResolver] | None = None
        if hasattr(resolver, "lookupPointer"):
            self._resolver = resolver  # type: ignore[assignment]
        else:
            self._make = resolver  # type: ignore[assignment]

    def resolver(self) -> IResolver:
        """The resolver, made on first use when a maker was given."""
        if self._resolver is None:
            assert self._make is not None
            self._resolver = self._make()
        return self._resolver

    def __call__(self, ip: str) -> Deferred[str | None]:
        name = reverseName(ip)
        if name is None:
            return succeed(None)
        resolver = self.resolver()
        d: Deferred[Any] = resolver.lookupPointer(name, timeout=TIMEOUT)
        d.addCallback(_plainName)
        d.addCallback(self._confirm, resolver, ip)
        return d.addErrback(lambda f: None)

    @staticmethod
    def _confirm(host: str | None, resolver: IResolver, ip: str) -> Deferred[str | None] | None:
        # anybody can publish any PTR name for their own addresses: it must resolve back
        if host is None:
            return None
        forward = resolver.lookupIPV6Address if ":" in ip else resolver.lookupAddress
        d: Deferred[Any] = forward(host, timeout=TIMEOUT)
        return d.addCallback(lambda result: host if _pointsAt(result, ip) else None)


def makeHostLookup(reactor: Any,
                   resolver: IResolver | Callable[[], IResolver] | None = None) -> LookupHost:
    """
    The PTR lookup of a listener.

    @param reactor: for the default resolver.
    @param resolver: the daemon's resolver (L{qmtwist.plugin} builds it from C{--dns}), or a
        callable that makes it at the first lookup; by default a
        C{twisted.names.client.Resolver} on C{/etc/resolv.conf}, made at the first lookup (as
        the daemon's without C{--dns}).
    """
    if resolver is not None:
        return HostLookup(resolver)

    def systemResolver() -> IResolver:
        from twisted.names import client

        return client.Resolver(resolv="/etc/resolv.conf", reactor=reactor)

    return HostLookup(systemResolver)
