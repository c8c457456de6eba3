"""
The daemon's side of a per-user local delivery helper (qmail-lspawn's spawn of qmail-local).

When the daemon runs as root, deliveries for one (uid, gid) run in a long-lived child,
L{qmtwist.local.child}, which drops to that uid and gid right after exec. The child talks to the
daemon over one AF_UNIX stream socket (its descriptors 0 and 1):

 - daemon -> child: for each job, the queue's message file as an open read-only descriptor
   (C{SCM_RIGHTS}, as qmail-lspawn hands qmail-local the message on descriptor 0: the user
   cannot open the queue) followed by one JSON line C{{"id": N, "job": Job}}. Descriptors and
   lines pair up in order. Half-closing the socket asks the child to finish and exit.
 - child -> daemon: one JSON line C{{"id": N, "result": JobResult}} per finished job, in
   completion order.

The message itself never crosses the socket, so the daemon's memory does not grow with the
message size. The child's standard error is logged line by line.
"""

from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from zope.interface import implementer

import qmtwist
from qmtwist.delivery import Outcome
from qmtwist.local.deliver import Job, JobResult
from qmtwist.local.message import QueuedMessage
from qmtwist.local.program import CRASHED

if TYPE_CHECKING:
    from qmtwist.local.agent import LocalAgent

log = Logger(namespace="qmail-lspawn")

ERR_TAIL = 1000
MAX_RESULT_LINE = 1 << 20  # a result line is a report (capped) plus a few addresses


@implementer(IHalfCloseableProtocol)
class _Channel(Protocol):
    """The socket to one helper: job descriptors and lines out, result lines in."""

    def __init__(self, helper: Helper) -> None:
        self.helper = helper
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.helper.resultLine(line)
        if len(self.buffer) > MAX_RESULT_LINE:
            log.error("local helper uid {uid}: result line too long; closing", uid=self.helper.uid)
            self.transport.abortConnection()  # type: ignore[union-attr]

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
        env = dict(self.agent.baseEnv)
        pkgRoot = os.path.dirname(os.path.dirname(os.path.abspath(qmtwist.__file__)))
        old = env.get(b"PYTHONPATH")
        env[b"PYTHONPATH"] = os.fsencode(pkgRoot) + (b":" + old if old else b"")
        exe = self.agent.python
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Always exec first and let the new, single-threaded child become uid/gid itself
            # before it reads any request (qmail-lspawn's way), never spawnProcess(uid=, gid=):
            # Twisted then calls initgroups() -> getpwuid() between fork and exec, and in this
            # multithreaded daemon an NSS lookup running on a pool thread at the moment of the
            # fork leaves the forked copy of libc inconsistent (the child died there with
            # SIGSEGV). Without uid/gid nothing but chdir and exec runs in the forked copy.
            self.agent.reactor.spawnProcess(
                self, exe, [exe, "-P", "-m", "qmtwist.local.child", "--drop", str(self.uid),
                            str(self.gid)],
                env=env, path="/", childFDs={0: theirs.fileno(), 1: theirs.fileno(), 2: "r"})
            self.channel = _Channel(self)
            self.agent.reactor.adoptStreamConnection(
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
        line = json.dumps({"id": self.nextId, "job": job.toJSON()})
        transport = self.channel.transport
        transport.sendFileDescriptor(message.fd)  # type: ignore[union-attr]
        transport.write(line.encode() + b"\n")  # type: ignore[union-attr]
        return d

    def resultLine(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            d, message = self.pending.pop(int(msg["id"]))
            result = JobResult.fromJSON(msg["result"])
        except Exception:
            log.failure("bad line from local helper uid {uid}", uid=self.uid)
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
