"""
The daemon's side of a per-user local delivery helper (qmail-lspawn's spawn of qmail-local),
and the framing both ends of the helper socket share.

When the daemon runs as root, deliveries for one (uid, gid) run in a long-lived child,
L{qmtwist.local.child}, started by L{qmtwist.privsep.spawnAsUser}: it drops to that uid and gid
right after exec (docs/behaviour/local.md 3.3, "Privileges"). The child talks to the daemon over
one AF_UNIX stream socket (its descriptors 0 and 1); every message on it is one netstring
(L{frame}) holding one JSON object:

 - daemon -> child: for each job, the queue's message file as an open read-only descriptor
   (C{SCM_RIGHTS}, as qmail-lspawn hands qmail-local the message on descriptor 0: the user
   cannot open the queue) followed by the netstring C{{"id": N, "job": Job}}. Descriptors and
   netstrings pair up in order. Half-closing the socket asks the child to finish and exit.
 - child -> daemon: the netstring C{{"id": N, "result": JobResult}} per finished job, in
   completion order.

A malformed or oversized netstring (over L{MAX_FRAME}) cannot be resynchronised: the reader
closes the socket. The message itself never crosses the socket, so the daemon's memory does not
grow with the message size. The child's standard error is logged line by line.
"""

from __future__ import annotations

import json
from abc import ABCMeta, abstractmethod
import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from qmtwist.delivery import Outcome
from qmtwist.local.deliver import Job, JobResult
from qmtwist.local.message import QueuedMessage
from qmtwist.local.program import CRASHED
from qmtwist.privsep import spawnAsUser
from qmtwist.netstring import NetstringError, NetstringParser, encode

if TYPE_CHECKING:
    from qmtwist.local.agent import LocalAgent

log = Logger(namespace="qmail-lspawn")

ERR_TAIL = 1000
#: The longest netstring either end accepts: a job (names, addresses, paths) or a result (a
#: capped report plus a few addresses).
MAX_FRAME = 1 << 20


def frame(obj: dict[str, Any]) -> bytes:
    """One message of the helper socket: a netstring holding C{obj} as JSON."""
    return encode(json.dumps(obj).encode())


class FrameReceiver(Protocol, metaclass=ABCMeta):
    """
    Either end of the helper socket: netstrings in, each one's content handed to
    L{frameReceived}; L{sendFrame} writes one. Abstract: each end says what a frame means.
    """

    def __init__(self) -> None:
        self._parser = NetstringParser(self.frameReceived, maxLength=MAX_FRAME)

    def dataReceived(self, data: bytes) -> None:
        try:
            self._parser.feed(data)
        except NetstringError as e:
            self.badFrame(str(e))
            self.transport.abortConnection()  # type: ignore[union-attr]

    def sendFrame(self, obj: dict[str, Any]) -> None:
        self.transport.write(frame(obj))  # type: ignore[union-attr]

    @abstractmethod
    def frameReceived(self, content: bytes) -> None:
        """One complete netstring's content (a JSON object)."""

    @abstractmethod
    def badFrame(self, why: str) -> None:
        """The input is no netstring or too long; the socket is closed after this."""


@implementer(IHalfCloseableProtocol)
class _Channel(FrameReceiver):
    """The socket to one helper: job descriptors and netstrings out, result netstrings in."""

    def __init__(self, helper: Helper) -> None:
        super().__init__()
        self.helper = helper

    def frameReceived(self, content: bytes) -> None:
        self.helper.resultFrame(content)

    def badFrame(self, why: str) -> None:
        log.error("local helper uid {uid}: bad result netstring ({why}); closing",
                  uid=self.helper.uid, why=why)

    def readConnectionLost(self) -> None:
        self.helper.channelClosed()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.helper.channelClosed()


