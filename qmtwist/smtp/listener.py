"""
The SMTP listener: qmail-smtpd under tcpserver, as one twistd service (docs/behaviour/smtp.md 7, tcpserver.md
8).

Besides the listener, this logs C{warning: control/rcpthosts missing; accepting only local and
virtual domains} (docs/behaviour/smtp.md 7.5) when the service is built and on every SIGHUP.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from qmtwist.local.exists import MailboxCheck
from qmtwist.ptr import LookupHost
from qmtwist.rcpthosts import MISSING_WARNING
from qmtwist.smtp.server import SMTPServer
from qmtwist.tcpserver import makeListener
from qmtwist.tls import ServerCertificate

#: What a client over the per-address limit gets before the close (docs/behaviour/smtp.md 7.10).
if TYPE_CHECKING:
    from qmtwist.context import Context

R_OVERLIMIT = b"421 too many connections from your address (#4.7.0)\r\n"

log = Logger(namespace="qmtwist.smtp")


class SMTPFactory(ServerFactory):
    """Builds L{SMTPServer} sessions from the daemon's context C{ctx} (a L{qmtwist.context.Context});
    controls are read (mtime-checked) for every connection, as qmail-smtpd reads them at start."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.certificate = ServerCertificate(os.path.join(ctx.home.control, "servercert.pem"),
                                             ctx.controls)
        # the recipient check at RCPT (docs/behaviour/smtp-extensions.md 20.5)
        self.mailboxes = MailboxCheck(ctx.home, ctx.controls, ctx.runInThread)

    def buildProtocol(self, addr: Any) -> SMTPServer:
        p = SMTPServer(self.ctx.injector, self.ctx.controls.current(), self.ctx.reactor,
                       self.certificate)
        p.factory = self
        p.mailboxes = self.mailboxes
        return p


def warnIfNoRcpthosts(ctx: Context) -> None:
    """Log docs/behaviour/smtp.md 7.5's warning when C{control/rcpthosts} is missing."""
    if ctx.controls.current().rcpthosts is None:
        log.warn("{line}", line=MISSING_WARNING)


def makeSMTPService(ctx: Context, endpoint: str, rulesPath: str | None, concurrency: int,
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
