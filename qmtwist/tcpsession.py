"""
What tcpserver does with each accepted connection (docs/behaviour/tcpserver.md 8.2-8.5), as a
L{twisted.protocols.policies.WrappingFactory}: L{SessionFactory} is the factory the listening
port sees, and each connection is a L{Session} (a L{ProtocolWrapper}) in front of the session
protocol (SMTP, QMTP, POP3), which it builds only once the connection may start.

A connection goes through these steps, in order:

1. the per-address limit (8.3): over it, the connection gets C{overLimit} and is closed, with
   one C{deny N ... per-ip limit L} line and no slot taken;
2. the concurrency limit (8.3): at the limit it is held (its transport paused, the port not
   reading) until a slot frees; then it gets its number and the C{status} and C{pid} lines;
3. the control files and the rules file are checked on a thread (docs/behaviour/control.md
   2.2), so the reactor never stats or opens them; then the host name is looked up if a rule
   needs it (8.4, L{qmtwist.ptr});
4. the rules decide (8.2): C{deny} closes it (C{deny N} line); C{allow} logs C{ok N}, builds the
   session protocol, sets its C{env} (8, the tcp-environ) and connects it, with the L{Session}
   as its transport (startTLS and the rest pass through to the real one), then hands it what the
   client sent meanwhile;
5. the close logs C{end N status S}: the protocol's C{exitStatus} if set, else 0 for a clean
   close and 256 otherwise (8.5).

A client's half-close reaches a session protocol that handles one (a QMTP client that shuts
down its sending side still gets the answers of its last packages); otherwise it closes.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IHalfCloseableProtocol, IHandshakeListener, IProtocol, ISSLTransport)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from qmtwist.nodelay import setNoDelay
from qmtwist.ptr import LookupHost
from qmtwist.tcprules import Decision, RulesFile, RuleSet

if TYPE_CHECKING:
    from qmtwist.context import Context


def plainIP(host: str) -> str:
    """An IPv4 peer seen on a dual-stack socket (C{::ffff:10.0.0.1}) as the IPv4 rules see it."""
    if host.lower().startswith("::ffff:") and "." in host:
        try:
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
        except ValueError:
            return host
        if mapped is not None:
            return str(mapped)
    return host


def sessionEnv(local: Any, peer: Any, me: bytes, host: str | None,
               decision: Decision) -> dict[str, bytes]:
    """The tcp-environ of an allowed session (docs/behaviour/tcpserver.md 8), rule applied."""
    env: dict[str, bytes] = {
        "TCPLOCALIP": plainIP(str(getattr(local, "host", ""))).encode(),
        "TCPLOCALPORT": str(getattr(local, "port", "")).encode(),
        "TCPLOCALHOST": me,
        "TCPREMOTEIP": plainIP(getattr(peer, "host", "")).encode(),
        "TCPREMOTEPORT": str(getattr(peer, "port", "")).encode(),
        "PROTO": b"TCP",
    }
    if host is not None:
        env["TCPREMOTEHOST"] = host.encode("ascii", "replace")
    return decision.apply(env)


@implementer(IHalfCloseableProtocol)
@implementer(IHandshakeListener)
class Session(ProtocolWrapper):
    """
    One accepted connection: held and checked by its L{SessionFactory}, then the transport of
    the session protocol (L{attach}). Data that arrives before that is kept for it, and so is
    the end of a TLS handshake (passed on to a session protocol that is an
    L{IHandshakeListener}).
    """

    factory: SessionFactory
    transport: Any  # the real transport (tcp, TLS or a test's StringTransport)

    def __init__(self, factory: SessionFactory, addr: Any) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]  # built by attach()
        self.addr = addr
        self.number = 0
        self.started = False
        self.denied = False
        self.ip = ""
        self.closed = False
        self._early: list[bytes] = []
        self._readClosed = False
        self._handshook = False

    def handshakeCompleted(self) -> None:
        if self.wrappedProtocol is None:
            self._handshook = True
        elif IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()  # type: ignore[attr-defined]

    def logPrefix(self) -> str:
        return self.__class__.__name__

    def makeConnection(self, transport: Any) -> None:
        # ProtocolWrapper's, except that the session protocol is connected later by attach()
        directlyProvides(self, providedBy(transport))
        setNoDelay(transport)  # every reply is one whole write (tcpserver.md 8.3)
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self.factory.arrived(self)

    def attach(self, inner: IProtocol) -> None:
        """Connect the session protocol, with this wrapper as its transport."""
        self.wrappedProtocol = inner
        inner.makeConnection(self)  # type: ignore[arg-type]  # it provides the transport's
        if self._handshook:
            self._handshook = False
            self.handshakeCompleted()
        early, self._early = self._early, []
        for data in early:
            if self.closed:
                break
            inner.dataReceived(data)
        if self._readClosed and not self.closed:
            self._forwardReadLost()

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
        elif not self.denied:
            self._early.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.closed = True
        self.factory.unregisterProtocol(self)
        inner = self.wrappedProtocol
        if inner is not None:
            inner.connectionLost(reason)
        self.factory.left(self, inner, reason)
        self.wrappedProtocol = None  # type: ignore[assignment]

    def readConnectionLost(self) -> None:
        if self.wrappedProtocol is None:
            self._readClosed = not self.denied
            return
        self._forwardReadLost()

    def writeConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.writeConnectionLost()  # type: ignore[attr-defined]

    def _forwardReadLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.readConnectionLost()  # type: ignore[attr-defined]
        elif self.transport is not None:
            self.transport.loseConnection()


class SessionFactory(WrappingFactory):
    """
    The listening port's factory: the limits, the rules, the environment and the connection
    log of one listener (see the module docstring).

    @ivar port: the listening port (L{listeningOn}), paused at the concurrency limit.
    @ivar active: sessions counted against the limit.
    @ivar listener: the listener's name (C{smtp}, C{qmtp}, C{pop3}), for the observers.
    @ivar observers: L{qmtwist.interfaces.ISessionObserver}s told of each allowed session.
    """

    noisy = False  # the wrapped factory says "Starting factory" already

    def __init__(self, wrappedFactory: Factory, ctx: Context, log: Logger, rules: RulesFile,
                 lookupHost: LookupHost, concurrency: int, perIP: int,
                 overLimit: bytes) -> None:
        super().__init__(wrappedFactory)
        self.ctx = ctx
        self.log = log
        self.rules = rules
        self.lookupHost = lookupHost
        self.concurrency = max(1, concurrency)
        self.perIP = max(0, perIP)
        self.overLimit = overLimit
        self.port: Any = None
        self.active = 0
        self._held: deque[Session] = deque()
        # sessions (started or held) per client address, for the per-address limit
        self._perAddress: dict[str, int] = {}
        self._numbers = itertools.count(1)
        self._portPaused = False
        self.listener = ""
        self.observers: list[Any] = []

    def buildProtocol(self, addr: Any) -> Session:
        return Session(self, addr)

    def logStatus(self) -> None:
        """The C{tcpserver: status: A/L} line (docs/behaviour/tcpserver.md 8.5)."""
        self.log.info("tcpserver: status: {active}/{limit}", active=self.active,
                      limit=self.concurrency)

    def listeningOn(self, port: Any) -> None:
        """The service's port is now C{port} (L{None}: stopped); it reads only below the limit."""
        self.port, self._portPaused = port, False
        self._pausePort(self.active >= self.concurrency)

    def _pausePort(self, pause: bool) -> None:
        if self.port is None or pause == self._portPaused:
            return
        self._portPaused = pause
        fn = getattr(self.port, "stopReading" if pause else "startReading", None)
        if fn is not None:
            fn()

    # -- arrival: the per-address limit, then a slot or the queue of held connections --------

    def arrived(self, s: Session) -> None:
        """A new connection (from L{Session.makeConnection})."""
        s.ip = plainIP(getattr(s.transport.getPeer(), "host", ""))
        count = self._perAddress.get(s.ip, 0)
        if self.perIP and s.ip and count >= self.perIP:  # (a peer without an address: no limit)
            self._refuseOverLimit(s)
            return
        self._perAddress[s.ip] = count + 1
        if self.active >= self.concurrency:
            s.transport.pauseProducing()
            self._held.append(s)
            self._pausePort(True)
            return
        self._start(s)

    def _refuseOverLimit(self, s: Session) -> None:
        """Refuse a connection from an address that holds its share: no slot, no session."""
        s.denied = True
        peer = s.transport.getPeer()
        local = s.transport.getHost()
        me = self.ctx.controls.current().me
        self.log.info(
            "tcpserver: deny {n} {me}:{lip}:{lport} :{ip}::{port} per-ip limit {limit}",
            n=next(self._numbers), me=me.decode("ascii", "replace"),
            lip=getattr(local, "host", ""), lport=getattr(local, "port", ""), ip=s.ip,
            port=getattr(peer, "port", ""), limit=self.perIP)
        if self.overLimit:
            s.transport.write(self.overLimit)
        s.transport.loseConnection()

    def _start(self, s: Session) -> None:
        s.started = True
        self.active += 1
        s.number = next(self._numbers)
        self.logStatus()
        if self.active >= self.concurrency:
            self._pausePort(True)
        s.transport.pauseProducing()
        ip = plainIP(getattr(s.transport.getPeer(), "host", ""))
        self.log.info("tcpserver: pid {n} from {ip}", n=s.number, ip=ip)
        d = self._fresh()
        d.addCallback(self._checkRules, s, ip)
        d.addErrback(self._decisionFailed, s)

    # -- the decision ------------------------------------------------------------------------

    def _fresh(self) -> Deferred[list[str]]:
        """
        Check the control files and the rules file on threads, at the same time, so the
        session sees them as they are now; fires with the rules' warning lines. Without a
        thread runner (tests' stand-ins) the rules are checked here.
        """
        runInThread = getattr(self.ctx, "runInThread", None)
        if runInThread is None:
            return succeed(self.rules.current()[1])
        rules = self.rules.refresh(runInThread)
        refresh = getattr(self.ctx.controls, "refresh", None)
        if refresh is None:
            return rules
        both = gatherResults([refresh(runInThread), rules], consumeErrors=True)
        return both.addCallback(lambda results: results[1])

    def _checkRules(self, warnings: list[str], s: Session, ip: str) -> None:
        for line in warnings:
            self.log.warn("{line}", line=line)
        if s.closed:
            return
        ruleSet = self.rules.ruleSet
        if ruleSet.needsHostname and ip:
            d = self.lookupHost(ip)
            d.addCallback(lambda host: self._decide(s, ruleSet, host))
            d.addErrback(self._decisionFailed, s)
        else:
            self._decide(s, ruleSet, None)

    def _decisionFailed(self, f: Failure, s: Session) -> None:
        self.log.failure("rules decision failed", f)
        if not s.closed:
            s.transport.loseConnection()

    def _decide(self, s: Session, ruleSet: RuleSet, host: str | None) -> None:
        if s.closed:
            return
        peer = s.transport.getPeer()
        local = s.transport.getHost()
        ip = plainIP(getattr(peer, "host", ""))
        me = self.ctx.controls.current().me
        fields = "%s:%s:%s %s:%s::%s" % (
            me.decode("ascii", "replace"), getattr(local, "host", ""), getattr(local, "port", ""),
            host or "", ip, getattr(peer, "port", ""))
        decision = ruleSet.match(ip, host)
        if not decision.allow:
            s.denied = True
            self.log.info("tcpserver: deny {n} {fields}", n=s.number, fields=fields)
            s.transport.loseConnection()
            return
        self.log.info("tcpserver: ok {n} {fields}", n=s.number, fields=fields)
        inner = self.wrappedFactory.buildProtocol(peer)
        if inner is None:
            s.transport.loseConnection()
            return
        inner.env = sessionEnv(local, peer, me, host, decision)
        for o in self.observers:
            o.sessionStarted("inbound", self.listener)
        s.attach(inner)
        if not s.closed:
            s.transport.resumeProducing()

    # -- the end -----------------------------------------------------------------------------

    def _release(self, s: Session) -> None:
        count = self._perAddress.get(s.ip, 0) - 1
        if count > 0:
            self._perAddress[s.ip] = count
        else:
            self._perAddress.pop(s.ip, None)

    def left(self, s: Session, inner: IProtocol | None, reason: Failure) -> None:
        """A connection closed (from L{Session.connectionLost}): log it, free its slot."""
        if not s.started:
            try:
                self._held.remove(s)
            except ValueError:
                return  # refused over the per-address limit: it was never counted
            self._release(s)
            return
        self._release(s)
        status = 256
        if not s.denied and inner is not None:
            exitStatus = getattr(inner, "exitStatus", None)
            status = exitStatus if exitStatus is not None else (
                0 if reason.check(ConnectionDone) else 256)
            tls = bool(getattr(inner, "tls", False)) or ISSLTransport.providedBy(s.transport)
            for o in self.observers:
                o.sessionEnded("inbound", self.listener, tls)
        self.log.info("tcpserver: end {n} status {status}", n=s.number, status=status)
        self.active -= 1
        self.logStatus()
        while self._held and self.active < self.concurrency:
            nxt = self._held.popleft()
            if not nxt.closed:
                self._start(nxt)
        if self.active < self.concurrency:
            self._pausePort(False)