class Helper(ProcessProtocol):
    """One helper child for one (uid, gid); see the module docstring for the protocol."""

    def __init__(self, agent: LocalAgent, uid: int, gid: int) -> None:
        self.agent = agent
        self.uid, self.gid = uid, gid
        self.pending: dict[int, tuple[Deferred[JobResult], QueuedMessage]] = {}
        self.nextId = 0
        self.errBuffer = b""
        self.errTail = b""
        self.closed = False
        self.idleCall: Any = None
        self.ended: Deferred[None] = Deferred()
        self.channel: _Channel | None = None

    def start(self) -> None:
        """Start the child (L{spawnAsUser}) on one end of a socket pair, adopt the other."""
        reactor: Any = self.agent.reactor  # IReactorProcess and IReactorSocket
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            spawnAsUser(reactor, self, self.agent.python, "qmtwist.local.child",
                        self.uid, self.gid, [], self.agent.baseEnv,
                        {0: theirs.fileno(), 1: theirs.fileno(), 2: "r"})
            self.channel = _Channel(self)
            reactor.adoptStreamConnection(
                ours.fileno(), socket.AF_UNIX, _OneProtocol(self.channel))
        finally:
            theirs.close()
            ours.close()  # the reactor holds its own duplicate

    def run(self, job: Job, message: QueuedMessage) -> Deferred[JobResult]:
        """Hand the child one job and its open message; the message is closed when it answers."""
        if self.idleCall is not None and self.idleCall.active():
            self.idleCall.cancel()
        self.idleCall = None
        self.nextId += 1
        d: Deferred[JobResult] = Deferred()
        if self.channel is None or self.closed:
            message.close()
            d.callback(JobResult(Outcome.DEFERRAL, CRASHED))
            return d
        self.pending[self.nextId] = (d, message)
        self.channel.transport.sendFileDescriptor(message.fd)  # type: ignore[union-attr]
        self.channel.sendFrame({"id": self.nextId, "job": job.toJSON()})
        return d

    def resultFrame(self, content: bytes) -> None:
        """One result from the child: fire its job's Deferred, and go idle when none is left."""
        try:
            msg = json.loads(content)
            d, message = self.pending.pop(int(msg["id"]))
            result = JobResult.fromJSON(msg["result"])
        except Exception:
            log.failure("bad result from local helper uid {uid}", uid=self.uid)
            return
        message.close()
        d.callback(result)
        if not self.pending and not self.closed and self.idleCall is None:
            self.idleCall = self.agent.reactor.callLater(self.agent.idleTimeout, self.retire)

    def errReceived(self, data: bytes) -> None:
        self.errTail = (self.errTail + data)[-ERR_TAIL:]
        self.errBuffer += data
        while b"\n" in self.errBuffer:
            line, self.errBuffer = self.errBuffer.split(b"\n", 1)
            log.warn("local helper uid {uid}: {line}", uid=self.uid,
                     line=line.decode("utf-8", "replace"))

    def channelClosed(self) -> None:
        """The child closed (or lost) its socket: it takes no new job; the next starts a new one."""
        if not self.closed:
            self.closed = True
            self.agent._forget(self)

    def retire(self) -> None:
        """Let the child finish what it has and exit; new jobs go to a new helper."""
        if self.idleCall is not None and self.idleCall.active():
            self.idleCall.cancel()
        self.idleCall = None
        self.agent._forget(self)
        if not self.closed:
            self.closed = True
            try:
                self.channel.transport.loseWriteConnection()  # type: ignore[union-attr]
            except Exception:
                pass

    def describeEnd(self, reason: Any) -> bytes:
        """What the child's end looked like: exit status or signal, and its stderr tail."""
        v = reason.value
        status = (b"signal %d" % v.signal if getattr(v, "signal", None) is not None
                  else b"status %d" % (getattr(v, "exitCode", None) or 0))
        text = b"local helper for uid %d exited with %s" % (self.uid, status)
        tail = self.errTail.strip()
        if tail:
            text += b"; its stderr:\n" + tail
        return text + b"\n"

    def processEnded(self, reason: Any) -> None:
        self.closed = True
        self.agent._forget(self)
        if self.idleCall is not None and self.idleCall.active():
            self.idleCall.cancel()
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.loseConnection()
        pending, self.pending = self.pending, {}
        if pending:
            why = self.describeEnd(reason)
            log.warn("{why}", why=why.decode("utf-8", "replace").rstrip("\n"))
        for d, message in pending.values():
            message.close()
            d.callback(JobResult(Outcome.DEFERRAL, why + CRASHED))
        self.ended.callback(None)


class _OneProtocol(Factory):
    """A factory for C{adoptStreamConnection} that hands out one prepared protocol."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol_
