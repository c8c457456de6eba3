"""
A listener that behaves like djb's tcpserver (docs/behaviour/tcpserver.md 8): access rules, a concurrency
limit,
C{tcpserver -v} log lines and the tcp-environ handed to each session. Shared by the SMTP, QMTP and
POP3 listeners.

Use::

    service = makeListener(ctx, "qmtp", "tcp:2209:interface=127.0.0.1", home.sub("rules", "qmtp"),
                           40, QMTPFactory(ctx))

C{protocolFactory} is an ordinary L{twisted.internet.protocol.Factory}. For each connection that
the rules allow, the listener calls C{protocolFactory.buildProtocol(addr)}, sets the attribute
C{env: dict[str, bytes]} on the protocol, and then calls C{protocol.makeConnection(transport)}
with the real transport (so C{transport.startTLS} works). C{env} holds C{TCPLOCALIP},
C{TCPLOCALPORT}, C{TCPLOCALHOST} (= me), C{TCPREMOTEIP}, C{TCPREMOTEPORT}, C{TCPREMOTEHOST} (only
when looked up, docs/behaviour/tcpserver.md 8.4), C{PROTO=TCP}, then the rule's variables (C{RELAYCLIENT},
C{DATABYTES}, ...; C{!VAR} removes one). The protocol may set C{exitStatus} (int) before it closes
the connection; it becomes the C{end N status S} field (otherwise 0 for a clean close, 256 for a
lost connection).

Concurrency (C{tcpserver -c}): when the limit is reached the listening port stops accepting, so
new clients wait in the kernel's backlog with no greeting. Connections that the reactor already
accepted in the same batch are held: their transport is paused and the wrapped protocol is not
built until a slot frees. Denied connections count until they are closed.

Per-address limit [qmtwist] (C{--smtp-per-ip N} and friends, default 10, 0 = none): one client
address may hold at most that many sessions (held ones included). A connection over it is refused
at once, before the rules are consulted and without taking a slot: it is logged
C{tcpserver: deny N ... per-ip limit L}, gets the listener's C{overLimit} bytes (SMTP: a 421
line; QMTP and POP3: nothing) and is closed.

Rules are reread for a new connection when the file's mtime changed, and by L{reload} (SIGHUP;
makeListener appends it to C{ctx.reloaders}). Before that, each connection waits for
C{ctx.controls.refresh} (L{qmtwist.context.ControlCache}), which rereads changed control files
and C{servercert.pem} on a thread, so that the session gets them as they are now without the
reactor ever opening a control file.

Log lines (namespace C{qmtwist.NAME}): C{tcpserver: status: A/L}, C{tcpserver: pid N from IP},
C{tcpserver: ok N ...}, C{tcpserver: deny N ...}, C{tcpserver: end N status S}, and
C{alert: cannot start: unable to listen on ENDPOINT: REASON} when binding fails (startService
then raises). An C{ssl:} endpoint without C{privateKey=} serves C{control/servercert.pem}; it
does not start when that file's key is not its certificate's.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import socket
from collections import deque
from typing import Any, Callable

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from qmtwist.tcprules import RulesFile

LookupHost = Callable[[str], "Deferred[str | None]"]


def plainIP(host: str) -> str:
    """An IPv4 peer seen on a dual-stack socket (C{::ffff:10.0.0.1}) as the IPv4 rules see it."""
    if host.lower().startswith("::ffff:") and "." in host:
        import ipaddress

        try:
            mapped = ipaddress.IPv6Address(host).ipv4_mapped
        except ValueError:
            return host
        if mapped is not None:
            return str(mapped)
    return host


def _reverseName(ip: str) -> str | None:
    if ":" in ip:
        import ipaddress

        try:
            return ipaddress.ip_address(ip).reverse_pointer
        except ValueError:
            return None
    parts = ip.split(".")
    if len(parts) != 4:
        return None
    return ".".join(reversed(parts)) + ".in-addr.arpa"


_HOSTCHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-")


def makeHostLookup(reactor: Any, resolver: Any = None) -> LookupHost:
    """
    A PTR lookup for C{TCPREMOTEHOST}: the lower-cased name, only when it is a plain host name
    that resolves back to the client's address (tcpserver -p: anybody can publish any PTR name
    for their own addresses); L{None} on any failure (5 s timeouts).

    @param resolver: an C{IResolver}; default: C{twisted.names.client.createResolver}.
    """
    state: dict[str, Any] = {"resolver": resolver}

    def lookup(ip: str) -> Deferred[str | None]:
        name = _reverseName(ip)
        if name is None:
            return succeed(None)
        if state["resolver"] is None:
            from twisted.names import client

            state["resolver"] = client.createResolver(reactor=reactor)
        resolver = state["resolver"]
        d = resolver.lookupPointer(name, timeout=(5,))

        def got(result: Any) -> Deferred[str | None] | None:
            for rr in result[0]:
                target = getattr(rr.payload, "name", None)
                if target is not None:
                    host = str(target).lower().rstrip(".")
                    if not host or not set(host) <= _HOSTCHARS:
                        return None
                    return _confirm(host)
            return None

        def _confirm(host: str) -> Deferred[str | None]:
            # tcpserver -p: a PTR name counts only if it resolves back to the client
            lookup = resolver.lookupIPV6Address if ":" in ip else resolver.lookupAddress

            def check(result: Any) -> str | None:
                want = ipaddress.ip_address(ip)
                for rr in result[0]:
                    payload = rr.payload
                    try:
                        if hasattr(payload, "dottedQuad"):
                            address = payload.dottedQuad()
                        else:
                            address = socket.inet_ntop(socket.AF_INET6, payload.address)
                        if ipaddress.ip_address(address) == want:
                            return host
                    except (AttributeError, ValueError, OSError):
                        continue
                return None

            return lookup(host, timeout=(5,)).addCallbacks(check, lambda f: None)

        return d.addCallbacks(got, lambda f: None)

    return lookup


@implementer(IHalfCloseableProtocol)
class _Session(Protocol):
    """
    The protocol the port sees: holds the connection, then feeds the wrapped protocol.

    A client's half-close reaches a wrapped protocol that handles one (a QMTP client that shuts
    down its sending side still gets the answers of its last packages); otherwise it closes.
    """

    def __init__(self, server: TCPServerService, addr: Any) -> None:
        self.server = server
        self.addr = addr
        self.number = 0
        self.inner: Protocol | None = None
        self.started = False
        self.denied = False
        self.ip = ""
        self.closed = False
        self._early: list[bytes] = []
        self._readClosed = False

    def connectionMade(self) -> None:
        self.server._arrived(self)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
        elif not self.denied:
            self._early.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self.closed = True
        if self.inner is not None:
            self.inner.connectionLost(reason)
        self.server._left(self, reason)

    def readConnectionLost(self) -> None:
        if self.inner is None:
            self._readClosed = not self.denied
            return
        self._forwardReadLost()

    def writeConnectionLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.inner):
            self.inner.writeConnectionLost()

    def _forwardReadLost(self) -> None:
        if IHalfCloseableProtocol.providedBy(self.inner):
            self.inner.readConnectionLost()
        elif self.transport is not None:
            self.transport.loseConnection()

    def attach(self, inner: Protocol) -> None:
        self.inner = inner
        inner.makeConnection(self.transport)
        early, self._early = self._early, []
        for data in early:
            if self.closed:
                break
            inner.dataReceived(data)
        if self._readClosed and not self.closed:
            self._forwardReadLost()


class _SessionFactory(Factory):
    def __init__(self, server: TCPServerService) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> _Session:
        return _Session(self.server, addr)


class TCPServerService(Service):
    """
    See the module docstring.

    @ivar port: the listening port once started.
    @ivar active: sessions counted against the limit.
    """

    def __init__(self, ctx: Any, name: str, endpoint: str, rulesPath: str | None,
                 concurrency: int, protocolFactory: Any,
                 lookupHost: LookupHost | None = None, perIP: int = 10,
                 overLimit: bytes = b"") -> None:
        self.ctx = ctx
        self.name = name
        self.endpoint = endpoint
        self.rules = RulesFile(rulesPath, name)
        self.concurrency = max(1, concurrency)
        self.perIP = max(0, perIP)
        self.overLimit = overLimit
        self.protocolFactory = protocolFactory
        self.log = Logger(namespace=f"qmtwist.{name}")
        self.lookupHost = lookupHost or makeHostLookup(ctx.reactor)
        self.port: Any = None
        self.active = 0
        self._held: deque[_Session] = deque()
        # sessions (started or held) per client address, for the per-address limit
        self._perAddress: dict[str, int] = {}
        self._numbers = itertools.count(1)
        self._portPaused = False
        for line in self.rules.reload():
            self.log.warn("{line}", line=line)

    # -- service -------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        self._listen()
        Service.privilegedStartService(self)

    def startService(self) -> None:
        if self.port is None:
            self._listen()
        Service.startService(self)
        self._status()

    def _endpointString(self) -> str:
        # ssl: without a key serves control/servercert.pem (docs/commands.md: ssl: gives SMTPS/POP3S)
        desc = self.endpoint
        home = getattr(self.ctx, "home", None)
        if desc.startswith("ssl:") and "privateKey=" not in desc and home is not None:
            pem = os.path.join(home.control, "servercert.pem")
            desc += ":privateKey=" + pem.replace("\\", "\\\\").replace(":", "\\:")
        return desc

    def _checkServerCert(self) -> None:
        """
        An C{ssl:} endpoint that serves C{control/servercert.pem} refuses to start, with one
        line naming the file, when that file's key is not its certificate's (Twisted would
        only say that the keys do not match) or it is not a regular file.

        @raise ValueError: the reason for the C{alert: cannot start} line.
        """
        from qmtwist.control import NotRegularFile
        from qmtwist.tls import KeyMismatch, loadServerOptions

        home = getattr(self.ctx, "home", None)
        if not self.endpoint.startswith("ssl:") or "privateKey=" in self.endpoint or home is None:
            return
        try:
            loadServerOptions(os.path.join(home.control, "servercert.pem"))
        except KeyMismatch as e:
            raise ValueError(f"control/servercert.pem: {e}") from None
        except NotRegularFile:
            raise ValueError("control/servercert.pem is not a regular file") from None
        except (OSError, ValueError):
            pass  # missing or unreadable: the endpoint's own error says so

    def _listen(self) -> None:
        result: list[Any] = []
        try:
            self._checkServerCert()
            ep = serverFromString(self.ctx.reactor, self._endpointString())
        except Exception:
            self._listened(Failure())
            return
        d = ep.listen(_SessionFactory(self))
        d.addBoth(result.append)
        if not result:
            d.addBoth(self._listened)
            return
        self._listened(result[0])

    def _listened(self, result: Any) -> None:
        if isinstance(result, Failure):
            reason = str(result.value) or result.getErrorMessage()
            self.log.critical(
                "alert: cannot start: unable to listen on {endpoint}: {reason}",
                endpoint=self.endpoint, reason=reason)
            result.raiseException()
        self.port = result

    def stopService(self) -> Deferred[None] | None:
        Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

    def reload(self) -> None:
        """Reread the rules file (SIGHUP)."""
        for line in self.rules.reload():
            self.log.warn("{line}", line=line)

    # -- connections ---------------------------------------------------------------------------

    def _status(self) -> None:
        self.log.info("tcpserver: status: {active}/{limit}", active=self.active,
                      limit=self.concurrency)

    def _pausePort(self, pause: bool) -> None:
        if self.port is None or pause == self._portPaused:
            return
        self._portPaused = pause
        method = "stopReading" if pause else "startReading"
        fn = getattr(self.port, method, None)
        if fn is not None:
            fn()

    def _arrived(self, s: _Session) -> None:
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

    def _refuseOverLimit(self, s: _Session) -> None:
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

    def _release(self, s: _Session) -> None:
        count = self._perAddress.get(s.ip, 0) - 1
        if count > 0:
            self._perAddress[s.ip] = count
        else:
            self._perAddress.pop(s.ip, None)

    def _start(self, s: _Session) -> None:
        s.started = True
        self.active += 1
        s.number = next(self._numbers)
        self._status()
        if self.active >= self.concurrency:
            self._pausePort(True)
        s.transport.pauseProducing()
        peer = s.transport.getPeer()
        ip = plainIP(getattr(peer, "host", ""))
        self.log.info("tcpserver: pid {n} from {ip}", n=s.number, ip=ip)
        refresh = getattr(self.ctx.controls, "refresh", None)
        runInThread = getattr(self.ctx, "runInThread", None)
        if refresh is not None and runInThread is not None:
            # The session sees the control files as they are now, read on a thread: nothing
            # here opens a control file (docs/behaviour/control.md 2.2).
            d = refresh(runInThread)
            d.addCallback(lambda _: self._checkRules(s, ip))
            d.addErrback(self._decisionFailed, s)
        else:
            self._checkRules(s, ip)

    def _checkRules(self, s: _Session, ip: str) -> None:
        if s.closed:
            return
        ruleSet, warnings = self.rules.current()
        for line in warnings:
            self.log.warn("{line}", line=line)
        if ruleSet.needsHostname and ip:
            d = self.lookupHost(ip)
            d.addCallback(lambda host: self._decide(s, ruleSet, host))
            d.addErrback(self._decisionFailed, s)
        else:
            self._decide(s, ruleSet, None)

    def _decisionFailed(self, f: Failure, s: _Session) -> None:
        self.log.failure("rules decision failed", f)
        if not s.closed:
            s.transport.loseConnection()

    def _decide(self, s: _Session, ruleSet: Any, host: str | None) -> None:
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
        env: dict[str, bytes] = {
            "TCPLOCALIP": plainIP(str(getattr(local, "host", ""))).encode(),
            "TCPLOCALPORT": str(getattr(local, "port", "")).encode(),
            "TCPLOCALHOST": me,
            "TCPREMOTEIP": ip.encode(),
            "TCPREMOTEPORT": str(getattr(peer, "port", "")).encode(),
            "PROTO": b"TCP",
        }
        if host is not None:
            env["TCPREMOTEHOST"] = host.encode("ascii", "replace")
        env = decision.apply(env)
        inner = self.protocolFactory.buildProtocol(peer)
        if inner is None:
            s.transport.loseConnection()
            return
        inner.env = env
        s.attach(inner)
        if not s.closed:
            s.transport.resumeProducing()

    def _left(self, s: _Session, reason: Failure) -> None:
        if not s.started:
            try:
                self._held.remove(s)
            except ValueError:
                return  # refused over the per-address limit: it was never counted
            self._release(s)
            return
        self._release(s)
        if s.denied or s.inner is None:
            status = 256
        else:
            status = getattr(s.inner, "exitStatus", None)
            if status is None:
                status = 0 if reason.check(ConnectionDone) else 256
        self.log.info("tcpserver: end {n} status {status}", n=s.number, status=status)
        self.active -= 1
        self._status()
        while self._held and self.active < self.concurrency:
            nxt = self._held.popleft()
            if not nxt.closed:
                self._start(nxt)
        if self.active < self.concurrency:
            self._pausePort(False)


def makeListener(ctx: Any, name: str, endpoint: str, rulesPath: str | None, concurrency: int,
                 protocolFactory: Any, lookupHost: LookupHost | None = None, perIP: int = 10,
                 overLimit: bytes = b"") -> IService:
    """
    A tcpserver-style listening service (see the module docstring).

    @param ctx: the L{qmtwist.context.Context} (reactor, controls for C{me}).
    @param name: C{"smtp"}, C{"qmtp"} or C{"pop3"}: log namespace and rules warnings.
    @param endpoint: a server endpoint string (C{tcp:2525:interface=127.0.0.1}, C{ssl:...}).
    @param rulesPath: the tcprules text file; missing = allow all.
    @param concurrency: the most simultaneous sessions.
    @param protocolFactory: builds the session protocols; each gets C{env} before
        C{makeConnection}.
    @param lookupHost: PTR lookup for C{=host} rules (default: twisted.names).
    @param perIP: the most sessions one client address may hold; 0 = no such limit.
    @param overLimit: what a connection over C{perIP} is sent before it is closed.
    """
    service = TCPServerService(ctx, name, endpoint, rulesPath, concurrency, protocolFactory,
                               lookupHost, perIP, overLimit)
    reloaders = getattr(ctx, "reloaders", None)
    if reloaders is not None:
        reloaders.append(service.reload)
    return service
