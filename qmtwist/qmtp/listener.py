"""
The QMTP listener: qmail-qmtpd under tcpserver, as one twistd service (docs/behaviour/qmtp.md 9, tcpserver.md
8).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.application.service import IService
from twisted.internet.protocol import ServerFactory

from qmtwist.qmtp.server import QMTPServer
from qmtwist.ptr import LookupHost
from qmtwist.tcpserver import makeListener

if TYPE_CHECKING:
    from qmtwist.context import Context


class QMTPFactory(ServerFactory):
    """
    Builds L{QMTPServer} sessions from the daemon's context; controls are read (mtime-checked)
    for every connection, as qmail-qmtpd reads them at start.

    @param ctx: a L{qmtwist.context.Context}.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def buildProtocol(self, addr: Any) -> QMTPServer:
        p = QMTPServer(self.ctx.injector, self.ctx.controls.current(), self.ctx.reactor)
        p.factory = self
        return p


def makeQMTPService(ctx: Context, endpoint: str, rulesPath: str | None, concurrency: int,
                    lookupHost: LookupHost | None = None, perIP: int = 10) -> IService:
    """
    The QMTP listening service.

    @param ctx: the daemon's L{qmtwist.context.Context}.
    @param endpoint: e.g. C{tcp:2209:interface=127.0.0.1}.
    @param rulesPath: the tcprules text file (C{HOME/rules/qmtp} by default); missing = allow all.
    @param concurrency: C{--qmtp-concurrency}.
    @param lookupHost: PTR lookup for C{=host} rules (default: twisted.names).
    @param perIP: C{--qmtp-per-ip}: sessions one client address may hold (0 = no limit).
    """
    return makeListener(ctx, "qmtp", endpoint, rulesPath, concurrency, QMTPFactory(ctx),
                        lookupHost, perIP)
