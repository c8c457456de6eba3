"""
Injection for users who cannot write C{queue/} (docs/behaviour/queue.md 5.3): the daemon listens on
C{HOME/run/qmail-queue.sock}, records the peer's uid from the socket, and queues on its behalf.

Framing (the client is L{qmtwist.tools.queueclient}): the client sends a netstring holding the
message, then a netstring holding qmail-queue's envelope (C{F<s>\\0T<r>\\0...\\0}); the server
answers one line C{<exit code>\\n} with qmail-queue's codes and closes.
"""

from __future__ import annotations

import os
import socket
import struct

from twisted.internet import protocol
from twisted.logger import Logger

from qmtwist.errors import QQ_BUG, QQ_READ_ERROR, QueueError
from qmtwist.interfaces import IInjector
from qmtwist.queue.envelope import parseQmailQueueEnvelope

log = Logger(namespace="qmail-queue")
MAX_LENGTH_DIGITS = 12


def peerUid(transport) -> int | None:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    try:
        sock = transport.getHandle()
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid
    except (OSError, AttributeError):
        return None


class QueueSocketProtocol(protocol.Protocol):
    """Receives message and envelope netstrings, streaming the message into the queue."""

    def __init__(self, injector: IInjector) -> None:
        self.injector = injector
        self._buf = b""
        self._state = "mlen"
        self._remaining = 0
        self._writer = None
        self._envelope = b""
        self._finished = False

    def connectionMade(self) -> None:
        uid = peerUid(self.transport)
        if uid is None:
            self._answer(QQ_BUG)
            return
        self.uid = uid
        try:
            self._writer = self.injector.newMessage(b"by uid %d" % uid, uid)
        except QueueError as e:
            self._answer(e.code)

    def dataReceived(self, data: bytes) -> None:
        if self._finished:
            return
        self._buf += data
        try:
            self._process()
        except QueueError as e:
            self._abort(e.code)

    def _process(self) -> None:
        while self._buf and not self._finished:
            if self._state in ("mlen", "elen"):
                if b":" not in self._buf:
                    if len(self._buf) > MAX_LENGTH_DIGITS:
                        raise QueueError(QQ_READ_ERROR, "bad netstring")
                    return
                head, self._buf = self._buf.split(b":", 1)
                if not head.isdigit():
                    raise QueueError(QQ_READ_ERROR, "bad netstring")
                self._remaining = int(head)
                self._state = "mbody" if self._state == "mlen" else "ebody"
            elif self._state == "mbody":
                chunk = self._buf[: self._remaining]
                self._buf = self._buf[len(chunk):]
                self._remaining -= len(chunk)
                if chunk:
                    self._writer.write(chunk)
                if self._remaining == 0:
                    self._state = "mcomma"
            elif self._state == "ebody":
                chunk = self._buf[: self._remaining]
                self._buf = self._buf[len(chunk):]
                self._remaining -= len(chunk)
                self._envelope += chunk
                if self._remaining == 0:
                    self._state = "ecomma"
            elif self._state in ("mcomma", "ecomma"):
                if self._buf[:1] != b",":
                    raise QueueError(QQ_READ_ERROR, "bad netstring")
                self._buf = self._buf[1:]
                if self._state == "mcomma":
                    self._state = "elen"
                else:
                    self._commit()
                    return

    def _commit(self) -> None:
        self._state = "done"
        sender, recipients = parseQmailQueueEnvelope(self._envelope)
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
        if self._finished:
            return
        self._finished = True
        self.transport.write(b"%d\n" % code)
        self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


class QueueSocketFactory(protocol.Factory):
    def __init__(self, injector: IInjector) -> None:
        self.injector = injector

    def buildProtocol(self, addr):
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
