"""
DNS for remote delivery through an injected twisted.names resolver (docs/behaviour/remote.md 11.2).

Replaces qmail's dns.c as used by qmail-remote: CNAME canonicalisation of recipient and sender
hosts (qmail 1.01, FAQ 2.5), MX lookup sorted by preference with equal preferences shuffled,
A/AAAA fallback, IPv4 before IPv6 per host. Results are L{MailHost} records; problems are
L{TemporaryFailure} / L{PermanentFailure} carrying qmail's text.

Everything from DNS is hostile input: names stay C{bytes}, are only compared, sent in SMTP
commands after checking, or used as TLS reference identities; they never reach a shell or a path.
"""

from __future__ import annotations

import random
import socket
from typing import Any, Sequence

from attrs import frozen
from twisted.internet import defer
from twisted.internet.interfaces import IResolver
from twisted.names import client, dns, error
from twisted.python.failure import Failure

from qmtwist.errors import PermanentFailure, TemporaryFailure
from qmtwist.remote.reports import printable

#: docs/behaviour/remote.md 11.2: a server silent for 15 s is a temporary failure.
DNS_TIMEOUT: tuple[float, ...] = (1, 3, 11)

CNAME_SOFT = "CNAME lookup failed temporarily. (#4.4.3)"
DNS_SOFT = "Sorry, I couldn't find any host by that name. (#4.1.2)"
NO_HOST = "Sorry, I couldn't find any host named {name}. (#5.1.2)"
NO_ADDRESS = "Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)"

_MAX_CNAME = 10

# Failures qmail's dns.c calls DNS_SOFT: no answer, SERVFAIL, a refused connection.
_SOFT = (
    defer.TimeoutError,
    error.DNSServerError,
    ConnectionRefusedError,
)
# NXDOMAIN, REFUSED, FORMERR, NOTIMP and unknown rcodes are DNS_HARD (glibc's NO_RECOVERY).
_HARD = (error.DNSNameError, error.DNSQueryRefusedError, error.DNSFormatError,
         error.DNSNotImplementedError, error.DNSUnknownError, error.DomainError)


def makeResolver(reactor: Any, servers: list[tuple[str, int]] | None) -> IResolver:
    """
    A C{twisted.names.client.Resolver} for remote delivery (no cache, so a fixed DNS answers
    at once).

    @param servers: C{(host, port)} from C{--dns HOST:PORT}; L{None} or empty reads resolv.conf.
    """
    if servers:
        return client.Resolver(servers=list(servers), reactor=reactor)
    return client.Resolver(resolv="/etc/resolv.conf", reactor=reactor)


@frozen
class MailHost:
    """
    One host to try.

    @ivar name: the host name (the TLS reference identity), or the literal address.
    @ivar preference: MX preference (0 for an A/AAAA fallback or a route).
    @ivar addresses: IP addresses as text, IPv4 first.
    """

    name: bytes
    preference: int
    addresses: tuple[str, ...]


def _kind(f: Any) -> str:
    """'soft', 'hard' for a lookup failure; anything else is re-raised by the caller."""
    if f.check(*_SOFT):
        return "soft"
    if f.check(*_HARD):
        return "hard"
    return "other"


def _sameName(a: bytes, b: bytes) -> bool:
    return a.lower().rstrip(b".") == b.lower().rstrip(b".")


