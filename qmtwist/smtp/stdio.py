"""
C{HOME/bin/qmail-smtpd}: the SMTP server on descriptors 0/1 (docs/behaviour/home.md 1.4), for
inetd, tcp-env or a real tcpserver (FAQ 5.1, 5.4).

The session is the twistd listener's L{SMTPServer} run by L{qmtwist.stdio.serveStdio}, with its
own L{Injector} writing this home's queue; the connection data comes from the tcp-environ
variables (C{TCPREMOTEIP}, C{TCPREMOTEHOST}, C{TCPREMOTEINFO}, C{TCPLOCALIP}, C{TCPLOCALHOST})
and C{RELAYCLIENT}, C{DATABYTES}, C{SMTPGREETING} from the environment. After each commit the
queue service is woken through C{lock/trigger}. STARTTLS is not offered (descriptors, not a
socket the reactor can wrap). Exit 0 when the client is gone and a commit it started has been
answered; 111 when the controls cannot be read.
"""

from __future__ import annotations

from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from qmtwist.errors import ControlError
from qmtwist.queue.commit import standaloneInjector
from qmtwist.smtp.server import SMTPServer
from qmtwist.stdio import serveStdio, sessionEnv
from qmtwist.tools.base import ProgramEnv


@implementer(IHalfCloseableProtocol)
class _StdioSMTP(SMTPServer):
    """
    The session on descriptors: end of input (a client that half-closes, or inetd-style pipes)
    lets the buffered commands and a pending commit finish and be answered before closing.
    """

    _eof = False

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


def main(argv: list[str], env: ProgramEnv) -> int:
    """qmail-smtpd (takes no arguments)."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    try:
        control, injector = standaloneInjector(env.home, reactor, deferToThread)
    except ControlError:
        return 111
    proto = _StdioSMTP(injector, control, reactor, None)
    proto.env = sessionEnv(env.environ)
    # a message whose commit round is running is finished before the process exits
    return serveStdio(proto, env, reactor, lambda: proto.pendingCommit)
