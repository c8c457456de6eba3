"""
C{HOME/bin/qmail-smtpd}: the SMTP server on descriptors 0/1 (docs/behaviour/home.md 1.4), for inetd, tcp-env
or a
real tcpserver (FAQ 5.1, 5.4).

The session is the twistd listener's L{SMTPServer} on L{StandardIO} with its own L{Injector}
writing this home's queue; the connection data comes from the tcp-environ variables
(C{TCPREMOTEIP}, C{TCPREMOTEHOST}, C{TCPREMOTEINFO}, C{TCPLOCALIP}, C{TCPLOCALHOST}) and
C{RELAYCLIENT}, C{DATABYTES}, C{SMTPGREETING} from the environment. After each commit the queue
service is woken through C{lock/trigger}. STARTTLS is not offered (descriptors, not a socket the
reactor can wrap). Exit 0 when the client is gone; 111 when the controls cannot be read.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure
from zope.interface import implementer

from qmtwist.errors import ControlError
from qmtwist.queue.commit import standaloneInjector
from qmtwist.smtp.server import SMTPServer
from qmtwist.tools.base import ProgramEnv


def sessionEnv(environ: dict[str, str]) -> dict[str, bytes]:
    """The process environment as the session environment (bytes values, as tcpserver's)."""
    return {k: os.fsencode(v) for k, v in environ.items()}


@implementer(IHalfCloseableProtocol)
class _StdioSMTP(SMTPServer):
    """
    The session on descriptors: end of input (a client that half-closes, or inetd-style pipes)
    lets the buffered commands and a pending commit finish and be answered before closing.
    """

    def __init__(self, *args: Any, onLost: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._onLost = onLost
        self._eof = False

    def readConnectionLost(self) -> None:
        self._eof = True
        if not self._waiting and not self._closed:
            self._drop(0)

    def writeConnectionLost(self) -> None:
        if not self._closed:
            self._drop(0)

    def _resume(self) -> None:
        super()._resume()
        if self._eof and not self._waiting and not self._closed:
            self._drop(0)

    def connectionLost(self, reason: Failure | None = None) -> None:
        pending = self.pendingCommit
        super().connectionLost(reason)
        if pending is not None:
            # a message whose commit round is running is finished before the process exits
            pending.addBoth(lambda _: self._onLost())
        else:
            self._onLost()


def main(argv: list[str], env: ProgramEnv) -> int:
    """qmail-smtpd (takes no arguments)."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    try:
        control, injector = standaloneInjector(env.home, reactor, deferToThread)
    except ControlError:
        return 111
    proto = _StdioSMTP(injector, control, reactor, None,
                       onLost=lambda: reactor.callLater(0, reactor.stop))
    proto.env = sessionEnv(env.environ)
    StandardIO(proto, stdin=env.stdin.fileno(), stdout=env.stdout.fileno(), reactor=reactor)
    reactor.run()
    return 0
