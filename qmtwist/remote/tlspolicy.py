"""
The outbound TLS policy of mail delivered by MX (docs/behaviour/tls-policy.md 19): per MX host,
DANE (L{qmtwist.remote.dane}) first, then MTA-STS (L{qmtwist.remote.stsfetch}), else
opportunistic STARTTLS; C{control/tlsverify} (docs/behaviour/remote.md 11.5), where it matches,
decides instead, as before.

L{OutboundTLS.plan} runs before connecting: it finds the domain's MTA-STS policy and each MX
host's TLSA records, and leaves out the hosts that may not be used (not listed by an enforced
policy, TLSA lookup failed). L{OutboundTLS.setting} gives the SMTP client, per connection, a
L{TLSSetting} whose C{afterHandshake} hook checks the peer's certificate chain (DANE match or
PKIX against the trust anchors, on a pool thread), logs the TLS session and, when the policy
is enforced and the check failed, returns the deferral text: the client then moves on to the
next MX. L{Attempt.annotate} adds the C{TLS:} line to the delivery report.
"""

from __future__ import annotations

import os
from functools import partial
from typing import TYPE_CHECKING, Any

from attrs import define, frozen
from twisted.internet import defer
from twisted.logger import Logger

from qmtwist.delivery import Report
from qmtwist.remote import certcheck, dane, mtasts
from qmtwist.remote.mx import MailHost, MXResolver
from qmtwist.remote.reports import printable
from qmtwist.remote.smtpclient import TLSSetting, tlsFailureText
from qmtwist.remote.stscache import PolicyCache
from qmtwist.remote.stsfetch import Found, PolicyFinder

if TYPE_CHECKING:
    from qmtwist.context import Context

DANE = "DANE"
STS_ENFORCE = "MTA-STS enforce"
STS_TESTING = "MTA-STS testing"
OPPORTUNISTIC = "opportunistic"
TLSVERIFY = "control/tlsverify"

_log = Logger(namespace="qmail-remote")


def _reason(text: str) -> str:
    return " ".join(text.split())[:300]


def stsRefusal(domain: bytes, name: bytes, ip: str, reason: str) -> str:
    """The deferral when an enforced MTA-STS policy's TLS did not happen or did not verify."""
    return (f"Sorry, MTA-STS policy of {printable(domain)} requires verified TLS to "
            f"{printable(name)} at {ip}: {_reason(reason)}. (#4.7.5)")


def stsUnlisted(domain: bytes, hosts: list[MailHost]) -> str:
    """The deferral when an enforced MTA-STS policy lists none of the domain's MX hosts."""
    names = " ".join(printable(h.name) for h in hosts[:5])
    return (f"Sorry, MTA-STS policy of {printable(domain)} lists none of its MX hosts "
            f"({names}). (#4.7.5)")


def daneRefusal(name: bytes, ip: str, reason: str) -> str:
    """The deferral when a host with usable TLSA records did not give matching TLS."""
    return (f"Sorry, DANE TLSA records of {printable(name)} require matching TLS at {ip}: "
            f"{_reason(reason)}. (#4.7.5)")


def daneSoft(name: bytes, why: str) -> str:
    """The deferral when the TLSA lookup failed for every MX host."""
    return (f"Sorry, the TLSA lookup for {printable(dane.tlsaName(name))} failed temporarily "
            f"({_reason(why)}). (#4.4.3)")


@frozen
class HostRule:
    """
    What one MX host must do.

    @ivar kind: L{DANE}, L{STS_ENFORCE}, L{STS_TESTING}, L{OPPORTUNISTIC} or L{TLSVERIFY}
        (the handshake itself verified the certificate, docs/behaviour/remote.md 11.5).
    @ivar records: the usable TLSA records (DANE).
    @ivar listed: the MTA-STS policy lists the host (testing mode logs when not).
    """

    kind: str
    records: tuple[dane.TLSA, ...] = ()
    listed: bool = True

    @property
    def required(self) -> bool:
        return self.kind in (DANE, STS_ENFORCE, TLSVERIFY)


