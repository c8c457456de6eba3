"""
The POP3 server: qmail-popup (authorization, docs/behaviour/pop3.md 10.1) handing over to checkpassword and
qmail-pop3d (docs/behaviour/pop3.md 10.2, 10.3).

L{LineSession} holds what both halves share: lines end at LF with one optional CR, commands are
handled strictly one after another (a command that waits for a thread or a child holds back the
following ones), and 20 idle minutes end the session without a word. L{POP3Server} is
qmail-popup; after a successful login it either serves the Maildir itself with a
L{Transaction} or relays the connection to a child (external checkpassword, or the built-in
checker when the daemon runs as root). L{Pop3dServer} is C{bin/qmail-pop3d} on stdio.

Deviations [qmtwist]: CAPA and STLS (docs/behaviour/pop3.md 10.1); a failed login is answered after at least
one second and logged; after 3 failed logins from one address within a minute, logins from it
are refused without a check for a growing period (L{qmtwist.ratelimit.FailureLimiter}, shared by
the listener's sessions); command lines longer than 4096 octets are discarded up to their LF and
answered C{-ERR line too long}.
"""

from __future__ import annotations

import itertools
from abc import ABCMeta, abstractmethod
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHalfCloseableProtocol, IHandshakeListener, IReactorTime, ISSLTransport)
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from qmtwist.queue.state import logSafe
from qmtwist.pop3.checkpassword import ILogin, Relay, Result
from qmtwist.pop3.transaction import OK, SYNTAX, UNIMPLEMENTED, RunInThread, Transaction
from qmtwist.ratelimit import FailureLimiter, addressKey
from qmtwist.tlslog import logTLS

if TYPE_CHECKING:
    from qmtwist.context import Context

MAX_LINE = 4096
IDLE_SECONDS = 1200
FAIL_DELAY = 1.0

AUTH_FAILED = b"-ERR authorization failed\r\n"
CRASHED = b"-ERR aack, child crashed\r\n"
TOO_MANY = b"-ERR too many failed logins, try later\r\n"


@implementer(IHalfCloseableProtocol)
class LineSession(Protocol, TimeoutMixin, metaclass=ABCMeta):
    """
    Line splitting, one command at a time, the idle timeout (L{TimeoutMixin} on the injected
    clock: 20 minutes without input end the session silently, docs/behaviour/pop3.md 10). At
    the end of the client's input (a half-close, or EOF on stdin) the complete lines already
    received are still answered, then the session ends as if dropped (no QUIT: nothing
    changes) [qmail].
    """

    log = Logger(namespace="qmtwist.pop3")

    #: tcpserver's exit status for the connection log (None: decided by how the connection ended).
    exitStatus: int | None = None
    transport: Any  # tcpserver's session wrapper, a TLS or a stdio transport

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._buffer = b""
        self._discarding = False
        self._busy = False
        self._closed = False
        self._eof = False
        self.env: dict[str, bytes] = {}

    def callLater(self, period: float, func: Callable[[], None]) -> Any:
        """TimeoutMixin's timer, on the injected clock."""
        return self.clock.callLater(period, func)

    def connectionMade(self) -> None:
        self.setTimeout(IDLE_SECONDS)

    def timeoutConnection(self) -> None:
        self.exitStatus = 256
        self.end()

    def write(self, data: bytes) -> None:
        if not self._closed:
            self.transport.write(data)

    def end(self) -> None:
        """Close after what was written has gone out; read nothing more."""
        if not self._closed:
            self._closed = True
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed = True
        self.setTimeout(None)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self._buffer += data
        self._drain()

    def readConnectionLost(self) -> None:
        self._eof = True
        self._drain()

    def writeConnectionLost(self) -> None:
        self._eof = True
        self.end()

    def _drain(self) -> None:
        while not self._busy and not self._closed:
            nl = self._buffer.find(b"\n")
            if nl < 0:
                if self._eof:
                    self.end()
                    return
                if len(self._buffer) > MAX_LINE:
                    self._buffer = b""
                    self._discarding = True
                return
            line, self._buffer = self._buffer[:nl], self._buffer[nl + 1:]
            if self._discarding or len(line) > MAX_LINE:
                self._discarding = False
                self.write(b"-ERR line too long\r\n")
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            line = line.replace(b"\0", b"\n")  # as qmail's commands.c
            verb, _, arg = line.partition(b" ")
            d = self.command(verb, arg.lstrip(b" "))
            if d is not None:
                self._busy = True
                d.addErrback(self._crash).addBoth(self._unbusy)

    def _unbusy(self, _: object) -> None:
        self._busy = False
        self._drain()

    def _crash(self, f: Failure) -> None:
        self.log.failure("pop3: command failed", f)
        self.exitStatus = 256
        self.end()

    @abstractmethod
    def command(self, verb: bytes, arg: bytes) -> Deferred[None] | None:
        """Answer one command line (the authorization or the transaction state's grammar)."""

    def takeBuffer(self) -> bytes:
        """Input received but not yet handled (handed to a relayed child)."""
        data, self._buffer = self._buffer, b""
        return data


