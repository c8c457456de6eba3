"""
The POP3 listener: qmail-popup + checkpassword + qmail-pop3d under tcpserver, as one twistd
service (docs/behaviour/pop3.md 10, 8). C{ssl:} endpoints give POP3S; STLS uses C{control/servercert.pem}.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from twisted.application.service import IService

from qmtwist.pop3.checkpassword import BuiltinChecker, BuiltinLogin, CheckpasswordLogin, ILogin
from qmtwist.pop3.server import POP3Factory
from qmtwist.ptr import LookupHost
from qmtwist.tcpserver import makeListener
from qmtwist.tls import ServerCertificate

if TYPE_CHECKING:
    from qmtwist.context import Context


def makeLogin(ctx: Context, checkpassword: str | None, root: bool | None = None) -> ILogin:
    """
    The login strategy: C{PROG HOME/bin/qmail-pop3d Maildir} for an external checkpassword
    program (docs/behaviour/pop3.md 10.2), else the built-in checker against C{users/passwd}.
    """
    if checkpassword:
        return CheckpasswordLogin(ctx.reactor,
                                  [checkpassword, ctx.home.sub("bin", "qmail-pop3d"), "Maildir"])
    return BuiltinLogin(BuiltinChecker(ctx.home, ctx.runInThread), ctx.home, ctx.reactor, root)


def makePOP3Service(ctx: Context, endpoint: str, rulesPath: str | None, concurrency: int,
                    checkpassword: str | None = None,
                    lookupHost: LookupHost | None = None, root: bool | None = None,
                    perIP: int = 10) -> IService:
    """
    The POP3 listening service.

    @param ctx: the daemon's L{qmtwist.context.Context}.
    @param endpoint: e.g. C{tcp:2110:interface=127.0.0.1}, or C{ssl:995:...} (POP3S).
    @param rulesPath: the tcprules text file (C{HOME/rules/pop3} by default); missing = allow all.
    @param concurrency: C{--pop3-concurrency}.
    @param checkpassword: C{--checkpassword PROG}, or L{None} for the built-in checker.
    @param lookupHost: PTR lookup for C{=host} rules (default: twisted.names).
    @param root: whether the built-in checker serves each session from a child running as the
        user (default: when we run as root; tests choose).
    @param perIP: C{--pop3-per-ip}: sessions one client address may hold (0 = no limit).
    """
    certificate = ServerCertificate(os.path.join(ctx.home.control, "servercert.pem"), ctx.controls)
    factory = POP3Factory(ctx, makeLogin(ctx, checkpassword, root), certificate.options)
    return makeListener(ctx, "pop3", endpoint, rulesPath, concurrency, factory, lookupHost,
                        perIP)