@frozen
class Plan:
    """
    @ivar hosts: the MX hosts that may be tried, in order.
    @ivar rules: host name -> its L{HostRule}.
    @ivar refusal: when no host is left, the deferral text.
    @ivar default: the rule of a host not in C{rules}.
    """

    domain: bytes
    sts: Found | None
    hosts: list[MailHost]
    rules: dict[bytes, HostRule]
    refusal: str | None = None
    default: HostRule = HostRule(OPPORTUNISTIC)

    @classmethod
    def fixed(cls, domain: bytes, kind: str) -> Plan:
        """One rule for every host: a route, a literal address or a C{tlsverify} domain."""
        return cls(domain, None, [], {}, None, HostRule(kind))


@define
class Attempt:
    """What happened on one connection, for its report."""

    rule: HostRule
    session: certcheck.Session | None = None
    verdict: str = ""

    def annotate(self, reports: list[Report]) -> list[Report]:
        """Each report with the line C{TLS: ⟨protocol⟩ ⟨cipher⟩, ⟨verdict⟩.} when TLS was used."""
        if self.session is None:
            return reports
        line = f"TLS: {self.session.protocol} {self.session.cipher}, {self.verdict}.\n"
        return [Report(r.outcome, r.text + line.encode("ascii", "replace")) for r in reports]


