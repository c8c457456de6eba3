"""
The stand-alone ("stdio") servers' one runner (docs/behaviour/home.md 1.4): C{HOME/bin/qmail-smtpd}
(L{qmtwist.smtp.stdio}), C{qmail-qmtpd} (L{qmtwist.qmtp.stdio}), C{qmail-popup} and
C{qmail-pop3d} (L{qmtwist.pop3.stdio}) serve one session on descriptors 0/1 for inetd, tcp-env
or a real tcpserver, with the twistd listener's own session protocol.

L{serveStdio} connects the protocol to L{StandardIO} through a L{ProtocolWrapper} that relays
everything unchanged (half-closes included, for a protocol that provides
L{IHalfCloseableProtocol}) and notices the end of the session. The process then must not exit
before the session's outstanding work has finished: a commit round whose answer the client is
owed, or the qmail-pop3d child a qmail-popup waits for. Each program says what that work is
with its C{outstanding} callable, asked once right after the protocol's C{connectionLost}; the
reactor stops when the L{Deferred} it returns has fired (at once when it returns L{None}).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import Factory
from twisted.internet.stdio import StandardIO
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from qmtwist.tools.base import ProgramEnv

#: What a session still has to finish after its connection is gone, or L{None}.
Outstanding = Callable[[], "Deferred[Any] | None"]


def sessionEnv(environ: dict[str, str]) -> dict[str, bytes]:
    """The process environment as the session environment (bytes values, as tcpserver's)."""
    return {k: os.fsencode(v) for k, v in environ.items()}


class _Session(ProtocolWrapper):
    """The session on descriptors: relayed unchanged; its end goes to L{_Sessions.ended}."""

    factory: _Sessions

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)  # this replaces what the wrapper directly provides
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            alsoProvides(self, IHalfCloseableProtocol)

    def readConnectionLost(self) -> None:
        IHalfCloseableProtocol(self.wrappedProtocol).readConnectionLost()

    def writeConnectionLost(self) -> None:
        IHalfCloseableProtocol(self.wrappedProtocol).writeConnectionLost()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        super().connectionLost(reason)
        self.factory.ended()


class _Sessions(WrappingFactory):
    """Holds the one session; stops the reactor once the session and its work are done."""

    def __init__(self, reactor: Any, outstanding: Outstanding) -> None:
        super().__init__(Factory())
        self.reactor = reactor
        self.outstanding = outstanding

    def ended(self) -> None:
        work = self.outstanding()
        if work is None:
            self._stop()
        else:
            work.addBoth(self._stop)

    def _stop(self, result: object = None) -> object:
        self.reactor.callLater(0, self.reactor.stop)
        return result


def serveStdio(session: IProtocol, env: ProgramEnv, reactor: Any,
               outstanding: Outstanding = lambda: None) -> int:
    """
    Serve C{session} on C{env}'s stdin and stdout until the client is gone and
    C{outstanding()} has finished (module docstring); runs the reactor.

    @return: 0, the exit status of a session that ended.
    """
    sessions = _Sessions(reactor, outstanding)
    wrapper = _Session(sessions, session)  # type: ignore[arg-type]  # WrappingFactory generic
    StandardIO(wrapper, stdin=env.stdin.fileno(),  # type: ignore[call-arg]  # (the POSIX one)
               stdout=env.stdout.fileno(), reactor=reactor)
    reactor.run()
    return 0
