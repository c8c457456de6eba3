"""
C{HOME/bin/qmail-qmtpd}: the QMTP server on descriptors 0/1 (docs/behaviour/home.md 1.4), for inetd or a real
tcpserver (FAQ 5.2).

The session is the twistd listener's L{QMTPServer} on L{StandardIO}, with its own L{Injector}
writing this home's queue; the connection data comes from the tcp-environ variables
(C{TCPREMOTEIP}, C{TCPREMOTEHOST}, C{TCPREMOTEINFO}, C{TCPLOCALIP}, C{TCPLOCALHOST}), and
C{RELAYCLIENT} and C{DATABYTES} from the environment. After each commit the queue service is woken
through C{lock/trigger}. Exit 0 when the client is gone; 111 when the controls cannot be read
(qmail-qmtpd exits without a word then).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure

from qmtwist.errors import ControlError
from qmtwist.qmtp.server import QMTPServer
from qmtwist.queue.commit import standaloneInjector
from qmtwist.tools.base import ProgramEnv


def sessionEnv(environ: dict[str, str]) -> dict[str, bytes]:
    """The process environment as the session environment (bytes values, as tcpserver's)."""
    return {k: os.fsencode(v) for k, v in environ.items()}


class _StdioQMTP(QMTPServer):
    def __init__(self, *args: Any, onLost: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._onLost = onLost

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        # answers already computed may still wait for their commit round
        self._tail.addBoth(lambda _: self._onLost())


def main(argv: list[str], env: ProgramEnv) -> int:
    """qmail-qmtpd (takes no arguments)."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    try:
        control, injector = standaloneInjector(env.home, reactor, deferToThread)
    except ControlError:
        return 111
    proto = _StdioQMTP(injector, control, reactor, sessionEnv(env.environ),
                       onLost=lambda: reactor.callLater(0, reactor.stop))
    StandardIO(proto, stdin=env.stdin.fileno(), stdout=env.stdout.fileno(), reactor=reactor)
    reactor.run()
    return 0
