"""
The SMTP listener: qmail-smtpd under tcpserver, as one twistd service (SPEC.md 7, 8).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService

from qmtwist.smtp.server import SMTPFactory
from qmtwist.tcpserver import LookupHost, makeListener


def makeSMTPService(ctx: Any, endpoint: str, rulesPath: str | None, concurrency: int,
                    lookupHost: LookupHost | None = None) -> IService:
    """
    The SMTP listening service.

    @param ctx: the daemon's L{qmtwist.context.Context}.
    @param endpoint: e.g. C{tcp:2525:interface=127.0.0.1}, or C{ssl:465:privateKey=...} (SMTPS).
    @param rulesPath: the tcprules text file (C{HOME/rules/smtp} by default); missing = allow all.
    @param concurrency: C{--smtp-concurrency}.
    """
    return makeListener(ctx, "smtp", endpoint, rulesPath, concurrency, SMTPFactory(ctx),
                        lookupHost)
