"""
The connection handling the SMTP and the QMTP client share (docs/behaviour/remote.md 11.3, 11.6;
qmtp.md 9.3); each client keeps only its dialogue.

L{Dialer} connects to a group's addresses in turn, each within C{timeoutconnect} seconds,
skips and records addresses in the timeout table (L{qmtwist.remote.tcpto}), moves on to the next
address when a client raises L{NextAddress}, reconnects once to the same one on L{Reconnect},
and holds the concurrency slot until the connection is gone (FAQ 8.1). L{ClientProtocol} is the
base of both client protocols: the answer deadline (C{timeoutremote}, a C{TimeoutMixin} on the
injected clock) and L{ClientProtocol.whenClosed}. L{sendFile} streams the message with the write
deadline.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable

from twisted.internet import defer, endpoints, error
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from qmtwist.delivery import Report
from qmtwist.nodelay import setNoDelay
from qmtwist.remote.mx import MailHost
from qmtwist.remote.reports import NO_CONNECTION, STOPPING
from qmtwist.remote.tcpto import TimeoutTable


class ConnectionDied(Exception):
    """The peer closed, the connection broke, or an answer did not come in time."""


class NextAddress(Exception):
    """
    Nothing was sent on this connection (a 4xx greeting or none): try the next address at once
    (docs/behaviour/remote.md 11.3).

    @ivar why: for the log line, e.g. C{greeting 421 busy}.
    @ivar reports: what the recipients get if no later address takes the message.
    """

    def __init__(self, why: str, reports: list[Report]) -> None:
        super().__init__(why)
        self.why = why
        self.reports = reports


class Reconnect(Exception):
    """
    Connect to the same address again and rerun the dialogue with C{first} false (the SMTP
    client's plaintext retry after a failed opportunistic STARTTLS, docs/behaviour/remote.md 11.5).

    @ivar logText: the line logged before reconnecting.
    """

    def __init__(self, logText: str) -> None:
        super().__init__(logText)
        self.logText = logText


class ClientProtocol(Protocol, TimeoutMixin):
    """
    A client connection with one answer deadline at a time (L{setTimeout}, on C{clock}).

    @param clock: C{IReactorTime} for the deadlines.
    @param timeout: seconds to wait for each answer (C{timeoutremote}).
    @ivar lost: why the connection ended (or is being ended), once it has.
    @ivar kind: the protocol's name for the session observers (C{smtp}, C{qmtp}).
    @ivar tls: the dialogue went on inside TLS (set by the SMTP client after STARTTLS).
    """

    kind = "remote"
    tls = False
    #: the connection went to the connection cache after its dialogue (remote.md 11.8)
    cached = False

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self.lost: Failure | None = None
        self.connected = False
        self._closed: list[defer.Deferred[None]] = []

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """The deadline's timer runs on the injected clock, not the global reactor."""
        return self.clock.callLater(period, func)

    def whenClosed(self) -> defer.Deferred[None]:
        """Fires once the connection is gone (at once if it never was or already is)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.connected:
            self._closed.append(d)
        else:
            d.callback(None)
        return d

    def connectionMade(self) -> None:
        self.connected = True
        setNoDelay(self.transport)  # remote.md 11.9

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        self.setTimeout(None)
        self.ended(reason)
        waiters, self._closed = self._closed, []
        for d in waiters:
            d.callback(None)

    def ended(self, reason: Failure) -> None:
        """The connection is gone: fail whatever waits for an answer (subclasses)."""

    def close(self) -> None:
        """End the connection once the dialogue is over."""
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection at once (a failure, or shutdown)."""
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


async def sendFile(
    f: Any, transport: Any, clock: IReactorTime, timeout: float,
    transform: Callable[[bytes], bytes] | None = None,
) -> None:
    """
    Stream an open file to C{transport}, each chunk through C{transform}; the connection is
    aborted when the peer takes no data for C{timeout} seconds (qmail's write timeout).

    @raise ConnectionDied: the connection ended or stalled before the file was sent.
    """
    timer: list[IDelayedCall | None] = [None]

    def cancel() -> None:
        if timer[0] is not None and timer[0].active():
            timer[0].cancel()

    def arm() -> None:
        cancel()
        timer[0] = clock.callLater(timeout, transport.abortConnection)

    def step(chunk: bytes) -> bytes:
        arm()
        return transform(chunk) if transform is not None else chunk

    arm()
    try:
        await FileSender().beginFileTransfer(f, transport, step)
    except Exception as e:
        raise ConnectionDied(f"lost while sending: {e}") from e
    finally:
        cancel()


#: C{run(proto, ip, host, first)}: one dialogue on a connected protocol; C{first} is false on
#: the connection after a L{Reconnect}.
Dialogue = Callable[[Any, str, MailHost, bool], Awaitable[list[Report]]]


class Dialer:
    """
    The connections of one agent: who is connecting, who is connected (for L{stop}).

    @param reactor: C{IReactorTCP} and C{IReactorTime} to connect with.
    @param tcpto: the timeout table, refreshed off the reactor thread once per group.
    @ivar observers: L{qmtwist.interfaces.ISessionObserver}s told of each connection made.
    """

    log = Logger(namespace="qmail-remote")

    def __init__(self, reactor: IReactorTCP, tcpto: TimeoutTable) -> None:
        self.reactor = reactor
        self.tcpto = tcpto
        self.stopping = False
        self._connecting: set[defer.Deferred[Any]] = set()
        self._connections: set[ClientProtocol] = set()
        self.observers: list[Any] = []

    def stop(self) -> None:
        """Cancel pending connects and abort open connections; their recipients defer."""
        self.stopping = True
        for pending in list(self._connecting):
            pending.cancel()
        for proto in list(self._connections):
            proto.abort()

    async def deliver(
        self, hosts: Iterable[MailHost], port: int, timeoutconnect: int, n: int,
        makeProto: Callable[[], ClientProtocol], run: Dialogue,
    ) -> list[Report]:
        """
        Connect to each address in turn (docs/behaviour/remote.md 11.3). The first connection
        that gets past the greeting decides; after a connect failure or a L{NextAddress} the next
        address is tried at once, and the last L{NextAddress} report stands when none is left.

        @param n: the number of recipients, hence of reports.
        """
        await self.tcpto.refresh()
        candidates = [(host, ip) for host in hosts for ip in host.addresses]
        last: list[Report] | None = None
        for k, (host, ip) in enumerate(candidates):
            more = k + 1 < len(candidates)
            if self.stopping:
                return [Report.deferral(STOPPING)] * n
            if self.tcpto.skip(ip):
                continue
            first = True
            while True:
                proto = makeProto()
                connecting = self._connect(ip, port, timeoutconnect, proto)
                self._connecting.add(connecting)
                try:
                    await connecting
                except (defer.CancelledError, error.ConnectingCancelledError):
                    return [Report.deferral(STOPPING)] * n
                except error.TimeoutError:
                    self.tcpto.timedOut(ip)
                    self._nextMX(ip, f"connect timed out after {timeoutconnect} s", more)
                    break
                except (error.ConnectError, OSError) as e:
                    self.tcpto.ok(ip)
                    self._nextMX(ip, _connectError(e), more)
                    break
                finally:
                    self._connecting.discard(connecting)
                self.tcpto.ok(ip)
                self._connections.add(proto)
                for o in self.observers:
                    o.sessionStarted("outbound", proto.kind)
                proto.whenClosed().addCallback(self._ended, proto)
                try:
                    result = list(await run(proto, ip, host, first))
                except Reconnect as e:
                    self.log.info("{text}", text=e.logText)
                    proto.abort()
                    await proto.whenClosed()
                    first = False
                    continue
                except NextAddress as e:
                    self._nextMX(ip, e.why, more)
                    last = e.reports
                    await proto.whenClosed()  # one connection per slot (FAQ 8.1)
                    break
                except BaseException:
                    proto.abort()
                    raise
                finally:
                    self._connections.discard(proto)
                # hold the concurrency slot until the connection is really gone, or is
                # kept by the connection cache with its slot
                if not proto.cached:
                    await proto.whenClosed()
                return result
        return last if last is not None else [Report.deferral(NO_CONNECTION)] * n

    def _ended(self, _: object, proto: ClientProtocol) -> None:
        for o in self.observers:
            o.sessionEnded("outbound", proto.kind, proto.tls)

    def _nextMX(self, ip: str, why: str, more: bool) -> None:
        """Log why an address did not take the message, and whether another one is tried."""
        then = "; trying next MX" if more else "; no more MX to try"
        self.log.info("delivery to {ip} failed: {why}{then}", ip=ip, why=why, then=then)

    def _connect(self, ip: str, port: int, timeout: int, proto: ClientProtocol) -> defer.Deferred[Any]:
        endpoint: Any
        if ":" in ip:
            endpoint = endpoints.TCP6ClientEndpoint(self.reactor, ip, port, timeout=timeout)
        else:
            endpoint = endpoints.TCP4ClientEndpoint(self.reactor, ip, port, timeout=timeout)
        return endpoints.connectProtocol(endpoint, proto)


def _connectError(e: BaseException) -> str:
    """A connect failure for the log: C{connection refused} rather than Twisted's wording."""
    if isinstance(e, error.ConnectionRefusedError):
        return "connection refused"
    return " ".join(str(e).split()) or type(e).__name__
