"""
The remote delivery agent (qmail-rspawn + qmail-remote; docs/behaviour/remote.md 11, qmtp.md 9.3, control.md
2.3).

L{RemoteAgent.deliver} takes the remote recipients of one message, groups those that share a
route (or a recipient domain, hence an MX set) and an envelope sender, and runs one connection
per group: route selection (L{routes}), DNS (L{mx}), then the addresses in turn through the
L{connection.Dialer} (timeoutconnect, the timeout table L{tcpto}) with the SMTP (L{smtpclient})
or QMTP (L{qmtpclient}) dialogue. Each recipient gets its own L{Report}. Control values are
reread (on a thread, L{freshControls}) for every delivery; the message file, the tlsverify CA
file and the timeout table are read on C{ctx.runInThread} too, never on the reactor thread.
Simultaneous connections never exceed C{concurrencyremote} (the HUP value). After a completed
SMTP transaction the connection stays in the connection cache (L{scache}, L{reuse}) for the next
message to the same address under the same TLS rule (docs/behaviour/remote.md 11.8).

Differences from qmail: see the modules named above; the self check ("I'm listed as a
best-preference MX") compares addresses with L{RemoteAgent.localAddresses} (wired by the plugin
to the addresses the SMTP and QMTP listeners are bound to; a wildcard listener stands for every
interface address of the machine, L{ipme}) and host names with C{control/me}. After a 4xx
greeting, a connect timeout or no greeting at all, the next address (the next MX) is tried at
once, as Postfix does; qmail waits for the next retry.
"""

from __future__ import annotations

import functools
import random
from typing import Any, Callable, Iterable

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from qmtwist import tls as tlsOptions
from qmtwist.address import splitAddress
from qmtwist.context import Context, freshControls
from qmtwist.control import Control
from qmtwist.delivery import DeliveryRequest, Report
from qmtwist.dkim import delivery as dkimDelivery
from qmtwist.errors import MailError, PermanentFailure
from qmtwist.interfaces import IDeliveryAgent
from qmtwist.remote import ipme, qmtpclient, reuse, routes, scache, smtpclient
from qmtwist.remote.concurrency import Limiter, descriptorWarning
from qmtwist.remote.connection import ClientProtocol, Dialer, NextAddress
from qmtwist.remote.mx import DNS_TIMEOUT, NO_HOST, MailHost, MXResolver, makeResolver
from qmtwist.remote.reports import NO_CONNECTION, STOPPING, UNREADABLE
from qmtwist.remote.tcpto import TimeoutTable
from qmtwist.remote.tlspolicy import OPPORTUNISTIC, TLSVERIFY, OutboundTLS, Plan

__all__ = ["NO_CONNECTION", "Limiter", "RemoteAgent", "descriptorWarning", "makeResolver"]

BUG = "Unexpected failure in remote delivery. (#4.3.0)"
BAD_SENDER = "Sorry, the envelope sender contains a line break or NUL. (#5.1.7)"
BAD_RECIPIENT = "Sorry, the recipient address contains a line break or NUL. (#5.1.3)"
SELF_MX = (
    "Sorry. Although I'm listed as a best-preference MX or A for that host,\n"
    "it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)"
)


def _unsafe(address: bytes, text: str) -> str | None:
    """C{text} when C{address} could break the SMTP command it goes into [qmtwist]."""
    return text if b"\r" in address or b"\n" in address or b"\0" in address else None


def _reportFor(e: MailError) -> Report:
    return Report.failure(e.text) if e.permanent else Report.deferral(e.text)


