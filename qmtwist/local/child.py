"""
The per-user helper process (qmail-local's privileged half in qmail-lspawn terms): started by
L{qmtwist.local.helper.Helper} through L{qmtwist.privsep.spawnAsUser} as root with C{--drop UID
GID} when the daemon runs as root, one per (uid, gid), alive while it has work and a short idle
time after. It drops to UID/GID first thing in L{main} (L{qmtwist.privsep.dropFromArgv}), in
this freshly exec'd single-threaded process: never between fork and exec in the multithreaded
daemon, where the user and group lookups are unsafe (docs/behaviour/local.md 3.3, "Privileges").

Protocol (L{qmtwist.local.helper}): descriptors 0 and 1 are one AF_UNIX stream socket to the
daemon. For each job the daemon sends the queued message as an open read-only descriptor
(SCM_RIGHTS; the queue is not readable by users) and one netstring C{{"id": N, "job": Job}};
the child answers one netstring per finished delivery, C{{"id": N, "result": JobResult}}, in
completion order. End of input: finish what is running, then exit 0. Writers copy the message
from the descriptor in chunks and programs get it as their seekable standard input, so memory
does not grow with the message. Deliveries run concurrently on this process's own reactor, file
writes on its thread pool, exactly as in the daemon when it is not root.

Run as C{python -m qmtwist.local.child}.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections import deque
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IFileDescriptorReceiver, IHalfCloseableProtocol
from twisted.internet.protocol import Factory
from zope.interface import implementer

from qmtwist.threadrunner import ThreadRunner
from qmtwist.delivery import Outcome
from qmtwist.local.deliver import Job, JobResult, runJob
from qmtwist.local.helper import FrameReceiver
from qmtwist.local.message import QueuedMessage
from qmtwist.privsep import dropFromArgv, runningAsRoot

WHO = "qmtwist local helper"


@implementer(IHalfCloseableProtocol, IFileDescriptorReceiver)
class HelperProtocol(FrameReceiver):
    """Reads a descriptor and a job netstring per job, runs it, writes one result netstring."""

    def __init__(self, reactor: Any, runInThread: Any) -> None:
        super().__init__()
        self.reactor = reactor
        self.runInThread = runInThread  # a ThreadRunner: the Maildir writes and fsyncs
        self.fds: deque[int] = deque()
        self.pending = 0
        self.eof = False
        self.lost = False
        self.baseEnv = dict(os.environb)

    def fileDescriptorReceived(self, fd: int) -> None:
        # Twisted delivers a descriptor before the bytes it came with: it pairs with the next
        # job netstring.
        self.fds.append(fd)

    def frameReceived(self, content: bytes) -> None:
        fd = self.fds.popleft() if self.fds else -1
        self.pending += 1
        ensureDeferred(self.handle(content, fd)).addBoth(self._finished)

    def badFrame(self, why: str) -> None:
        sys.stderr.write(f"{WHO}: bad job netstring ({why})\n")

    async def handle(self, content: bytes, fd: int) -> None:
        """Run one job on the message open at C{fd}; answer with its result (a deferral if
        anything unexpected happens)."""
        message = QueuedMessage(fd) if fd >= 0 else None
        rid: Any = None
        try:
            req = json.loads(content)
            rid = req["id"]
            if message is None:
                raise ValueError("no message descriptor came with the job")
            job = Job.fromJSON(dict(req["job"], messPath=""))
            result = await runJob(job, self.reactor, self.runInThread, self.baseEnv,
                                  message=message)
        except Exception as e:  # anything unexpected: a deferral, never a lost answer
            result = JobResult(Outcome.DEFERRAL,
                               b"Temporary failure in qmail-local: %s. (#4.3.0)\n"
                               % repr(e).encode("utf-8", "replace"))
        finally:
            if message is not None:
                message.close()
        if rid is None:
            sys.stderr.write(f"{WHO}: unreadable job\n")
            return
        self.sendFrame({"id": rid, "result": result.toJSON()})

    def _finished(self, r: Any) -> None:
        self.pending -= 1
        if self.lost and self.pending == 0:
            self.reactor.callLater(0, self.reactor.stop)
            return
        self._maybeExit()

    def readConnectionLost(self) -> None:
        self.eof = True
        self._maybeExit()

    def writeConnectionLost(self) -> None:
        # the daemon can no longer hear us: finish what is in hand, then exit (connectionLost)
        self.connectionLost()

    def connectionLost(self, reason: Any = None) -> None:
        # The daemon is gone (it may have been killed): let the deliveries in hand end as
        # they would (a Maildir file reaches new/ or is removed, never left half written in
        # tmp/); their results cannot be reported, so the restarted daemon repeats them with
        # mayBeRepeat and finds the copies already made. Then exit.
        self.lost = True
        if self.pending == 0 and self.reactor.running:
            self.reactor.callLater(0, self.reactor.stop)

    def _maybeExit(self) -> None:
        if self.eof and self.pending == 0:
            self.transport.loseConnection()  # type: ignore[union-attr]


def main(argv: list[str] | None = None) -> int:
    """Drop to C{--drop UID GID}, then serve the socket on descriptor 0 until it closes."""
    from twisted.internet import reactor as _reactor

    reactor: Any = _reactor

    dropFromArgv(sys.argv[1:] if argv is None else argv, WHO)
    os.umask(0o077)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if runningAsRoot():
        sys.stderr.write(f"{WHO}: refusing to run as root\n")
        return 111
    proto = HelperProtocol(reactor, ThreadRunner(reactor))
    factory = Factory.forProtocol(lambda: proto)
    reactor.adoptStreamConnection(0, socket.AF_UNIX, factory)
    # The socket is now the reactor's own duplicate: nothing may write to it behind the
    # protocol's back, so descriptor 1 (print, warnings) goes to standard error.
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