class MXResolver:
    """
    The DNS steps of qmail-remote on top of an L{IResolver}.

    @ivar timeout: the retry timeouts passed to every lookup.
    """

    def __init__(
        self,
        resolver: IResolver,
        timeout: Sequence[float] = DNS_TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        self.resolver = resolver
        self.timeout = tuple(timeout)
        self.rng = rng or random.Random()

    async def _query(self, method: str, name: bytes) -> tuple[str, list[Any]]:
        """Run one lookup: C{("ok", answers)}, C{("soft", [])} or C{("hard", [])}."""
        lookup = getattr(self.resolver, method)
        try:
            answers, _auth, _add = await lookup(name, self.timeout)
        except Exception:
            f = Failure()
            kind = _kind(f)
            if kind == "other":
                f.raiseException()
            return kind, []
        return "ok", list(answers)

    async def canonical(self, name: bytes) -> bytes:
        """
        Follow CNAMEs of C{name} (qmail's dns_cname).

        @return: the canonical name, or C{name} unchanged when it is no alias, does not exist,
            or the chain loops.
        @raise TemporaryFailure: C{CNAME lookup failed temporarily. (#4.4.3)}.
        """
        current = name
        for _ in range(_MAX_CNAME):
            kind, answers = await self._query("lookupCanonicalName", current)
            if kind == "soft":
                raise TemporaryFailure(CNAME_SOFT)
            if kind == "hard":
                return current
            target = None
            for rr in answers:
                if rr.type == dns.CNAME and _sameName(rr.name.name, current):
                    target = rr.payload.name.name
                    break
            if target is None or _sameName(target, current) or not safeName(target):
                return current
            current = target.rstrip(b".")
        return name

    async def addresses(self, host: bytes) -> tuple[str, tuple[str, ...]]:
        """
        A then AAAA records of C{host} (CNAMEs followed by the server's answer).

        @return: C{(kind, addresses)}: kind C{"ok"}, C{"soft"} or C{"hard"} (NXDOMAIN etc.);
            C{"ok"} with no addresses means the name exists without address records.
        """
        kind4, a = await self._query("lookupAddress", host)
        if kind4 == "hard":
            return "hard", ()
        kind6, aaaa = await self._query("lookupIPV6Address", host)
        found = tuple(
            [rr.payload.dottedQuad() for rr in a if rr.type == dns.A]
            + [_ipv6(rr.payload.address) for rr in aaaa if rr.type == dns.AAAA]
        )
        if found:
            return "ok", found
        if "soft" in (kind4, kind6):
            return "soft", ()
        return "ok", ()

    async def relayHosts(self, relay: bytes) -> list[MailHost]:
        """
        A route's relay: by A/AAAA only, never MX (docs/behaviour/remote.md 11.1).

        @raise TemporaryFailure: temporary DNS failure.
        @raise PermanentFailure: NXDOMAIN, or no address.
        """
        return await self._byAddress(relay)

    async def _byAddress(self, name: bytes) -> list[MailHost]:
        """C{name} itself as the one host, by its A/AAAA records (no MX, or a relay)."""
        kind, found = await self.addresses(name)
        if kind == "soft":
            raise TemporaryFailure(DNS_SOFT)
        if kind == "hard":
            raise PermanentFailure(NO_HOST.format(name=printable(name)))
        if not found:
            raise PermanentFailure(NO_ADDRESS)
        return [MailHost(name, 0, found)]

    async def mailHosts(self, domain: bytes) -> list[MailHost]:
        """
        The hosts that receive mail for C{domain}, best first (docs/behaviour/remote.md 11.2).

        @raise TemporaryFailure: C{#4.1.2} on a temporary failure.
        @raise PermanentFailure: C{#5.1.2} (no such domain) or C{#5.4.4} (no address).
        """
        kind, answers = await self._query("lookupMailExchange", domain)
        if kind == "soft":
            raise TemporaryFailure(DNS_SOFT)
        mxs = [rr.payload for rr in answers if rr.type == dns.MX] if kind == "ok" else []
        if not mxs:
            return await self._byAddress(domain)
        byPref: dict[int, list[bytes]] = {}
        for mx in mxs:
            byPref.setdefault(mx.preference, []).append(mx.name.name.rstrip(b"."))
        hosts: list[MailHost] = []
        soft = False
        for pref in sorted(byPref):
            names = byPref[pref]
            self.rng.shuffle(names)
            for name in names:
                if not name:
                    continue  # null MX "."
                akind, found = await self.addresses(name)
                soft = soft or akind == "soft"
                if found:
                    hosts.append(MailHost(name, pref, found))
        if not hosts:
            if soft:
                raise TemporaryFailure(DNS_SOFT)
            raise PermanentFailure(NO_ADDRESS)
        return hosts


def safeName(name: bytes) -> bool:
    """Whether a DNS-supplied name may be put into an SMTP command: LDH labels, dots, C{_}."""
    name = name.rstrip(b".")
    return 0 < len(name) <= 253 and all(
        c == 45 or c == 46 or c == 95 or 48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122
        for c in name
    )


def _ipv6(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, packed)