@implementer(IDeliveryAgent)
class RemoteAgent:
    """
    Remote delivery for the queue service.

    @param ctx: the daemon's L{Context} (reactor, home, controls).
    @param resolver: an C{IResolver} (from L{makeResolver}); L{None} uses resolv.conf.
    @param localAddresses: the addresses this instance's SMTP listener accepts on, or a
        callable returning them (for the self check of docs/behaviour/remote.md 11.2).
    @param dnsTimeout: the retry timeouts of each DNS lookup (docs/behaviour/remote.md 11.2: 1, 3, 11).
    @param mxPort: the SMTP port of hosts found by MX or A lookup (25; tests and unprivileged
        set-ups such as FAQ 7.4 on one machine use another).
    @param interfaces: returns the machine's interface addresses (blocking; run on
        C{ctx.runInThread}, at most every L{interfaceCacheSeconds}); needed only when
        C{localAddresses} has a wildcard address (C{0.0.0.0}, C{::}).
    @param httpsPort: the port of MTA-STS policy servers (443; tests use another).
    """

    channel = "remote"
    log = Logger(namespace="qmail-remote")
    #: how long the interface addresses read for the self check are reused
    interfaceCacheSeconds = 10.0

    def __init__(
        self,
        ctx: Context,
        resolver: Any = None,
        *,
        localAddresses: Iterable[str] | Callable[[], Iterable[str]] = (),
        dnsTimeout: tuple[float, ...] = DNS_TIMEOUT,
        mxPort: int = 25,
        rng: random.Random | None = None,
        interfaces: Callable[[], Iterable[str]] = ipme.interfaceAddresses,
        httpsPort: int = 443,
    ) -> None:
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.resolver = resolver if resolver is not None else makeResolver(ctx.reactor, None)
        self.mx = MXResolver(self.resolver, dnsTimeout, rng)
        self.tcpto = TimeoutTable(ctx.home.queue.tcpto, ctx.reactor, rng, ctx.runInThread)
        self.dialer = Dialer(ctx.reactor, self.tcpto)
        self.localAddresses = localAddresses
        self.interfaces = interfaces
        self._interfaceCache: tuple[float, frozenset[str]] | None = None
        self._interfaceLock = defer.DeferredLock()
        self.mxPort = mxPort
        self.limiter = Limiter(max(1, ctx.controls.snapshot.concurrencyremote))
        # idle SMTP connections for the next message (docs/behaviour/remote.md 11.8)
        self.scache = scache.ConnectionCache(ctx.reactor, self.limiter)
        self._inflight: set[defer.Deferred[Any]] = set()
        self._opportunistic: Any = None
        # MTA-STS and DANE for mail by MX (docs/behaviour/tls-policy.md 19)
        self.reuse = reuse.Reuse(self.scache, self.dialer, ctx.runInThread)
        self.tlsPolicy = OutboundTLS.forAgent(ctx, self.resolver, self.mx, httpsPort=httpsPort,
                                              dnsTimeout=tuple(dnsTimeout))

    # -- IDeliveryAgent ---------------------------------------------------------------------
    def deliver(self, requests: list[DeliveryRequest]) -> list[defer.Deferred[Report]]:
        results: list[defer.Deferred[Report]] = [defer.Deferred() for _ in requests]
        # the control files as they are now, read on a thread (docs/behaviour/control.md 2.2)
        d = freshControls(self.ctx).addCallback(self._dispatch, requests, results)
        d.addErrback(self._dispatchFailed, results)
        if not d.called:
            self._inflight.add(d)  # stop() waits for it too
            d.addBoth(lambda _: self._inflight.discard(d))
        return results

    def _dispatchFailed(self, f: Any, results: list[defer.Deferred[Report]]) -> None:
        self.log.failure("remote delivery setup failed", f)
        for d in results:
            if not d.called:
                d.callback(Report.deferral(BUG))

    def _dispatch(self, control: Control, requests: list[DeliveryRequest],
                  results: list[defer.Deferred[Report]]) -> None:
        try:
            groups: dict[tuple[Any, ...], list[int]] = {}
            for i, req in enumerate(requests):
                bad = _unsafe(req.sender, BAD_SENDER) or _unsafe(req.recipient, BAD_RECIPIENT)
                if bad is not None:
                    results[i].callback(Report.failure(bad))
                    continue
                _local, domain = splitAddress(req.recipient)
                route = routes.selectRoute(control, domain)
                # Recipients of one route connection share its TLS policy: a tlsverify
                # domain never rides on the connection of a domain without it (remote.md 11.5).
                policy = (routes.tlsPolicy(control, domain, self.ctx.home.control)
                          if route.protocol == routes.SMTP else routes.TLSPolicy(False))
                key = (route, domain.lower() if route.relay is None else b"", req.sender, policy)
                groups.setdefault(key, []).append(i)
        except Exception:
            self.log.failure("remote delivery setup failed")
            for d in results:
                if not d.called:
                    d.callback(Report.deferral(BUG))
            return
        for (route, _domain, _sender, policy), indices in groups.items():
            reqs = [requests[i] for i in indices]
            group = defer.ensureDeferred(self._deliverGroup(control, route, policy, reqs))
            self._inflight.add(group)
            group.addBoth(self._finished, group, reqs, [results[i] for i in indices])

    def _finished(
        self, outcome: Any, d: Any, reqs: list[DeliveryRequest], targets: list[Any]
    ) -> None:
        self._inflight.discard(d)
        if isinstance(outcome, list) and len(outcome) == len(targets):
            reports = outcome
        else:
            if not isinstance(outcome, list):
                self.log.failure("remote delivery of msg {msg} failed", outcome, msg=reqs[0].msgId)
            reports = [Report.deferral(BUG)] * len(targets)
        for target, report in zip(targets, reports):
            target.callback(report)

    def reload(self) -> None:
        self.scache.closeAll()  # with QUIT; the next messages connect under the new controls
        self.limiter.setLimit(max(1, self.ctx.controls.snapshot.concurrencyremote))

    def stop(self) -> defer.Deferred[None]:
        """
        Abort connections in flight (their recipients defer), wait for the reports, then for
        the timeout table's last write.
        """
        self.dialer.stop()
        self.scache.closeAll()
        self.reuse.stop()
        self.limiter.setLimit(1 << 30)  # let waiting groups run into the stop check
        gathered = defer.DeferredList([_observe(d) for d in self._inflight], consumeErrors=True)
        return gathered.addCallback(lambda _: self.tcpto.flush()).addCallback(
            lambda _: self.tlsPolicy.stop())

    # -- one connection's worth of recipients ------------------------------------------------
    async def _deliverGroup(
        self, control: Control, route: routes.Route, policy: routes.TLSPolicy,
        reqs: list[DeliveryRequest],
    ) -> list[Report]:
        n = len(reqs)
        messPath = reqs[0].messPath
        sender = reqs[0].sender
        recipients = [r.recipient for r in reqs]
        _local, domain = splitAddress(recipients[0])
        sign = dkimDelivery.signJob(self.ctx, control, messPath, sender)

        def look() -> tuple[bool, bytes | None, dkimDelivery.SignOutcome]:
            # one thread hop for every look at the message file: its last byte, the message
            # itself when small (sent from memory, remote.md 11.4), the DKIM signatures
            partial, body = smtpclient.lookAtMessage(messPath)
            return partial, body, sign()

        try:
            partial, body, signed = await self.ctx.runInThread(look)
        except OSError:
            return [Report.deferral(UNREADABLE)] * n
        if partial and route.protocol == routes.SMTP:
            return [Report.failure(smtpclient.PARTIAL)] * n
        plan: Plan | None = None
        try:
            prefix = dkimDelivery.prefixOf(signed, reqs[0].msgId)
            if route.relay is not None:
                if route.isLiteral:
                    hosts = [MailHost(route.relay, 0, (route.relay.decode("ascii"),))]
                else:
                    hosts = await self.mx.relayHosts(route.relay)
            else:
                hosts, recipients, sender = await self._byMX(control, domain, recipients, sender)
                if (route.protocol == routes.SMTP and not policy.required
                        and routes.domainLiteral(domain) is None):
                    plan = await self.tlsPolicy.plan(domain, hosts)
                    if plan.refusal is not None:
                        return [Report.deferral(plan.refusal)] * n
                    hosts = plan.hosts
        except MailError as e:
            return [_reportFor(e)] * n
        port = route.port if route.relay is not None else self.mxPort
        keyOf = functools.partial(reuse.cacheKey, control, port, policy, plan)
        keys = ([keyOf(ip, h) for h in hosts for ip in h.addresses]
                if route.protocol == routes.SMTP and not self.dialer.stopping else [])
        taken = self.scache.take(keys) if keys else None
        if taken is None:  # a slot, or a connection handed over with its slot
            taken = await self.limiter.acquire(keys)
        kept: list[bool] = []  # the connection (and the slot) went to the cache
        try:
            if self.dialer.stopping:
                if taken is not None:
                    taken[1].abort()
                return [Report.deferral(STOPPING)] * n
            if route.protocol == routes.QMTP:
                return await self.dialer.deliver(
                    hosts, port, control.timeoutconnect, n,
                    lambda: qmtpclient.QMTPClientProtocol(self.reactor, control.timeoutremote),
                    lambda proto, ip, host, first: qmtpclient.transact(
                        proto, ip, sender, recipients, messPath, self.ctx.runInThread, prefix),
                )
            if taken is not None:
                reports = await self.reuse.run(taken, sender, recipients, messPath, prefix, kept,
                                               body)
                if reports is not None:
                    return reports
            return await self._trySMTP(control, hosts, port, sender, recipients, messPath, policy,
                                       plan, prefix, keyOf, kept, body)
        finally:
            if not kept:
                self.limiter.release()

    async def _byMX(
        self, control: Control, domain: bytes, recipients: list[bytes], sender: bytes
    ) -> tuple[list[MailHost], list[bytes], bytes]:
        literal = routes.domainLiteral(domain)
        if literal is not None:
            return [MailHost(literal, 0, (literal.decode("ascii"),))], recipients, sender
        if not domain:
            raise PermanentFailure(NO_HOST.format(name=""))
        canon = await self.mx.canonical(domain)
        if canon != domain:
            recipients = [splitAddress(r)[0] + b"@" + canon for r in recipients]
        slocal, sdomain = splitAddress(sender)
        if sender and sdomain and routes.domainLiteral(sdomain) is None:
            scanon = await self.mx.canonical(sdomain)
            if scanon != sdomain:
                sender = slocal + b"@" + scanon
        hosts = await self.mx.mailHosts(canon)
        return self._selfCheck(control, hosts, await self._myAddresses()), recipients, sender

    def _selfCheck(
        self, control: Control, hosts: list[MailHost], mine: frozenset[ipme.IPAddress]
    ) -> list[MailHost]:
        """qmail's "best-preference MX" rule (docs/behaviour/remote.md 11.2)."""
        me = control.me.lower().rstrip(b".")

        def isSelf(h: MailHost) -> bool:
            if me and h.name.lower().rstrip(b".") == me:
                return True
            return any(ipme.isMine(ip, mine) for ip in h.addresses)

        selfPrefs = [h.preference for h in hosts if isSelf(h)]
        if not selfPrefs:
            return hosts
        best = min(selfPrefs)
        left = [h for h in hosts if h.preference < best]
        if not left:
            raise PermanentFailure(SELF_MX)
        return left

    async def _myAddresses(self) -> frozenset[ipme.IPAddress]:
        """
        The addresses that are this instance: those the listeners are bound to, a wildcard
        standing for every interface address of the machine (L{ipme.selfAddresses}).
        """
        source = self.localAddresses
        listening = [str(v) for v in (source() if callable(source) else source)]
        interfaces: Iterable[str] = ()
        if ipme.hasWildcard(listening):
            interfaces = await self._interfaceAddresses()
        return ipme.selfAddresses(listening, interfaces)

    async def _interfaceAddresses(self) -> frozenset[str]:
        """
        L{interfaces}, read on a pool thread and reused for L{interfaceCacheSeconds}; when
        they cannot be read, the loopback addresses (logged).
        """
        async with self._interfaceLock:
            now = self.reactor.seconds()
            cached = self._interfaceCache
            if cached is not None and now < cached[0]:
                return cached[1]
            try:
                found = frozenset(str(a) for a in await self.ctx.runInThread(self.interfaces))
            except Exception as e:
                self.log.warn("warning: unable to read the interface addresses ({why}); the self "
                              "check counts the loopback addresses only", why=str(e))
                found = ipme.LOOPBACK
            self._interfaceCache = (now + self.interfaceCacheSeconds, found)
            return found

    async def _trySMTP(
        self,
        control: Control,
        hosts: list[MailHost],
        port: int,
        sender: bytes,
        recipients: list[bytes],
        messPath: str,
        policy: routes.TLSPolicy,
        plan: Plan | None = None,
        prefix: bytes = b"",
        keyOf: Callable[[str, MailHost], tuple[Any, ...]] | None = None,
        kept: list[bool] | None = None,
        body: bytes | None = None,
    ) -> list[Report]:
        n = len(recipients)
        options: dict[bytes, Any] = {}

        async def attempt(proto: Any, ip: str, host: MailHost, allowTLS: bool) -> list[Report]:
            if policy.required:
                if host.name not in options:
                    try:  # the CA file is read on a thread
                        options[host.name] = await self.ctx.runInThread(functools.partial(
                            tlsOptions.clientOptions, host.name.decode("ascii", "replace"),
                            policy.cafile))
                    except Exception as e:  # unreadable or bad CA file: no plaintext fallback
                        proto.close()
                        text = smtpclient.tlsFailureText(host.name, ip, str(e))
                        return [Report.deferral(text)] * n
                opts = options[host.name]
            else:
                if self._opportunistic is None:
                    self._opportunistic = tlsOptions.unverifiedClientOptions()
                opts = self._opportunistic
            # MTA-STS, DANE, the TLS log line and report line (docs/behaviour/tls-policy.md 19)
            tls, tried = self.tlsPolicy.setting(
                plan or Plan.fixed(host.name, TLSVERIFY if policy.required else OPPORTUNISTIC),
                host, ip, allowTLS, opts)
            try:
                reports = tried.annotate(await smtpclient.transact(
                    proto, ip, control.helohost, sender, recipients, messPath, tls,
                    self.ctx.runInThread, prefix, keep=keyOf is not None, body=body))
            except NextAddress as e:  # a refused certificate: its report names the session too
                e.reports = tried.annotate(e.reports)
                raise
            if keyOf is None or kept is None:
                return reports
            proto.attempt = tried
            return self.reuse.keep(proto, keyOf(ip, host), reports, kept)

        def makeProto() -> ClientProtocol:
            return smtpclient.ReplyProtocol(self.reactor, control.timeoutremote)

        return await self.dialer.deliver(hosts, port, control.timeoutconnect, n, makeProto, attempt)


def _observe(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    """A Deferred that fires when C{d} does, without taking its result away."""
    out: defer.Deferred[Any] = defer.Deferred()

    def both(result: Any) -> Any:
        out.callback(None)
        return result

    d.addBoth(both)
    return out