@define
class OutboundTLS:
    """
    The TLS policy part of the remote agent.

    @ivar finder: MTA-STS lookups. @ivar tlsa: TLSA lookups. @ivar anchors: trust anchors.
    """

    reactor: Any
    runInThread: Any
    finder: PolicyFinder
    tlsa: dane.TLSAResolver
    anchors: certcheck.AnchorCache

    @classmethod
    def forAgent(cls, ctx: Context, resolver: Any, mx: MXResolver, *, httpsPort: int = 443,
                 dnsTimeout: tuple[float, ...] = (1, 3, 11)) -> OutboundTLS:
        """Built for the remote agent: the cache in C{queue/lock/mtasts}, anchors in control/."""
        anchors = certcheck.AnchorCache(ctx.home.control, ctx.runInThread)
        cache = PolicyCache(os.path.join(os.path.dirname(ctx.home.queue.tcpto), "mtasts"),
                            ctx.reactor, ctx.runInThread)
        finder = PolicyFinder(ctx.reactor, resolver, mx, cache, anchors, port=httpsPort,
                              dnsTimeout=dnsTimeout)
        tlsa = dane.TLSAResolver(resolver, ctx.runInThread, dnsTimeout)
        return cls(ctx.reactor, ctx.runInThread, finder, tlsa, anchors)

    def stop(self) -> defer.Deferred[None]:
        """Fires when the cache's last write is done."""
        return self.finder.cache.flush()

    async def plan(self, domain: bytes, hosts: list[MailHost]) -> Plan:
        """Decide each MX host's rule (DANE over MTA-STS, RFC 8461 2) and drop unusable hosts."""
        sts = await self.finder.policyFor(domain)
        lookups = await defer.gatherResults(
            [defer.ensureDeferred(self.tlsa.lookup(h.name)) for h in hosts], consumeErrors=True)
        rules: dict[bytes, HostRule] = {}
        kept: list[MailHost] = []
        refusal: str | None = None
        mode = sts.policy.mode if sts is not None else mtasts.NONE
        for host, lookup in zip(hosts, lookups):
            if lookup.kind == "soft":
                _log.warn("DANE: TLSA lookup for {name} failed ({why}); not trying {host}",
                          name=printable(dane.tlsaName(host.name)), why=lookup.why,
                          host=printable(host.name))
                refusal = refusal or daneSoft(host.name, lookup.why)
                continue
            if lookup.usable:
                rules[host.name] = HostRule(DANE, lookup.usable)
            elif mode == mtasts.ENFORCE and sts is not None:
                if not sts.policy.matches(host.name):
                    _log.warn("MTA-STS: policy of {domain} (enforce) does not list {host}; not "
                              "trying it", domain=printable(domain), host=printable(host.name))
                    refusal = refusal or stsUnlisted(domain, hosts)
                    continue
                rules[host.name] = HostRule(STS_ENFORCE)
            elif mode == mtasts.TESTING and sts is not None:
                listed = sts.policy.matches(host.name)
                if not listed:
                    _log.warn("MTA-STS: policy of {domain} (testing) does not list {host}; "
                              "trying it anyway", domain=printable(domain),
                              host=printable(host.name))
                rules[host.name] = HostRule(STS_TESTING, listed=listed)
            else:
                rules[host.name] = HostRule(OPPORTUNISTIC)
            kept.append(host)
        if kept:
            refusal = None
        return Plan(domain, sts, kept, rules, refusal)

    def setting(self, plan: Plan, host: MailHost, ip: str, allowTLS: bool,
                options: Any) -> tuple[TLSSetting, Attempt]:
        """The SMTP client's TLS setting for one connection to C{host} at C{ip}."""
        rule = plan.rules.get(host.name, plan.default)
        attempt = Attempt(rule)
        failure: Any
        if rule.kind == DANE:
            failure = daneRefusal
        elif rule.kind == TLSVERIFY:
            failure = tlsFailureText
        else:
            failure = partial(stsRefusal, plan.domain)
        setting = TLSSetting(allowTLS, rule.required, options, host.name, failureText=failure,
                             afterHandshake=partial(self._check, plan, host, ip, attempt))
        return setting, attempt

    async def _check(self, plan: Plan, host: MailHost, ip: str, attempt: Attempt,
                     transport: Any) -> str | None:
        """The C{afterHandshake} hook: check, log, and refuse when the rule requires it."""
        session = certcheck.sessionOf(transport)
        if session is None:
            return None
        attempt.session = session
        rule = attempt.rule
        refusal: str | None = None
        why: str | None = None
        if rule.kind == TLSVERIFY:
            attempt.verdict = f"certificate verified for {printable(host.name)} ({rule.kind})"
        elif rule.kind == DANE:
            match, failed = await self.runInThread(
                partial(dane.check, rule.records, session.chain, host.name))
            why = failed if match is None else None
            if match is not None:
                usage = "EE" if match.usage == dane.DANE_EE else "TA"
                attempt.verdict = f"DANE-{usage} TLSA {match} matched for {printable(host.name)}"
            else:
                attempt.verdict = "DANE TLSA not matched"
                refusal = daneRefusal(host.name, ip, failed)
        else:
            try:
                anchors = await self.anchors.current()
                why = await self.runInThread(lambda: certcheck.verifyChain(
                    anchors.store(), session.chain, host.name))
            except Exception as e:
                why = f"trust anchors unusable: {e}"
            if why is None:
                attempt.verdict = f"certificate verified for {printable(host.name)} ({rule.kind})"
            else:
                attempt.verdict = f"certificate not verified ({rule.kind})"
                if rule.kind == STS_ENFORCE:
                    refusal = stsRefusal(plan.domain, host.name, ip, why)
                elif rule.kind == STS_TESTING:
                    _log.warn("MTA-STS: policy of {domain} (testing): {host} at {ip}: {why}; "
                              "delivering anyway", domain=printable(plan.domain),
                              host=printable(host.name), ip=ip, why=_reason(why))
        if why is not None:
            peer = f": {_reason(why)}"
        else:
            peer = f"; peer {session.subject}"
        _log.info("TLS to {ip} ({host}): {protocol} {cipher}; {verdict}{peer}", ip=ip,
                  host=printable(host.name), protocol=session.protocol, cipher=session.cipher,
                  verdict=attempt.verdict, peer=peer)
        return refusal
