"""
The per-user helper process (qmail-local's privileged half in qmail-lspawn terms): started by
L{qmtwist.local.agent.LocalAgent} as root with C{--drop UID GID} when the daemon runs as root, one
per (uid, gid), alive while it has work and a short idle time after. It drops to UID/GID (groups,
gid, uid) first thing in L{main}, in this freshly exec'd single-threaded process: never between
fork and exec in the multithreaded daemon, where the user and group lookups are unsafe.

Protocol: one JSON object per line on stdin, C{{"id": N, "job": Job, "message": BASE64}}; one
line per finished delivery on stdout, C{{"id": N, "result": JobResult}}, in completion order.
EOF on stdin: finish what is running, then exit 0. The message is written to a private temporary
file (mode 0600) because the queue is not readable by users; programs get it as their seekable
standard input. Deliveries run concurrently on this process's own reactor, file writes on its
thread pool, exactly as in the daemon when it is not root.

Run as C{python -m qmtwist.local.child}.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sys
from typing import Any

from twisted.internet import stdio
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from zope.interface import implementer

from qmtwist.delivery import Outcome
from qmtwist.local.deliver import Job, JobResult, runJob


@implementer(IHalfCloseableProtocol)
class HelperProtocol(Protocol):
    """Reads request lines, runs each job, writes one result line per job."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.chunks: list[bytes] = []
        self.pending = 0
        self.eof = False
        self.baseEnv = dict(os.environb)

    def dataReceived(self, data: bytes) -> None:
        # requests carry whole messages: collect chunks, join once per line (no quadratic copy)
        while True:
            i = data.find(b"\n")
            if i < 0:
                if data:
                    self.chunks.append(data)
                return
            self.chunks.append(data[:i])
            line = b"".join(self.chunks)
            self.chunks = []
            data = data[i + 1:]
            if line.strip():
                self.pending += 1
                ensureDeferred(self.handle(line)).addBoth(self._finished)

    async def handle(self, line: bytes) -> None:
        req = json.loads(line)
        rid = req["id"]
        try:
            message = base64.b64decode(req["message"])
            job = Job.fromJSON(dict(req["job"], messPath=""))
            result = await runJob(job, self.reactor, deferToThread, self.baseEnv,
                                  message=message)
        except Exception as e:  # anything unexpected: a deferral, never a lost answer
            result = JobResult(Outcome.DEFERRAL,
                               b"Temporary failure in qmail-local: %s. (#4.3.0)\n"
                               % repr(e).encode("utf-8", "replace"))
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
    stdio.StandardIO(proto, reactor=reactor)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
