"""
The QMTP server: qmail-qmtpd (docs/behaviour/qmtp.md 9.1, 9.2).

A client sends any number of packages on one connection without waiting; each package is the
message netstring (first byte LF, or CR meaning CRLF line ends that become LF), the sender
netstring and a netstring of recipient netstrings. After each package the server answers one
netstring per recipient: C{K} (queued), C{Z} (try later) or C{D} (refused), with qmail's texts.

Everything is streamed: the message goes into the queue (L{IInjector.newMessage}) as it arrives,
and the sender and recipients are kept only up to the 1000 bytes qmail accepts. Packages are
taken apart while earlier ones are still being committed (the injector's group commit serves them
together); responses are written strictly in package order, each only after its commit returned.

A package holds at most C{control/maxrcpt} recipients (0: no limit): the later ones are only
counted, never stored, and each gets L{TOOMANY_TEXT}; the first ones are judged and queued as
usual, as the SMTP server answers 452 past the limit. Those answers are written through a pull
producer (L{FileSender}), so even a package of millions of empty recipients is answered in
bounded memory. What a session holds is released when its connection ends.

A protocol error (docs/behaviour/qmtp.md 9.2) aborts the package being read; the answers of
earlier packages are still sent, then the connection is closed. A session lasts at most one hour
[qmail] (Twisted's L{TimeoutMixin} on the injected clock, never reset: a limit, not an idle
timeout).

The parts: L{qmtwist.qmtp.package} takes packages apart, L{qmtwist.policy} (shared with SMTP)
judges the sender and each recipient, L{qmtwist.qmtp.answers} holds the answer texts; this
module opens queue files, commits and writes the answers in order.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from qmtwist.control import Control
from qmtwist.errors import QQ_BUG, QueueError
from qmtwist.interfaces import IInjector
from qmtwist.policy import QMTP, Accepted, Refusal, SessionPolicy
from qmtwist.qmtp.answers import (
    DATABYTES_TEXT, REFUSALS, SENDER_TEXT, SLICE, TOOMANY_TEXT, okText, queueText, writeRepeated)
from qmtwist.qmtp.netstring import NetstringError, encode
from qmtwist.qmtp.package import Package, PackageReader
from qmtwist.received import date822
from qmtwist.smtp.received import safe

#: qmail-qmtpd's limit on a session (alarm(3600)).
SESSION_SECONDS = 3600

#: Commits that may be outstanding before reading pauses. Packages that start meanwhile (within
#: the input already received) are held in memory and get their queue file in turn, so a burst
#: of tiny packages cannot open many queue files at once.
MAX_OUTSTANDING = 32


def receivedLine(environ: Mapping[str, bytes], when: float) -> bytes:
    """
    qmail-qmtpd's Received line (docs/behaviour/qmtp.md 9.2)::

        Received: from RHOST (RIP)
          by LHOST with QMTP; DATE822
    """
    rhost = environ.get("TCPREMOTEHOST") or b"unknown"
    rip = environ.get("TCPREMOTEIP") or b"unknown"
    info = environ.get("TCPREMOTEINFO")
    if info:
        rip = info + b"@" + rip
    lhost = environ.get("TCPLOCALHOST") or environ.get("TCPLOCALIP") or b"unknown"
    return b"Received: from %s (%s)\n  by %s with QMTP; %s\n" % (
        safe(rhost), safe(rip), safe(lhost), date822(when))


@implementer(IHalfCloseableProtocol)
class QMTPServer(TimeoutMixin, Protocol):
    """
    One QMTP session.

    The listener sets L{env} (the session environment of docs/behaviour/smtp.md 7.1: C{TCPREMOTEIP},
    C{TCPLOCALHOST}, C{RELAYCLIENT}, C{DATABYTES}, ...; bytes values) before C{makeConnection}.

    @param injector: where accepted messages go.
    @param control: the control snapshot for this connection (C{databytes}, C{maxrcpt},
        C{rcpthosts}, C{morercpthosts}).
    @param clock: for the Received line, the C{K} reply's time and the session limit.
    @ivar policy: what the session accepts (L{qmtwist.policy}), set when it starts.
    """

    log = Logger(namespace="qmtwist.qmtp")
    #: a TCP transport (a producer) or the stdio runner's L{qmtwist.stdio} wrapper
    transport: Any

    #: tcpserver's exit status for the connection log: 256 after a protocol error or timeout.
    exitStatus: int | None = None

    def __init__(
        self,
        injector: IInjector,
        control: Control,
        clock: IReactorTime,
        env: Mapping[str, bytes] | None = None,
    ) -> None:
        self.injector = injector
        self.control = control
        self.clock = clock
        # TimeoutMixin's timer runs on the injected clock
        self.callLater = clock.callLater  # type: ignore[method-assign,assignment]
        self.env: dict[str, bytes] = dict(env or {})
        self.policy = SessionPolicy.fromEnv(control, self.env, QMTP)
        self._reader = PackageReader(self._messageStart, self._store, self._recipient,
                                     self._finish, keep=QMTP.addressLimit)
        self._tail: Deferred[Any] = succeed(None)  # the answers, in package order
        self._broken = False
        self._lost = False
        self._eof = False
        self._closing = False
        self._input = b""
        self._feeding = False
        self._paused = False
        self._outstanding = 0
        self._opening = 0  # queue files being made on a thread; reading waits for them

    @property
    def _package(self) -> Package:
        """The package being read."""
        return self._reader.package

    @property
    def _rcptParser(self) -> Any:
        return self._reader.rcptParser

    # -- connection

    def connectionMade(self) -> None:
        self.policy = SessionPolicy.fromEnv(self.control, self.env, QMTP)
        self.setTimeout(SESSION_SECONDS)

    def timeoutConnection(self) -> None:
        """The hour is over: end the session whatever it is doing."""
        self.exitStatus = 256
        self._broken = True
        self._package.abort()
        # as qmail's alarm(3600) ends the process: do not wait for a client that stopped
        # reading answers still being written (abortConnection where the transport has one)
        getattr(self.transport, "abortConnection", self.transport.loseConnection)()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Abort the package being read and release everything the session buffered; answers
        still owed are dropped (commits already started finish and are kept)."""
        self._lost = True
        self._broken = True
        self._package.abort()
        self._reader.reset()
        self._input = b""
        self.setTimeout(None)

    def readConnectionLost(self) -> None:
        """The client finished sending: answer the complete packages, then close."""
        self._eof = True
        self._pump()

    def writeConnectionLost(self) -> None:
        self._broken = True
        self._package.abort()
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._broken:
            return
        self._input += data
        self._pump()

    def _pump(self) -> None:
        """Parse buffered input while few commits are outstanding; pause the client otherwise."""
        if self._feeding:
            return  # a commit fired inside feed(); the loop below goes on by itself
        self._feeding = True
        try:
            while (self._input and not self._broken and self._outstanding < MAX_OUTSTANDING
                   and not self._opening):
                if self._package.held is not None and self._package.opening is None:
                    self._open(self._package)
                    if self._opening:
                        break  # the rest is read once the file is there
                piece, self._input = self._input[:SLICE], self._input[SLICE:]
                try:
                    self._reader.feed(piece)
                except NetstringError as e:
                    self._protocolError(str(e))
        finally:
            self._feeding = False
        if self._broken:
            self._input = b""
        if self._eof and not self._input and not self._closing:
            self._closing = True
            self._broken = True
            self._package.abort()  # an incomplete package is dropped
            self._tail.addBoth(lambda _: self.transport.loseConnection())
        wantPause = bool(self._input)
        if wantPause != self._paused and not self._lost:
            self._paused = wantPause
            if wantPause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def _protocolError(self, why: str) -> None:
        self.log.info("protocol error: {why}", why=why)
        self._broken = True
        self.exitStatus = 256
        self._package.abort()
        self._reader.reset()
        # answers of earlier packages still go out, then the connection closes
        self._tail.addBoth(lambda _: self.transport.loseConnection())

    # -- the package, as the reader takes it apart

    def _recipient(self, p: Package, rcpt: bytes) -> None:
        """Judge one recipient as it arrives; past maxrcpt every recipient is only counted."""
        if not self.policy.roomFor(len(p.verdicts)):
            p.excess += 1
            return
        verdict = self.policy.recipient(rcpt)
        if isinstance(verdict, Refusal):
            p.verdicts.append(REFUSALS[verdict])
        else:
            p.verdicts.append(None)
            p.recipients.append(verdict.address)

    def _messageStart(self, p: Package) -> None:
        p.held = [receivedLine(self.env, self.clock.seconds())]
        if self._outstanding < MAX_OUTSTANDING:
            self._open(p)

    def _open(self, p: Package) -> None:
        """
        Give package C{p} its queue file and write what was held for it. The daemon's injector
        makes the file on a thread (C{openMessage}): until it is there the package's bytes
        stay held and no more input is read (L{_pump}), so memory stays bounded.
        """
        self._opening += 1
        opened: Deferred[None] = Deferred()
        p.opening = opened

        def arrived(writer: Any) -> None:
            if p.aborted:
                writer.abort()
            else:
                self._started(p, writer)

        def failed(f: Failure) -> None:
            f.trap(QueueError)
            p.abort()
            p.queueError = f.value

        def done(_: object) -> None:
            self._opening -= 1
            p.opening = None
            opened.callback(None)
            self._pump()

        d = self.injector.openMessage(b"from network")
        d.addCallbacks(arrived, failed).addBoth(done)

    def _started(self, p: Package, writer: Any) -> None:
        """The queue file is there: the held bytes go into it."""
        held, p.held = p.held or [], None
        p.writer = writer
        try:
            for data in held:
                writer.write(data)
        except QueueError as e:
            p.abort()
            p.queueError = e

    def _store(self, p: Package, data: bytes) -> None:
        p.stored += len(data)
        if self.policy.overDatabytes(p.stored) and not p.overflow:
            p.overflow = True
            p.abort()
        if p.held is not None:
            p.held.append(data)
            return
        if p.writer is None:
            return
        try:
            p.writer.write(data)
        except QueueError as e:
            p.abort()
            p.queueError = e

    # -- answering

    def _finish(self, p: Package) -> None:
        if p.held is None or p.opening is not None:
            result: Any = self._result(p)  # commit now: it joins the current commit round
        else:
            result = lambda _: self._result(p)  # noqa: E731  (its turn comes after the earlier)
        verdicts, excess = p.verdicts, p.excess

        def answer(text: bytes) -> Deferred[None] | None:
            if self._lost:
                return None
            out = b"".join(encode(v if v is not None else text) for v in verdicts)
            if out:
                self.transport.write(out)
            if excess:
                return writeRepeated(self.transport, encode(TOOMANY_TEXT), excess)
            return None

        if callable(result):
            self._tail.addCallback(result)
        else:
            self._tail.addCallback(lambda _: result)
        self._tail.addCallback(answer)

    def _result(self, p: Package) -> Deferred[bytes]:
        """The answer for every acceptable recipient, once known (after the commit)."""
        senderOk = isinstance(self.policy.sender(p.sender), Accepted)
        if not p.recipients or not senderOk or p.overflow or p.queueError is not None:
            p.abort()
            if p.overflow:
                return succeed(DATABYTES_TEXT)
            if not senderOk:
                return succeed(SENDER_TEXT)
            if p.queueError is not None:
                return succeed(queueText(p.queueError))
            return succeed(b"")  # no acceptable recipient: every verdict is a refusal
        if p.held is not None and p.opening is None:
            self._open(p)
        if p.opening is not None:  # its file is being made: judge it again once it is there
            return p.opening.addCallback(lambda _: self._result(p))
        if p.queueError is not None:
            return succeed(queueText(p.queueError))
        writer, p.writer = p.writer, None
        assert writer is not None
        try:
            d = writer.commit(p.sender, p.recipients)
        except QueueError as e:
            writer.abort()
            return succeed(queueText(e))
        self._outstanding += 1

        def committed(result: object) -> object:
            self._outstanding -= 1
            self._pump()
            return result

        d.addBoth(committed)

        def ok(queued: object) -> bytes:
            return okText(self.clock.seconds(), getattr(queued, "qp", writer.qp))

        def failed(f: Failure) -> bytes:
            if f.check(QueueError):
                return queueText(f.value)
            self.log.failure("commit failed", f)
            return queueText(QueueError(QQ_BUG))

        return d.addCallbacks(ok, failed)
