"""
QMTP packages taken apart as their bytes arrive (docs/behaviour/qmtp.md 9.1); no I/O.

A package is three netstrings: the message (first byte LF, or CR meaning CR LF line ends that
become LF, a lone CR kept), the sender, and a netstring of recipient netstrings.
L{PackageReader} streams the message through C{onData} piece by piece and hands over each
recipient and each finished package; the sender and each recipient are kept only up to
C{keep} bytes (enough for the session policy to see that one is too long), so a package
never has to be held whole. A malformed package raises L{NetstringError} from
L{PackageReader.feed}.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred

from qmtwist.errors import QueueError
from qmtwist.interfaces import IMessageWriter
from qmtwist.qmtp.netstring import NetstringError, NetstringParser

MESSAGE, SENDER, RECIPIENTS = 0, 1, 2


class Package:
    """
    One package as it is read, and what the server made of it so far.

    @ivar writer: the queue message the body streams into, once it has one.
    @ivar held: message bytes waiting for a queue file (L{None}: not waiting).
    @ivar stored: message bytes stored so far (after CR LF conversion).
    @ivar overflow: the message passed databytes.
    @ivar verdicts: per recipient up to maxrcpt: L{None} (acceptable) or the refusal answer.
    @ivar recipients: the acceptable recipients, as they are queued.
    @ivar excess: recipients past maxrcpt, only counted.
    @ivar opening: fires (with L{None}) once the queue file being made on a thread is there
        or has failed; L{None} when no file is being made.
    @ivar aborted: the message was given up (a file that arrives later is removed).
    """

    def __init__(self) -> None:
        self.writer: IMessageWriter | None = None
        self.held: list[bytes] | None = None
        self.started = False
        self.crlf = False
        self.pendingCR = False
        self.stored = 0
        self.overflow = False
        self.queueError: QueueError | None = None
        self.sender = b""
        self.recipients: list[bytes] = []
        self.verdicts: list[bytes | None] = []
        self.excess = 0
        self.opening: Deferred[None] | None = None
        self.aborted = False

    def abort(self) -> None:
        """Give up the message: nothing of it is queued."""
        self.aborted = True
        self.held = None
        if self.writer is not None:
            self.writer.abort()
            self.writer = None


class PackageReader:
    """
    The netstring fields of consecutive packages.

    @param onStart: C{(package)}, at the message's first byte.
    @param onData: C{(package, bytes)}, message bytes with LF line ends.
    @param onRecipient: C{(package, recipient)}, the recipient cut to C{keep} bytes.
    @param onPackage: C{(package)}, after the package's last byte.
    @param keep: how much of the sender and of each recipient is kept.
    @ivar package: the package being read.
    """

    def __init__(self, onStart: Callable[[Package], None],
                 onData: Callable[[Package, bytes], None],
                 onRecipient: Callable[[Package, bytes], None],
                 onPackage: Callable[[Package], None], keep: int) -> None:
        self.onStart = onStart
        self.onData = onData
        self.onRecipient = onRecipient
        self.onPackage = onPackage
        self.keep = keep
        self.reset()

    def reset(self) -> None:
        """Forget everything read: a fresh package, no partial field."""
        self.package = Package()
        self.field = MESSAGE
        self.rcptParser: NetstringParser | None = None
        self._rcpt = b""
        self._parser = NetstringParser(self._fieldEnd, onChunk=self._fieldChunk)
        self._parser.setStreaming(True)

    def feed(self, data: bytes) -> None:
        """
        Read C{data}, calling back for what it completes.

        @raise NetstringError: a protocol error (docs/behaviour/qmtp.md 9.2).
        """
        self._parser.feed(data)

    def _fieldChunk(self, piece: bytes) -> None:
        if self.field == MESSAGE:
            self._messageChunk(piece)
        elif self.field == SENDER:
            p = self.package
            if len(p.sender) < self.keep:
                p.sender += piece[: self.keep - len(p.sender)]
        else:
            assert self.rcptParser is not None
            self.rcptParser.feed(piece)

    def _fieldEnd(self, _empty: bytes) -> None:
        if self.field == MESSAGE:
            self._messageEnd()
            self.field = SENDER
            self.rcptParser = NetstringParser(self._rcptEnd, onChunk=self._rcptChunk)
            self.rcptParser.setStreaming(True)
        elif self.field == SENDER:
            self.field = RECIPIENTS
        else:
            assert self.rcptParser is not None
            if self.rcptParser.pending():
                raise NetstringError("recipient runs past its container")
            self.rcptParser = None
            package, self.package = self.package, Package()
            self.field = MESSAGE
            self.onPackage(package)

    def _rcptChunk(self, piece: bytes) -> None:
        if len(self._rcpt) < self.keep:
            self._rcpt += piece[: self.keep - len(self._rcpt)]

    def _rcptEnd(self, _empty: bytes) -> None:
        rcpt, self._rcpt = self._rcpt, b""
        self.onRecipient(self.package, rcpt)

    def _messageChunk(self, piece: bytes) -> None:
        p = self.package
        if not p.started:
            first, piece = piece[:1], piece[1:]
            if first == b"\n":
                p.crlf = False
            elif first == b"\r":
                p.crlf = True
            else:
                raise NetstringError("message starts with neither LF nor CR")
            p.started = True
            self.onStart(p)
        if p.crlf:
            if p.pendingCR:
                p.pendingCR = False
                if not piece.startswith(b"\n"):
                    self.onData(p, b"\r")
            if piece.endswith(b"\r"):
                p.pendingCR = True
                piece = piece[:-1]
            piece = piece.replace(b"\r\n", b"\n")
        if piece:
            self.onData(p, piece)

    def _messageEnd(self) -> None:
        p = self.package
        if not p.started:
            raise NetstringError("empty message")
        if p.pendingCR:
            p.pendingCR = False
            self.onData(p, b"\r")
