"""
A listener that behaves like djb's tcpserver (docs/behaviour/tcpserver.md 8): access rules, a
concurrency limit, C{tcpserver -v} log lines and the tcp-environ handed to each session. Shared
by the SMTP, QMTP and POP3 listeners.

Use::

    service = makeListener(ctx, "qmtp", "tcp:2209:interface=127.0.0.1", home.sub("rules", "qmtp"),
                           40, QMTPFactory(ctx))

The pieces are Twisted's: L{TCPServerService} is a
L{twisted.application.internet.StreamServerEndpointService} on the endpoint string, and the
port's factory is a L{qmtwist.tcpsession.SessionFactory} (a
L{twisted.protocols.policies.WrappingFactory}) around C{protocolFactory}, an ordinary
L{twisted.internet.protocol.Factory}. For each connection that the limits and rules allow, it
calls C{protocolFactory.buildProtocol(addr)}, sets the attribute C{env: dict[str, bytes]} on the
protocol, and connects it through its L{qmtwist.tcpsession.Session} wrapper (so
C{transport.startTLS} works). C{env} holds C{TCPLOCALIP}, C{TCPLOCALPORT}, C{TCPLOCALHOST}
(= me), C{TCPREMOTEIP}, C{TCPREMOTEPORT}, C{TCPREMOTEHOST} (only when looked up,
docs/behaviour/tcpserver.md 8.4, by L{qmtwist.ptr}), C{PROTO=TCP}, then the rule's variables
(C{RELAYCLIENT}, C{DATABYTES}, ...; C{!VAR} removes one). The protocol may set C{exitStatus}
(int) before it closes the connection; it becomes the C{end N status S} field (otherwise 0 for a
clean close, 256 for a lost connection).

Concurrency (C{tcpserver -c}): when the limit is reached the listening port stops accepting, so
new clients wait in the kernel's backlog with no greeting. Connections that the reactor already
accepted in the same batch are held: their transport is paused and the wrapped protocol is not
built until a slot frees. Denied connections count until they are closed.

Per-address limit [qmtwist] (C{--smtp-per-ip N} and friends, default 10, 0 = none): one client
address may hold at most that many sessions (held ones included). A connection over it is refused
at once, before the rules are consulted and without taking a slot: it is logged
C{tcpserver: deny N ... per-ip limit L}, gets the listener's C{overLimit} bytes (SMTP: a 421
line; QMTP and POP3: nothing) and is closed.

Before each connection is decided, C{ctx.controls.refresh} (L{qmtwist.context.ControlCache})
and L{qmtwist.tcprules.RulesFile.refresh} check the control files, C{servercert.pem} and the
rules file on threads, so the session gets them as they are now without the reactor ever
stat-ing or opening one (no thread job when their inotify watches, C{ctx.watches}, say that
nothing changed: docs/behaviour/control.md 2.4). L{reload} (SIGHUP; plugin.py appends it to
C{ctx.reloaders}) rereads the rules file, on a thread too.

Log lines (namespace C{qmtwist.NAME}): C{tcpserver: status: A/L}, C{tcpserver: pid N from IP},
C{tcpserver: ok N ...}, C{tcpserver: deny N ...}, C{tcpserver: end N status S}; once bound,
C{NAME: listening on HOST:PORT} (the real port, also for C{tcp:0}) [qmtwist]; and
C{alert: cannot start: unable to listen on ENDPOINT: REASON} when binding fails (startService
then raises). An C{ssl:} endpoint without C{privateKey=} serves C{control/servercert.pem}; it
does not start when that file's key is not its certificate's.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, Service
from twisted.internet.address import IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from qmtwist.ptr import LookupHost, makeHostLookup
from qmtwist.startup import markReported, splitTLS
from qmtwist.tcprules import RulesFile
from qmtwist.tcpsession import SessionFactory, plainIP

__all__ = ["LookupHost", "TCPServerService", "makeListener", "plainIP"]

if TYPE_CHECKING:
    from qmtwist.context import Context


def describeAddress(address: Any) -> str:
    """A bound address for the log: C{127.0.0.1:2525}, C{[::1]:2525}, a UNIX path."""
    if isinstance(address, UNIXAddress):
        name = address.name
        return os.fsdecode(name) if name is not None else "(unnamed)"
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    if isinstance(address, IPv6Address) or ":" in str(host):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


@implementer(IStreamServerEndpoint)
class ListenerEndpoint:
    """
    The listener's endpoint string, parsed when the service starts (an C{ssl:} endpoint loads
    its certificate then); a failure to parse or to bind gives the C{alert: cannot start} line.

    @param service: the L{TCPServerService} (its context, description and log).
    """

    def __init__(self, service: TCPServerService) -> None:
        self.service = service

    def _description(self) -> str:
        # ssl: without a key serves control/servercert.pem (docs/commands.md: ssl: gives SMTPS/POP3S)
        desc = self.service.description
        home = getattr(self.service.ctx, "home", None)
        if desc.startswith("ssl:") and "privateKey=" not in desc and home is not None:
            pem = os.path.join(home.control, "servercert.pem")
            desc += ":privateKey=" + pem.replace("\\", "\\\\").replace(":", "\\:")
        return desc

    def _checkServerCert(self) -> None:
        """
        An C{ssl:} endpoint that serves C{control/servercert.pem} refuses to start, with one
        line naming the file, when that file's key is not its certificate's (Twisted would
        only say that the keys do not match) or it is not a regular file
        (docs/behaviour/tcpserver.md 8.5).

        @raise ValueError: the reason for the C{alert: cannot start} line.
        """
        from qmtwist.control import NotRegularFile
        from qmtwist.tls import KeyMismatch, loadServerOptions

        desc = self.service.description
        home = getattr(self.service.ctx, "home", None)
        if not desc.startswith("ssl:") or "privateKey=" in desc or home is None:
            return
        try:
            loadServerOptions(os.path.join(home.control, "servercert.pem"))
        except KeyMismatch as e:
            raise ValueError(f"control/servercert.pem: {e}") from None
        except NotRegularFile:
            raise ValueError("control/servercert.pem is not a regular file") from None
        except (OSError, ValueError):
            pass  # missing or unreadable: the endpoint's own error says so

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        try:
            self._checkServerCert()
            description, tls = splitTLS(self._description())
            endpoint = serverFromString(self.service.ctx.reactor, description)
            if tls:  # a systemd: socket for SMTPS or POP3S (docs/behaviour/operations.md 21.3)
                protocolFactory = self._tlsFactory(protocolFactory)
            d: Deferred[IListeningPort] = endpoint.listen(protocolFactory)
        except Exception:
            d = fail()
        return d.addErrback(self._failed)

    def _tlsFactory(self, protocolFactory: IProtocolFactory) -> IProtocolFactory:
        """TLS from the first byte with C{control/servercert.pem}, as an C{ssl:} endpoint."""
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from qmtwist.tls import KeyMismatch, loadServerOptions

        try:
            options = loadServerOptions(os.path.join(self.service.ctx.home.control,
                                                     "servercert.pem"))
        except KeyMismatch as e:
            raise ValueError(f"control/servercert.pem: {e}") from None
        except OSError as e:
            raise ValueError(f"control/servercert.pem: {e.strerror}") from None
        return TLSMemoryBIOFactory(options, False, protocolFactory)  # type: ignore[arg-type]

    def _failed(self, f: Failure) -> Failure:
        reason = str(f.value) or f.getErrorMessage()
        self.service.log.critical("alert: cannot start: unable to listen on {endpoint}: {reason}",
                                  endpoint=self.service.description, reason=reason)
        markReported(f.value)  # the daemon's StartGuard exits with status 1, no traceback
        return f


class TCPServerService(StreamServerEndpointService):
    """
    See the module docstring.

    @ivar description: the endpoint string.
    @ivar port: the listening port once bound (L{qmtwist.remote.ipme.boundAddress} reads it for
        the remote self check), else L{None}.
    @ivar factory: the L{SessionFactory} the port sees.
    """

    def __init__(self, ctx: Context, name: str, endpoint: str, rulesPath: str | None,
                 concurrency: int, protocolFactory: Any,
                 lookupHost: LookupHost | None = None, perIP: int = 10,
                 overLimit: bytes = b"") -> None:
        self.ctx = ctx
        #: the protocol (log lines); the service name is made unique when a protocol has several
        self.kind = name
        self.setName(name)
        self.description = endpoint
        self.log = Logger(namespace=f"qmtwist.{name}")
        self.rules = RulesFile(rulesPath, name, getattr(ctx, "watches", None))
        self.port: Any = None
        factory = SessionFactory(protocolFactory, ctx, self.log, self.rules,
                                 lookupHost or makeHostLookup(ctx.reactor), concurrency, perIP,
                                 overLimit)
        factory.listener = name
        super().__init__(ListenerEndpoint(self), factory)
        for line in self.rules.reload():
            self.log.warn("{line}", line=line)

    # the limits and counters live in the factory; the service shows them
    concurrency = property(lambda self: self.factory.concurrency)
    perIP = property(lambda self: self.factory.perIP)
    active = property(lambda self: self.factory.active)
    _perAddress = property(lambda self: self.factory._perAddress)

    # -- service -------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # a bind failure makes (privileged)startService raise, so twistd does not start (each
        # time: Twisted's clears the flag after a start)
        self._raiseSynchronously = True
        try:
            super().privilegedStartService()
        except BaseException:
            self._waitingForPort = None  # not listening: a later start tries again
            raise
        assert self._waitingForPort is not None
        self._waitingForPort.addCallback(self._listening)

    def startService(self) -> None:
        if self._waitingForPort is None:
            self.privilegedStartService()  # raises before the service counts as running
        Service.startService(self)
        self.factory.logStatus()

    def _listening(self, port: Any) -> Any:
        if port is not None:  # (None: the listen failed later and was logged)
            self.port = port
            self.factory.listeningOn(port)
            self.log.info("{name}: listening on {address}", name=self.kind,
                          address=describeAddress(port.getHost()))
        return port

    def stopService(self) -> Deferred[None] | None:
        self.port = None
        self.factory.listeningOn(None)
        if self._waitingForPort is None:
            Service.stopService(self)
            return None
        d: Deferred[None] = super().stopService()
        self._waitingForPort = None  # a later start listens again
        return d

    def reload(self) -> None:
        """Reread the rules file (SIGHUP), on a thread when the context has a runner."""
        runInThread = getattr(self.ctx, "runInThread", None)
        if runInThread is None:
            self._warn(self.rules.reload())
            return
        d = self.rules.refresh(runInThread, force=True)
        d.addCallbacks(self._warn, lambda f: self.log.failure("rules reload failed", f))

    def _warn(self, lines: list[str]) -> None:
        for line in lines:
            self.log.warn("{line}", line=line)


def makeListener(ctx: Context, name: str, endpoint: str, rulesPath: str | None, concurrency: int,
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
    @param lookupHost: PTR lookup for C{=host} rules (L{qmtwist.ptr.makeHostLookup}; the
        daemon passes one on its C{--dns} resolver; default: the system's).
    @param perIP: the most sessions one client address may hold; 0 = no such limit.
    @param overLimit: what a connection over C{perIP} is sent before it is closed.
    """
    return TCPServerService(ctx, name, endpoint, rulesPath, concurrency, protocolFactory,
                            lookupHost, perIP, overLimit)
