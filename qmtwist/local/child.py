"""
The per-user helper process (qmail-local's privileged half in qmail-lspawn terms): started by
L{qmtwist.local.agent.LocalAgent} as root with C{--drop UID GID} when the daemon runs as root, one
per (uid, gid), alive while it has work and a short idle time after. It drops to UID/GID (groups,
gid, uid) first thing in L{main}, in this freshly exec'd single-threaded process: never between
fork and exec in the multithreaded daemon, where the user and group lookups are unsafe.

Protocol (L{qmtwist.local.helper}): descriptors 0 and 1 are one AF_UNIX stream socket to the
daemon. For each job the daemon sends the queued message as an open read-only descriptor
(SCM_RIGHTS; the queue is not readable by users) and one JSON line C{{"id": N, "job": Job}};
the child answers one line per finished delivery, C{{"id": N, "result": JobResult}}, in
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
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from qmtwist.delivery import Outcome
from qmtwist.local.deliver import Job, JobResult, runJob
from qmtwist.local.message import QueuedMessage

MAX_REQUEST_LINE = 1 << 20  # a job: names, addresses, paths


@implementer(IHalfCloseableProtocol, IFileDescriptorReceiver)
class HelperProtocol(Protocol):
    """Reads a descriptor and a request line per job, runs it, writes one result line."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.chunks: list[bytes] = []
        self.size = 0
        self.fds: deque[int] = deque()
        self.pending = 0
        self.eof = False
        self.baseEnv = dict(os.environb)

    def fileDescriptorReceived(self, fd: int) -> None:
        # Twisted delivers a descriptor before the bytes it came with: it pairs with the next
        # request line.
        self.fds.append(fd)

    def dataReceived(self, data: bytes) -> None:
        while True:
            i = data.find(b"\n")
            if i < 0:
                if data:
                    self.chunks.append(data)
                    self.size += len(data)
                    if self.size > MAX_REQUEST_LINE:
                        sys.stderr.write("qmtwist local helper: request line too long\n")
                        self.transport.abortConnection()
                return
            self.chunks.append(data[:i])
            line = b"".join(self.chunks)
            self.chunks, self.size = [], 0
            data = data[i + 1:]
            if line.strip():
                fd = self.fds.popleft() if self.fds else -1
                self.pending += 1
                ensureDeferred(self.handle(line, fd)).addBoth(self._finished)

    async def handle(self, line: bytes, fd: int) -> None:
        message = QueuedMessage(fd) if fd >= 0 else None
        rid: Any = None
        try:
            req = json.loads(line)
            rid = req["id"]
            if message is None:
                raise ValueError("no message descriptor came with the job")
            job = Job.fromJSON(dict(req["job"], messPath=""))
            result = await runJob(job, self.reactor, deferToThread, self.baseEnv,
                                  message=message)
        except Exception as e:  # anything unexpected: a deferral, never a lost answer
            result = JobResult(Outcome.DEFERRAL,
                               b"Temporary failure in qmail-local: %s. (#4.3.0)\n"
                               % repr(e).encode("utf-8", "replace"))
        finally:
            if message is not None:
                message.close()
        if rid is None:
            sys.stderr.write("qmtwist local helper: unreadable request line\n")
            return
        self.transport.write(json.dumps({"id": rid, "result": result.toJSON()}).encode() + b"\n")

    def _finished(self, r: Any) -> None:
        self.pending -= 1
        self._maybeExit()

    def readConnectionLost(self) -> None:
        self.eof = True
        self._maybeExit()

    def writeConnectionLost(self) -> None:
        self.reactor.callLater(0, self.reactor.stop)

    def connectionLost(self, reason: Any) -> None:
        if self.reactor.running:
            self.reactor.callLater(0, self.reactor.stop)

    def _maybeExit(self) -> None:
        if self.eof and self.pending == 0:
            self.transport.loseConnection()


def dropPrivileges(uid: int, gid: int) -> None:
    """
    qmail's prot_gid + prot_uid: the one group of the assignment (no supplementary groups of
    whatever account owns that uid), then the uid; refuse uid 0 and check it cannot come back.
    """
    if uid == 0:
        raise SystemExit("qmtwist local helper: refusing to run as root")
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SystemExit("qmtwist local helper: privileges could not be dropped")


def main(argv: list[str] | None = None) -> int:
    from twisted.internet import reactor

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--drop"] and len(argv) == 3:
        dropPrivileges(int(argv[1]), int(argv[2]))
    os.umask(0o077)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if os.getuid() == 0 or os.geteuid() == 0:
        sys.stderr.write("qmtwist local helper: refusing to run as root\n")
        return 111
    reactor.suggestThreadPoolSize(10)
    proto = HelperProtocol(reactor)
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
