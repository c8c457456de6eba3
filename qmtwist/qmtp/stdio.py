"""
C{HOME/bin/qmail-qmtpd}: the QMTP server on descriptors 0/1 (docs/behaviour/home.md 1.4), for
inetd or a real tcpserver (FAQ 5.2).

The session is the twistd listener's L{QMTPServer} run by L{qmtwist.stdio.serveStdio}, with its
own L{Injector} writing this home's queue; the connection data comes from the tcp-environ
variables (C{TCPREMOTEIP}, C{TCPREMOTEHOST}, C{TCPREMOTEINFO}, C{TCPLOCALIP}, C{TCPLOCALHOST}),
and C{RELAYCLIENT} and C{DATABYTES} from the environment. After each commit the queue service is
woken through C{lock/trigger}. Exit 0 when the client is gone and every answer computed has been
written; 111 when the controls cannot be read (qmail-qmtpd exits without a word then).
"""

from __future__ import annotations

from qmtwist.errors import ControlError
from qmtwist.qmtp.server import QMTPServer
from qmtwist.queue.commit import standaloneInjector
from qmtwist.stdio import serveStdio, sessionEnv
from qmtwist.tools.base import ProgramEnv


def main(argv: list[str], env: ProgramEnv) -> int:
    """qmail-qmtpd (takes no arguments)."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    try:
        control, injector = standaloneInjector(env.home, reactor, deferToThread)
    except ControlError:
        return 111
    proto = QMTPServer(injector, control, reactor, sessionEnv(env.environ))
    # answers already computed may still wait for their commit round (the session's tail)
    return serveStdio(proto, env, reactor, lambda: proto._tail)