@implementer(IHandshakeListener)
class POP3Server(LineSession):
    """
    qmail-popup, then the transaction (docs/behaviour/pop3.md 10.1-10.3).

    @param login: how PASS/APOP are checked (L{ILogin}).
    @param hostname: the greeting's host (me, or qmail-popup's HOST argument).
    @param number: the greeting's ⟨n⟩.
    @param runInThread: for the in-process transaction's Maildir work.
    @param tlsOptions: returns server TLS options, or L{None} when there is no certificate.
    @param limiter: failed logins per client address (C{TCPREMOTEIP}); L{None}: no limit
        (C{bin/qmail-popup}, one process per connection, has nobody to share it with).
    """

    def __init__(self, login: ILogin, clock: IReactorTime, hostname: bytes, number: int,
                 runInThread: RunInThread,
                 tlsOptions: Callable[[], Any] | None = None,
                 limiter: FailureLimiter | None = None) -> None:
        super().__init__(clock)
        self.login = login
        self.hostname = hostname
        self.number = number
        self.runInThread = runInThread
        self.tlsOptions = tlsOptions or (lambda: None)
        self.limiter = limiter
        self.user: bytes | None = None
        self.timestamp = b""
        self.tls = False
        self.transaction: Transaction | None = None
        self.relay: Relay | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.tls = ISSLTransport.providedBy(self.transport)
        self.timestamp = b"<%d.%d@%s>" % (self.number, int(self.clock.seconds()), self.hostname)
        self.write(b"+OK " + self.timestamp + b"\r\n")

    def handshakeCompleted(self) -> None:
        """The TLS handshake of STLS or of a POP3S endpoint is done: one C{pop3: tls IP
        PROTOCOL CIPHER} line, the SMTP listener's (L{qmtwist.tlslog.logTLS})."""
        logTLS(self.log, "pop3", self.env, self.transport)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        if self.relay is not None:
            self.relay.clientGone()

    def readConnectionLost(self) -> None:
        if self.relay is not None:
            self.relay.clientGone()  # the child answers what it got, then exits
            return
        super().readConnectionLost()

    def dataReceived(self, data: bytes) -> None:
        if self.relay is not None:
            self.resetTimeout()
            self.relay.fromClient(data)
            return
        super().dataReceived(data)

    def command(self, verb: bytes, arg: bytes) -> Deferred[None] | None:
        if self.transaction is not None:
            return self.transaction.line(verb, arg)
        v = verb.lower()
        if v == b"user":
            if not arg:
                self.write(SYNTAX)
                return None
            self.user = arg
            self.write(OK)
        elif v == b"pass":
            if self.user is None:
                self.write(b"-ERR USER first\r\n")
            elif not arg:
                self.write(SYNTAX)
            else:
                return self._login(self.user, arg, False)
        elif v == b"apop":
            name, space, digest = arg.partition(b" ")
            if not space:
                self.write(SYNTAX)
                return None
            return self._login(name, digest, True)
        elif v == b"quit":
            self.write(OK)
            self.end()
        elif v == b"noop":
            self.write(OK)
        elif v == b"capa":
            stls = b"STLS\r\n" if not self.tls and self.tlsOptions() is not None else b""
            self.write(OK + b"TOP\r\nUIDL\r\nUSER\r\n" + stls + b".\r\n")
        elif v == b"stls":
            options = None if self.tls else self.tlsOptions()
            if options is None:
                self.write(UNIMPLEMENTED)
            else:
                self.write(OK)
                self.transport.startTLS(options)
                self.tls = True
                self.user = None
                self.takeBuffer()  # plaintext sent after STLS is not to be trusted
        else:
            self.write(b"-ERR authorization first\r\n")
        return None

    # -- login

    def startRelay(self, relay: Relay) -> None:
        """Called by the login once a child serves the session: relay from now on."""
        self.relay = relay
        pending = self.takeBuffer()
        if pending:
            relay.fromClient(pending)

    def _clientIP(self) -> str:
        return self.env.get("TCPREMOTEIP", b"unknown").decode("ascii", "replace")

    def _limitKey(self) -> str | None:
        ip = self.env.get("TCPREMOTEIP")
        return addressKey(ip) if self.limiter is not None and ip else None

    def _login(self, user: bytes, password: bytes, apop: bool) -> Deferred[None] | None:
        key = self._limitKey()
        if key is not None and self.limiter is not None and self.limiter.refusedFor(key) > 0:
            # not even checked: guessing from this address has to wait
            self.log.info("pop3: too many failed logins from {ip}; refused {name} unchecked",
                          ip=self._clientIP(), name=logSafe(user))
            self.write(TOO_MANY)
            self.exitStatus = 256
            self.end()
            return None
        d = self.login.start(self, user, password, self.timestamp, apop)
        return d.addCallback(self._loggedIn, user)

    def _loggedIn(self, outcome: tuple[Result, str | None], user: bytes) -> Deferred[None] | None:
        result, maildir = outcome
        if result is Result.SERVE:
            assert maildir is not None
            self.transaction = Transaction(maildir, self.runInThread, self.clock, self.write,
                                           self.end)
            return self.transaction.start()
        if result is Result.DONE:
            self.end()
            return None
        if result is Result.CRASHED:
            self.write(CRASHED)
            self.exitStatus = 256
            self.end()
            return None
        self.log.info("pop3: authorization failed for {name} from {ip}",
                      name=logSafe(user), ip=self._clientIP())
        key = self._limitKey()
        if key is not None and self.limiter is not None:
            period = self.limiter.failed(key)
            if period:
                self.log.info("pop3: too many failed logins from {ip}; refusing logins from "
                              "{key} for {period} seconds", ip=self._clientIP(), key=key,
                              period=int(period))
        self.exitStatus = 256
        d: Deferred[None] = Deferred()

        def refuse() -> None:
            self.write(AUTH_FAILED)
            self.end()
            d.callback(None)

        self.clock.callLater(FAIL_DELAY, refuse)
        return d


