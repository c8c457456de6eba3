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

A protocol error (docs/behaviour/qmtp.md 9.2) aborts the package being read; the answers of earlier packages
are still sent, then the connection is closed. A session lasts at most one hour [qmail].
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from qmtwist.control import Control
from qmtwist.errors import QQ_BUG, QueueError
from qmtwist.interfaces import IInjector, IMessageWriter
from qmtwist.qmtp.netstring import NetstringError, NetstringParser, encode
from qmtwist.rcpthosts import RcptHosts
from qmtwist.received import date822
from qmtwist.smtp.received import safe

#: qmail-qmtpd's limit on a session (alarm(3600)).
SESSION_SECONDS = 3600
#: Sender and recipient (with RELAYCLIENT) must be shorter than this.
ADDRESS_LIMIT = 1000

RCPTHOSTS_TEXT = b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
RECIPIENT_TEXT = b"Dsorry, I can't handle that recipient (#5.1.3)"


def _unstorable(addr: bytes) -> bool:
    """NUL, CR or LF cannot go into an envelope: that recipient (or sender) is refused alone."""
    return b"\0" in addr or b"\r" in addr or b"\n" in addr
SENDER_TEXT = b"Dunacceptable sender (#5.1.7)"
DATABYTES_TEXT = b"Dsorry, that message size exceeds my databytes limit (#5.3.4)"
TOOMANY_TEXT = b"Ztoo many recipients (#4.5.3)"

#: Commits that may be outstanding before reading pauses. Packages that start meanwhile (within
#: the input already received) are held in memory and get their queue file in turn, so a burst
#: of tiny packages cannot open many queue files at once.
MAX_OUTSTANDING = 32
SLICE = 65536


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


def parseDatabytes(environ: Mapping[str, bytes], controlValue: int) -> int:
    """C{DATABYTES} from the session environment overrides C{control/databytes}; 0 = no limit."""
    value = environ.get("DATABYTES")
    if value is None:
        return controlValue
    digits = b""
    for c in value.strip():
        if 48 <= c <= 57:
            digits += bytes([c])
        else:
            break
    return int(digits) if digits else 0


class _Package:
    """One package as it is read: the message writer, the envelope, and what went wrong."""

    def __init__(self) -> None:
        self.writer: IMessageWriter | None = None
        self.held: list[bytes] | None = None  # message bytes waiting for a queue file
        self.started = False
        self.crlf = False
        self.pendingCR = False
        self.stored = 0
        self.overflow = False
        self.queueError: QueueError | None = None
        self.sender = b""
        self.senderLength = 0
        self.recipients: list[bytes] = []
        # per recipient up to maxrcpt: None (acceptable) or the refusal text
        self.verdicts: list[bytes | None] = []
        # recipients past maxrcpt: counted only, each answered TOOMANY_TEXT
        self.excess = 0

    def abort(self) -> None:
        self.held = None
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


