"""
Finding a domain's MTA-STS policy (RFC 8461 3, 5.1; docs/behaviour/tls-policy.md 19.2): the TXT
record C{_mta-sts.DOMAIN} on the daemon's C{--dns} resolver (twisted.names), the policy file
over HTTPS with treq, and the cache of L{qmtwist.remote.stscache}.

The HTTPS host C{mta-sts.DOMAIN} is looked up on the same resolver (never the system's
getaddrinfo: L{_Endpoints}), its certificate must verify against the trust anchors
(L{qmtwist.remote.certcheck}) and name it, redirects are not followed, the body is capped at
64 KiB, and the whole fetch must end within L{FETCH_TIMEOUT} seconds.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

from attrs import frozen
from treq import collect
from treq.client import HTTPClient
from twisted.internet import defer, endpoints
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.names import dns, error
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from qmtwist.errors import MailError
from qmtwist.remote import mtasts
from qmtwist.remote.certcheck import AnchorCache
from qmtwist.remote.mx import MXResolver
from qmtwist.remote.reports import printable
from qmtwist.remote.stscache import PolicyCache

FETCH_TIMEOUT = 60.0

_log = Logger(namespace="qmail-remote")


@frozen
class Found:
    """
    A domain's policy in force.

    @ivar domain: the policy domain (the recipient domain, lower case).
    @ivar policy: the policy. @ivar id: the TXT id it was fetched for.
    @ivar cached: it came from the cache (the TXT id was unchanged, or the fetch failed).
    """

    domain: bytes
    policy: mtasts.Policy
    id: bytes
    cached: bool


class _TooLarge(Exception):
    pass


@implementer(IStreamClientEndpoint)
class _Endpoint:
    """TLS to C{mta-sts.DOMAIN}, its addresses from the C{--dns} resolver."""

    def __init__(self, owner: PolicyFinder, host: bytes, trustRoot: Any) -> None:
        self.owner, self.host, self.trustRoot = owner, host, trustRoot

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        return defer.ensureDeferred(self._connect(factory))

    async def _connect(self, factory: Any) -> Any:
        from twisted.internet import ssl

        hosts = await self.owner.mx.relayHosts(self.host)
        options = ssl.optionsForClientTLS(self.host.decode("ascii"), trustRoot=self.trustRoot)
        reactor, port = self.owner.reactor, self.owner.port
        last: Exception | None = None
        for ip in hosts[0].addresses:
            tcp: Any = (endpoints.TCP6ClientEndpoint(reactor, ip, port, timeout=30) if ":" in ip
                        else endpoints.TCP4ClientEndpoint(reactor, ip, port, timeout=30))
            try:
                return await endpoints.wrapClientTLS(options, tcp).connect(factory)
            except Exception as e:  # the next address
                last = e
        raise last if last is not None else ConnectionError("no address")


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(self, owner: PolicyFinder, trustRoot: Any) -> None:
        self.owner, self.trustRoot = owner, trustRoot

    def endpointForURI(self, uri: Any) -> _Endpoint:
        return _Endpoint(self.owner, uri.host, self.trustRoot)


class PolicyFinder:
    """
    The MTA-STS policy of a recipient domain, or none.

    @param resolver: the daemon's C{IResolver} (C{--dns}).
    @param mx: an L{MXResolver} on it (for the address of C{mta-sts.DOMAIN}).
    @param cache: the persisted L{PolicyCache}.
    @param anchors: the trust anchors for the HTTPS certificate.
    @param port: the HTTPS port (443; tests use another).
    """

    def __init__(self, reactor: Any, resolver: Any, mx: MXResolver, cache: PolicyCache,
                 anchors: AnchorCache, *, port: int = 443,
                 dnsTimeout: Sequence[float] = (1, 3, 11),
                 fetchTimeout: float = FETCH_TIMEOUT) -> None:
        self.reactor = reactor
        self.resolver = resolver
        self.mx = mx
        self.cache = cache
        self.anchors = anchors
        self.port = port
        self.dnsTimeout = tuple(dnsTimeout)
        self.fetchTimeout = fetchTimeout

    async def txtId(self, domain: bytes) -> tuple[str, bytes | None]:
        """C{("ok", id)}, C{("none", None)} (no valid record) or C{("soft", None)}."""
        try:
            answers, _auth, _add = await self.resolver.lookupText(
                b"_mta-sts." + domain, self.dnsTimeout)
        except (error.DNSNameError, error.DomainError):
            return "none", None
        except Exception:
            return "soft", None
        records = [rr.payload.data for rr in answers if rr.type == dns.TXT]
        found = mtasts.parseTXT(records)
        return ("ok", found) if found is not None else ("none", None)

    async def policyFor(self, domain: bytes) -> Found | None:
        """
        RFC 8461 5.1: a cached, unexpired policy stands while the TXT id is unchanged (or the
        record is gone, or the lookup fails); a new id fetches the policy again, and a failed
        fetch keeps the cached one. Without either there is no policy (delivery as before).
        """
        domain = domain.lower().rstrip(b".")
        if not mtasts.plainDomain(domain):
            return None
        kind, id = await self.txtId(domain)
        cached = await self.cache.get(domain)
        if id is None:
            if kind == "soft" and cached is None:
                _log.info("MTA-STS: TXT lookup for _mta-sts.{domain} failed temporarily; no "
                          "cached policy", domain=printable(domain))
            return Found(domain, cached.policy, cached.id, True) if cached else None
        if cached is not None and cached.id == id:
            return Found(domain, cached.policy, id, True)
        try:
            policy = await self.fetch(domain)
        except Exception as e:
            why = " ".join((str(e) or type(e).__name__).split())[:300]
            then = "keeping the cached policy" if cached else "no policy applies"
            _log.warn("MTA-STS: unable to fetch the policy of {domain}: {why}; {then}",
                      domain=printable(domain), why=why, then=then)
            return Found(domain, cached.policy, cached.id, True) if cached else None
        await self.cache.put(domain, id, policy)
        _log.info("MTA-STS: policy of {domain} id {id}: mode {mode}, max_age {age}, mx {mx}",
                  domain=printable(domain), id=id.decode("ascii"), mode=policy.mode,
                  age=policy.maxAge, mx=" ".join(m.decode("ascii") for m in policy.mx))
        return Found(domain, policy, id, False)

    async def fetch(self, domain: bytes) -> mtasts.Policy:
        """
        GET C{https://mta-sts.DOMAIN/.well-known/mta-sts.txt} and parse it.

        @raise Exception: DNS, connection, certificate, HTTP status, size or parse errors.
        """
        d = defer.ensureDeferred(self._fetch(domain))
        d.addTimeout(self.fetchTimeout, self.reactor)
        return await d

    async def _fetch(self, domain: bytes) -> mtasts.Policy:
        anchors = await self.anchors.current()
        trustRoot = anchors.trustRoot()
        pool = HTTPConnectionPool(self.reactor, persistent=False)
        agent = Agent.usingEndpointFactory(self.reactor, _Endpoints(self, trustRoot), pool=pool)
        try:
            response = await HTTPClient(agent).get(
                mtasts.policyURL(domain), allow_redirects=False, unbuffered=True,
                reactor=self.reactor, headers=Headers({b"User-Agent": [b"qmtwist"]}))
        except MailError as e:
            raise ConnectionError(f"mta-sts.{printable(domain)}: {e.text}") from e
        if response.code != 200:
            await collect(response, lambda _data: None)
            raise ValueError(f"HTTP status {response.code}")
        ctype = b"".join(response.headers.getRawHeaders(b"content-type", [b""])[:1])
        if ctype.split(b";")[0].strip().lower() != b"text/plain":
            raise ValueError(f"Content-Type {printable(ctype[:60]) or '(none)'}, not text/plain")
        chunks: list[bytes] = []
        await collect(response, partial(_gather, chunks))
        return mtasts.parsePolicy(b"".join(chunks))


def _gather(chunks: list[bytes], data: bytes) -> None:
    chunks.append(data)
    if sum(len(c) for c in chunks) > mtasts.MAX_POLICY:
        raise _TooLarge("policy larger than 64 KiB")