class Pop3dServer(LineSession):
    """C{bin/qmail-pop3d MAILDIR} on stdio: the transaction state only."""

    def __init__(self, maildir: str, clock: IReactorTime, runInThread: RunInThread) -> None:
        super().__init__(clock)
        self.transaction = Transaction(maildir, runInThread, clock, self.write, self.end)

    def connectionMade(self) -> None:
        super().connectionMade()
        self._busy = True
        self.transaction.start().addBoth(self._unbusy)

    def command(self, verb: bytes, arg: bytes) -> Deferred[None] | None:
        return self.transaction.line(verb, arg)


class POP3Factory(ServerFactory):
    """
    Builds L{POP3Server} sessions; the greeting's host is me, read per connection.

    @param ctx: a L{qmtwist.context.Context}.
    @param login: the L{ILogin} strategy.
    @param tlsOptions: see L{POP3Server}.
    @param limiter: the failed-login limit shared by this listener's sessions (default: 3
        failures a minute, see L{FailureLimiter}, on the context's reactor).
    """

    def __init__(self, ctx: Context, login: ILogin, tlsOptions: Callable[[], Any] | None,
                 limiter: FailureLimiter | None = None) -> None:
        self.ctx = ctx
        self.login = login
        self.tlsOptions = tlsOptions
        self.limiter = limiter if limiter is not None else FailureLimiter(ctx.reactor)
        self._numbers = itertools.count(1)

    def buildProtocol(self, addr: Any) -> POP3Server:
        me = self.ctx.controls.current().me
        p = POP3Server(self.login, self.ctx.reactor, me, next(self._numbers), self.ctx.runInThread,
                       self.tlsOptions, self.limiter)
        p.factory = self
        return p