@implementer(IHalfCloseableProtocol)
class QMTPServer(Protocol):
    """
    One QMTP session.

    The listener sets L{env} (the session environment of docs/behaviour/smtp.md 7.1: C{TCPREMOTEIP},
    C{TCPLOCALHOST}, C{RELAYCLIENT}, C{DATABYTES}, ...; bytes values) before C{makeConnection}.

    @param injector: where accepted messages go.
    @param control: the control snapshot for this connection (C{databytes}, C{rcpthosts},
        C{morercpthosts}).
    @param clock: for the Received line, the C{K} reply's time and the session limit.
    """

    log = Logger(namespace="qmtwist.qmtp")

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
        self.env: dict[str, bytes] = dict(env or {})
        self._parser = NetstringParser(self._fieldEnd, onChunk=self._fieldChunk)
        self._parser.setStreaming(True)
        self._rcptParser: NetstringParser | None = None
        self._field = 0  # 0 message, 1 sender, 2 recipients
        self._package = _Package()
        self._tail: Deferred[None] = succeed(None)
        self._broken = False
        self._lost = False
        self._eof = False
        self._closing = False
        self._timer: Any = None
        self._rcpt = b""
        self._rcptLength = 0
        self._input = b""
        self._feeding = False
        self._paused = False
        self._outstanding = 0

    # -- connection

    def connectionMade(self) -> None:
        self.databytes = parseDatabytes(self.env, self.control.databytes)
        self.maxrcpt = self.control.maxrcpt
        self.relayclient = self.env.get("RELAYCLIENT")
        self.allowed = RcptHosts.fromControl(self.control).allows
        self._timer = self.clock.callLater(SESSION_SECONDS, self._timeout)

    def _timeout(self) -> None:
        self._timer = None
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
        self._package = _Package()
        self._input = b""
        self._rcptParser = None
        self._rcpt = b""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

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
            while self._input and not self._broken and self._outstanding < MAX_OUTSTANDING:
                if self._package.held is not None:
                    self._open(self._package)
                piece, self._input = self._input[:SLICE], self._input[SLICE:]
                try:
                    self._parser.feed(piece)
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
        self._package = _Package()
        # answers of earlier packages still go out, then the connection closes
        self._tail.addBoth(lambda _: self.transport.loseConnection())

    # -- fields

    def _fieldChunk(self, piece: bytes) -> None:
        if self._field == 0:
            self._messageChunk(piece)
        elif self._field == 1:
            p = self._package
            p.senderLength += len(piece)
            if len(p.sender) < ADDRESS_LIMIT:
                p.sender += piece[: ADDRESS_LIMIT - len(p.sender)]
        else:
            assert self._rcptParser is not None
            self._rcptParser.feed(piece)

    def _fieldEnd(self, _empty: bytes) -> None:
        if self._field == 0:
            self._messageEnd()
            self._field = 1
            self._startRecipients()
        elif self._field == 1:
            self._field = 2
        else:
            assert self._rcptParser is not None
            if self._rcptParser.pending():
                raise NetstringError("recipient runs past its container")
            self._rcptParser = None
            package, self._package = self._package, _Package()
            self._field = 0
            self._finish(package)

    def _startRecipients(self) -> None:
        self._rcptParser = NetstringParser(self._rcptEnd, onChunk=self._rcptChunk)
        self._rcptParser.setStreaming(True)

    def _rcptChunk(self, piece: bytes) -> None:
        self._rcptLength += len(piece)
        if len(self._rcpt) < ADDRESS_LIMIT:
            self._rcpt += piece[: ADDRESS_LIMIT - len(self._rcpt)]

    def _rcptEnd(self, _empty: bytes) -> None:
        rcpt, length = self._rcpt, self._rcptLength
        self._rcpt, self._rcptLength = b"", 0
        p = self._package
        if self.maxrcpt > 0 and len(p.verdicts) >= self.maxrcpt:
            p.excess += 1
            return
        relay = self.relayclient
        if length + len(relay or b"") >= ADDRESS_LIMIT or _unstorable(rcpt):
            p.verdicts.append(RECIPIENT_TEXT)
        elif relay is not None:
            p.verdicts.append(None)
            p.recipients.append(rcpt + relay)
        elif not self.allowed(rcpt):
            p.verdicts.append(RCPTHOSTS_TEXT)
        else:
            p.verdicts.append(None)
            p.recipients.append(rcpt)

    # -- the message

    def _messageChunk(self, piece: bytes) -> None:
        p = self._package
        if not p.started:
            first, piece = piece[:1], piece[1:]
            if first == b"\n":
                p.crlf = False
            elif first == b"\r":
                p.crlf = True
            else:
                raise NetstringError("message starts with neither LF nor CR")
            p.started = True
            p.held = [receivedLine(self.env, self.clock.seconds())]
            if self._outstanding < MAX_OUTSTANDING:
                self._open(p)
        if p.crlf:
            if p.pendingCR:
                p.pendingCR = False
                if not piece.startswith(b"\n"):
                    self._store(b"\r")
            if piece.endswith(b"\r"):
                p.pendingCR = True
                piece = piece[:-1]
            piece = piece.replace(b"\r\n", b"\n")
        if piece:
            self._store(piece)

    def _open(self, p: _Package) -> None:
        """Give package C{p} its queue file and write what was held for it."""
        held, p.held = p.held or [], None
        try:
            p.writer = self.injector.newMessage(b"from network")
            for data in held:
                p.writer.write(data)
        except QueueError as e:
            p.abort()
            p.queueError = e

    def _store(self, data: bytes) -> None:
        p = self._package
        p.stored += len(data)
        if self.databytes and p.stored > self.databytes and not p.overflow:
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

    def _messageEnd(self) -> None:
        p = self._package
        if not p.started:
            raise NetstringError("empty message")
        if p.pendingCR:
            p.pendingCR = False
            self._store(b"\r")

    # -- answering

    def _finish(self, p: _Package) -> None:
        if p.held is None:
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
                return self._writeRepeated(encode(TOOMANY_TEXT), excess)
            return None

        if callable(result):
            self._tail.addCallback(result)
        else:
            self._tail.addCallback(lambda _: result)
        self._tail.addCallback(answer)

    def _result(self, p: _Package) -> Deferred[bytes]:
        """The answer for every acceptable recipient, once known (after the commit)."""
        senderOk = p.senderLength < ADDRESS_LIMIT and not _unstorable(p.sender)
        if not p.recipients or not senderOk or p.overflow or p.queueError is not None:
            p.abort()
            if p.overflow:
                return succeed(DATABYTES_TEXT)
            if not senderOk:
                return succeed(SENDER_TEXT)
            if p.queueError is not None:
                return succeed(_queueText(p.queueError))
            return succeed(b"")  # no acceptable recipient: every verdict is a refusal
        if p.held is not None:
            self._open(p)
            if p.queueError is not None:
                return succeed(_queueText(p.queueError))
        writer, p.writer = p.writer, None
        assert writer is not None
        try:
            d = writer.commit(p.sender, p.recipients)
        except QueueError as e:
            writer.abort()
            return succeed(_queueText(e))
        self._outstanding += 1

        def committed(result: object) -> object:
            self._outstanding -= 1
            self._pump()
            return result

        d.addBoth(committed)

        def ok(queued: object) -> bytes:
            qp = getattr(queued, "qp", writer.qp)
            return b"Kok %d qp %d" % (int(self.clock.seconds()), qp)

        def failed(f: Failure) -> bytes:
            if f.check(QueueError):
                return _queueText(f.value)
            self.log.failure("commit failed", f)
            return _queueText(QueueError(QQ_BUG))

        return d.addCallbacks(ok, failed)

    def _writeRepeated(self, piece: bytes, count: int) -> Deferred[None] | None:
        """Write C{piece} C{count} times; beyond one slice through a pull producer, so the
        answer is never built whole (the next package's answers wait for it)."""
        if len(piece) * count <= SLICE:
            self.transport.write(piece * count)
            return None
        d = FileSender().beginFileTransfer(_Repeated(piece, count), self.transport)
        return d.addCallbacks(lambda _: None, lambda f: None)  # a lost client: nothing owed


class _Repeated:
    """A file-like source of C{count} copies of C{piece}, read by L{FileSender}."""

    def __init__(self, piece: bytes, count: int) -> None:
        self.piece = piece
        self.count = count

    def read(self, size: int) -> bytes:
        n = min(self.count, max(1, size // len(self.piece)))
        self.count -= n
        return self.piece * n


def _queueText(e: QueueError) -> bytes:
    return (b"D" if e.permanent else b"Z") + e.text.encode()

