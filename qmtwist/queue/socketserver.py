"""
Injection for users who cannot write C{queue/} (docs/behaviour/queue.md 5.3): the daemon listens on
C{HOME/run/qmail-queue.sock}, records the peer's uid from the socket, and queues on its behalf.

Framing (the client is L{qmtwist.tools.queueclient}; both use L{qmtwist.netstring}): the client
sends a netstring holding the message, then a netstring holding qmail-queue's envelope
(C{F<s>\\0T<r>\\0...\\0}); the server answers one line C{<exit code>\\n} with qmail-queue's codes
and closes.
"""

from __future__ import annotations

import os
import socket
import struct

from twisted.internet import protocol
from twisted.internet.interfaces import IAddress, ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from qmtwist.errors import QQ_BUG, QQ_READ_ERROR, QueueError
from qmtwist.interfaces import IInjector, IMessageWriter
from qmtwist.netstring import NetstringError, NetstringParser
from qmtwist.queue.envelope import parseQmailQueueEnvelope

log = Logger(namespace="qmail-queue")
#: The longest length a frame may announce: twelve digits, as many as the client can mean.
MAX_LENGTH = 10**12 - 1


def peerUid(transport: ITransport | None) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    try:
        sock = transport.getHandle()  # type: ignore[union-attr]
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return int(uid)
    except (OSError, AttributeError):
        return None


class QueueSocketProtocol(protocol.Protocol):
    """
    Receives the message and envelope netstrings (L{qmtwist.netstring}), streaming the message
    into the queue as it arrives; a malformed frame aborts the message with exit code 54
    (docs/behaviour/queue.md 5.3). Whatever follows the envelope is ignored.
    """

    def __init__(self, injector: IInjector) -> None:
        self.injector = injector
        self.uid: int | None = None
        self._writer: IMessageWriter | None = None
        self._inEnvelope = False  # the message frame is complete
        self._finished = False  # input is over: the envelope is complete, or the answer sent
        self._answered = False
        self._lost = False
        self._parser = NetstringParser(self._frameEnd, MAX_LENGTH, self._messageChunk)
        self._parser.setStreaming(True)

    def connectionMade(self) -> None:
        uid = peerUid(self.transport)
        if uid is None:
            self._answer(QQ_BUG)
            return
        self.uid = uid
        how = b"by uid %d" % uid
        # the queue file is made on a thread (no file is opened on the reactor thread); the
        # client's bytes wait in the socket until it is there
        transport = self.transport
        assert transport is not None
        transport.pauseProducing()  # type: ignore[attr-defined]

        def opened(writer: IMessageWriter) -> None:
            if self._lost or self._finished:
                writer.abort()
                return
            self._writer = writer
            transport.resumeProducing()  # type: ignore[attr-defined]

        def failed(f: Failure) -> None:
            if not self._lost:
                self._answer(f.value.code if f.check(QueueError) else QQ_BUG)

        self.injector.openMessage(how, uid).addCallbacks(opened, failed)

    def dataReceived(self, data: bytes) -> None:
        if self._finished:
            return
        try:
            self._parser.feed(data)
        except NetstringError:
            if not self._finished:
                self._abort(QQ_READ_ERROR)
        except QueueError as e:
            self._abort(e.code)

    def _messageChunk(self, chunk: bytes) -> None:
        if self._writer is not None:
            self._writer.write(chunk)

    def _frameEnd(self, content: bytes) -> None:
        if self._finished:
            return
        if not self._inEnvelope:
            self._inEnvelope = True  # the message is in the writer: read the envelope whole
            self._parser.setStreaming(False)
            return
        self._commit(content)

    def _commit(self, envelope: bytes) -> None:
        assert self._writer is not None
        sender, recipients = parseQmailQueueEnvelope(envelope)
        self._finished = True
        writer, self._writer = self._writer, None
        d = writer.commit(sender, recipients)
        d.addCallbacks(lambda q: self._answer(0),
                       lambda f: self._answer(f.value.code if f.check(QueueError) else QQ_BUG))

    def _abort(self, code: int) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self._answer(code)

    def _answer(self, code: int) -> None:
        if self._answered:
            return
        self._answered = self._finished = True
        assert self.transport is not None
        self.transport.write(b"%d\n" % code)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


class QueueSocketFactory(protocol.Factory):
    """Builds one L{QueueSocketProtocol} per client of C{HOME/run/qmail-queue.sock}."""

    noisy = False  # no "Starting factory" line (docs/behaviour/queue-control.md 17.9)

    def __init__(self, injector: IInjector) -> None:
        self.injector = injector

    def buildProtocol(self, addr: IAddress | None) -> QueueSocketProtocol:
        p = QueueSocketProtocol(self.injector)
        p.factory = self
        return p


def prepareSocketPath(path: str) -> None:
    """Remove a stale socket left by a crash, so the listener can bind again."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        log.warn("warning: unable to remove stale {path}", path=path)
