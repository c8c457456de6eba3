"""
The SMTP listener: qmail-smtpd under tcpserver, as one twistd service (docs/behaviour/smtp.md 7, tcpserver.md
8).

Besides the listener, this logs C{warning: control/rcpthosts missing; accepting only local and
virtual domains} (docs/behaviour/smtp.md 7.5) when the service is built and on every SIGHUP.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService
from twisted.logger import Logger

from qmtwist.rcpthosts import MISSING_WARNING
from qmtwist.smtp.server import SMTPFactory
from qmtwist.ptr import LookupHost
from qmtwist.tcpserver import makeListener

#: What a client over the per-address limit gets before the close (docs/behaviour/smtp.md 7.10).
R_OVERLIMIT = b"421 too many connections from your address (#4.7.0)\r\n"

log = Logger(namespace="qmtwist.smtp")


def warnIfNoRcpthosts(ctx: Any) -> None:
    """Log docs/behaviour/smtp.md 7.5's warning when C{control/rcpthosts} is missing."""
    if ctx.controls.current().rcpthosts is None:
        log.warn("{line}", line=MISSING_WARNING)


def makeSMTPService(ctx: Any, endpoint: str, rulesPath: str | None, concurrency: int,
                    lookupHost: LookupHost | None = None, perIP: int = 10,
                    inbound: Any = None) -> IService:
    """
    The SMTP listening service.

    @param ctx: the daemon's L{qmtwist.context.Context}.
    @param endpoint: e.g. C{tcp:2525:interface=127.0.0.1}, or C{ssl:465:privateKey=...} (SMTPS).
    @param rulesPath: the tcprules text file (C{HOME/rules/smtp} by default); missing = allow all.
    @param concurrency: C{--smtp-concurrency}.
    @param lookupHost: PTR lookup for C{=host} rules (default: twisted.names).
    @param perIP: C{--smtp-per-ip}: sessions one client address may hold (0 = no limit); one
        more is answered L{R_OVERLIMIT} and closed.
    @param inbound: a L{qmtwist.inbound.writer.InboundVerifier}: SPF, DKIM and DMARC checks for
        clients that are neither relay clients nor authenticated (docs/behaviour/authentication.md).
    """
    factory = SMTPFactory(ctx) if inbound is None else inbound.factory(ctx)
    service = makeListener(ctx, "smtp", endpoint, rulesPath, concurrency, factory,
                           lookupHost, perIP, R_OVERLIMIT)
    warnIfNoRcpthosts(ctx)
    return service
