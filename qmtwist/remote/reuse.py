"""
Delivery on cached SMTP connections for the remote agent (docs/behaviour/remote.md 11.8): the
cache key of a delivery, one transaction on a connection taken from L{scache}, and the decision
to cache a connection after its transaction or close it.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger

from qmtwist.control import Control
from qmtwist.delivery import Report
from qmtwist.remote import mailtx, routes, scache
from qmtwist.remote.connection import Dialer
from qmtwist.remote.mx import MailHost
from qmtwist.remote.tlspolicy import OPPORTUNISTIC, STS_ENFORCE, STS_TESTING, TLSVERIFY, Plan


def cacheKey(control: Control, port: int, policy: routes.TLSPolicy, plan: Plan | None,
             ip: str, host: MailHost) -> tuple[Any, ...]:
    """
    The connection cache key of a delivery to C{host} at C{ip} (remote.md 11.8): the TLS
    rule is part of it, so a connection is reused only under the very policy it was made for.
    """
    if policy.required:
        tlsKey: tuple[Any, ...] = (TLSVERIFY, host.name, policy.cafile)
    else:
        p = plan or Plan.fixed(host.name, OPPORTUNISTIC)
        rule = p.rules.get(host.name, p.default)
        sts = p.domain if rule.kind in (STS_ENFORCE, STS_TESTING) else b""
        tlsKey = (rule.kind, rule.records, rule.listed, host.name, sts)
    return scache.connectionKey(ip, port, control.helohost, tlsKey)


class Reuse:
    """
    The agent's use of its connection cache.

    @param runInThread: opens the message file off the reactor thread.
    """

    log = Logger(namespace="qmail-remote")

    def __init__(self, cache: scache.ConnectionCache, dialer: Dialer,
                 runInThread: Callable[[Callable[[], Any]], Any]) -> None:
        self.scache = cache
        self.dialer = dialer
        self.runInThread = runInThread
        self._busy: set[Any] = set()  # cached connections running a transaction

    def stop(self) -> None:
        """Abort the transactions running on reused connections (their recipients defer)."""
        for proto in list(self._busy):
            proto.abort()

    async def run(self, taken: tuple[tuple[Any, ...], Any], sender: bytes,
                     recipients: list[bytes], messPath: str, prefix: bytes,
                     kept: list[bool], body: bytes | None = None) -> list[Report] | None:
        """
        One transaction on a cached connection; L{None} when the connection turned out stale
        before the message went out (the caller connects afresh, on the same slot).
        """
        key, proto = taken
        ip = key[0]
        self._busy.add(proto)
        try:
            reports = await mailtx.mailTransaction(proto, ip, sender, recipients, messPath,
                                                   self.runInThread, prefix, keep=True,
                                                   reused=True, body=body)
        except mailtx.StaleConnection as e:
            self.log.info("cached connection to {ip} unusable ({why}); connecting afresh",
                          ip=ip, why=str(e))
            proto.abort()
            await proto.whenClosed()
            return None
        finally:
            self._busy.discard(proto)
        if proto.attempt is not None:
            reports = proto.attempt.annotate(reports)
        return self.keep(proto, key, reports, kept)

    def keep(self, proto: Any, key: tuple[Any, ...], reports: list[Report],
              kept: list[bool]) -> list[Report]:
        """
        Cache a connection whose transaction completed, else close it (QUIT); the reports of
        a reused connection say so (C{conn_use=N}, Postfix's wording).
        """
        if proto.uses > 1:
            line = b"Reused connection to %s (conn_use=%d).\n" % (key[0].encode("ascii"), proto.uses)
            reports = [Report(r.outcome, r.text + line) for r in reports]
        if proto.completed and not self.dialer.stopping and self.scache.put(key, proto):
            proto.cached = True
            kept.append(True)
        else:
            proto.close()
        return reports
