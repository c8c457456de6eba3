"""
The local delivery agent (qmail-lspawn + qmail-local, docs/behaviour/local.md 3.2-3.6 and 4).

For each request: split the recipient at its last C{@}, find the controlling user on a thread
(L{qmtwist.users.UserTable}), then run qmail-local's work (L{qmtwist.local.deliver.runJob}):

 - daemon not root: in this process, file writes and fsyncs on C{ctx.runInThread}, programs
   with C{reactor.spawnProcess}, all as the daemon's user;
 - daemon root: in a long-lived helper child per (uid, gid) (L{qmtwist.local.child}), started
   on demand (C{python -m qmtwist.local.child --drop UID GID}: the child sets its groups and
   uid right after exec, before reading any request), fed jobs over its stdin and ended when
   idle for L{IDLE_TIMEOUT} seconds, on L{LocalAgent.reload} or L{LocalAgent.stop}. A helper
   that dies fails its jobs with a deferral naming its exit status and stderr tail, and the
   next job starts a new one. Nothing a user controls runs as root, no delivery runs as uid 0,
   and nothing calls seteuid in the reactor.

Forwards are queued here, after qmail-local succeeded, as one message (DTLINE + the message as
queued) through C{ctx.injector} with sender NEWSENDER (docs/behaviour/local.md 4.6); the report is
qmail-local's
C{did F+W+P} and C{qp Q} (docs/behaviour/local.md 4.10).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from zope.interface import implementer

import qmtwist
from qmtwist.context import Context
from qmtwist.delivery import DeliveryRequest, Outcome, Report, capReport
from qmtwist.errors import MailError, QueueError, TemporaryFailure
from qmtwist.interfaces import IDeliveryAgent
from qmtwist.local.deliver import Job, JobResult, runJob
from qmtwist.local.env import daemonEnv
from qmtwist.local.program import CRASHED
from qmtwist.queue.state import logSafe
from qmtwist.users import User, UserTable

log = Logger(namespace="qmail-lspawn")

IDLE_TIMEOUT = 60.0
ERR_TAIL = 1000


def splitAddress(recipient: bytes) -> tuple[bytes, bytes]:
    """C{LOCAL}, C{HOST}: before and after the last C{@} (docs/behaviour/local.md 3.2)."""
    if b"@" in recipient:
        local, host = recipient.rsplit(b"@", 1)
        return local, host
    return recipient, b""


def _othersMayEnter(path: str) -> bool:
    """Whether every directory above C{path} is searchable and C{path} readable by anyone."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts) + 1):
        p = os.sep.join(parts[:i]) or os.sep
        try:
            mode = os.stat(p).st_mode
        except OSError:
            return False
        need = 0o001 if i < len(parts) else 0o004
        if not mode & need:
            return False
    return True


def interpreterReachable(python: str) -> bool:
    """Whether an unprivileged uid can run C{python} with qmtwist and Twisted importable."""
    import twisted

    return all(_othersMayEnter(p) for p in (
        python, os.path.dirname(os.__file__), os.path.dirname(qmtwist.__file__),
        os.path.dirname(twisted.__file__)))


def _readFile(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class _Helper(ProcessProtocol):
    """One helper child for one (uid, gid); see L{qmtwist.local.child} for the protocol."""

    def __init__(self, agent: LocalAgent, uid: int, gid: int) -> None:
        self.agent = agent
        self.uid, self.gid = uid, gid
        self.pending: dict[int, Deferred[JobResult]] = {}
        self.nextId = 0
        self.buffer = b""
        self.errBuffer = b""
        self.errTail = b""
        self.closed = False
        self.idleCall: Any = None
        self.ended: Deferred[None] = Deferred()

    def start(self) -> None:
        env = dict(self.agent.baseEnv)
        pkgRoot = os.path.dirname(os.path.dirname(os.path.abspath(qmtwist.__file__)))
        old = env.get(b"PYTHONPATH")
        env[b"PYTHONPATH"] = os.fsencode(pkgRoot) + (b":" + old if old else b"")
        exe = self.agent.python
        # Always exec first and let the new, single-threaded child become uid/gid itself
        # before it reads any request (qmail-lspawn's way), never spawnProcess(uid=, gid=):
        # Twisted then calls initgroups() -> getpwuid() between fork and exec, and in this
        # multithreaded daemon an NSS lookup running on a pool thread at the moment of the
        # fork (another delivery's _lookup) leaves the forked copy of libc inconsistent; the
        # child died there with SIGSEGV ("Aack, child crashed") when several deliveries for
        # a new (uid, gid) started at once. Without uid/gid nothing but chdir and exec runs
        # in the forked copy. Nothing of the user's runs before the drop.
        self.agent.reactor.spawnProcess(
            self, exe, [exe, "-P", "-m", "qmtwist.local.child", "--drop", str(self.uid),
                        str(self.gid)],
            env=env, path="/", childFDs={0: "w", 1: "r", 2: "r"})

    def run(self, job: Job, message: bytes) -> Deferred[JobResult]:
        import base64

        if self.idleCall is not None and self.idleCall.active():
            self.idleCall.cancel()
        self.idleCall = None
        self.nextId += 1
        d: Deferred[JobResult] = Deferred()
        self.pending[self.nextId] = d
        line = json.dumps({"id": self.nextId, "job": job.toJSON(),
                           "message": base64.b64encode(message).decode()})
        self.transport.write(line.encode() + b"\n")
        return d

    def outReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            try:
                msg = json.loads(line)
                d = self.pending.pop(int(msg["id"]))
                result = JobResult.fromJSON(msg["result"])
            except Exception:
                log.failure("bad line from local helper uid {uid}", uid=self.uid)
                continue
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

    def childConnectionLost(self, childFD: int) -> None:
        """The child closed (or lost) a pipe: it takes no new job; the next one starts a new helper."""
        if childFD in (0, 1) and not self.closed:
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
                self.transport.closeStdin()
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
        pending, self.pending = self.pending, {}
        if pending:
            why = self.describeEnd(reason)
            log.warn("{why}", why=why.decode("utf-8", "replace").rstrip("\n"))
        for d in pending.values():
            d.callback(JobResult(Outcome.DEFERRAL, why + CRASHED))
        self.ended.callback(None)


@implementer(IDeliveryAgent)
class LocalAgent:
    """
    The C{local} channel's L{IDeliveryAgent}.

    @param ctx: the daemon's L{Context} (home, reactor, injector, controls, runInThread).
    @param root: run deliveries in per-user helpers; default: whether we run as uid 0.
    """

    channel = "local"

    def __init__(self, ctx: Context, root: bool | None = None,
                 idleTimeout: float = IDLE_TIMEOUT, python: str | None = None) -> None:
        self.ctx = ctx
        self.reactor = ctx.reactor
        self.root = os.getuid() == 0 if root is None else root
        self.users = UserTable(ctx.home, self.root)
        self.idleTimeout = idleTimeout
        self.python = python or sys.executable
        self.baseEnv = daemonEnv()
        self.helpers: dict[tuple[int, int], _Helper] = {}
        self.retiring: set[_Helper] = set()
        self.running: set[Any] = set()
        self.inflight: set[Deferred[Report]] = set()
        self.stopping = False

    # IDeliveryAgent

    def deliver(self, requests: list[DeliveryRequest]) -> list[Deferred[Report]]:
        out = []
        for r in requests:
            d = ensureDeferred(self._deliverOne(r))
            d.addErrback(self._unexpected, r)
            self.inflight.add(d)
            d.addBoth(self._done, d)
            out.append(d)
        return out

    def reload(self) -> None:
        self.users.reload()
        self.baseEnv = daemonEnv()
        for h in list(self.helpers.values()):
            h.retire()

    def stop(self) -> Deferred[None]:
        self.stopping = True
        waits: list[Deferred[Any]] = []
        for h in list(self.helpers.values()) + list(self.retiring):
            h.retire()
            try:
                h.transport.signalProcess("TERM")
            except Exception:
                pass
            waits.append(h.ended)
        for t in list(self.running):
            try:
                t.signalProcess("TERM")
            except Exception:
                pass
        waits.extend(self.inflight)
        d = DeferredList(waits, consumeErrors=True)
        d.addCallback(lambda _: None)
        return d

    # internals

    def _done(self, result: Any, d: Deferred[Report]) -> Any:
        self.inflight.discard(d)
        return result

    def _unexpected(self, f: Any, r: DeliveryRequest) -> Report:
        log.failure("local delivery to {rcpt} crashed", f, rcpt=logSafe(r.recipient))
        return Report.deferral(b"Temporary failure in qmail-local. (#4.3.0)\n")

    def _forget(self, helper: _Helper) -> None:
        key = (helper.uid, helper.gid)
        if self.helpers.get(key) is helper:
            del self.helpers[key]
        if helper.closed and not helper.ended.called:
            self.retiring.add(helper)
            helper.ended.addBoth(lambda _: self.retiring.discard(helper))

    def _lookup(self, local: bytes, messPath: str) -> tuple[User, bytes | None]:
        """On a thread: the user and, as root, the message (the helper cannot read the queue)."""
        user = self.users.find(local)
        if not self.root:
            return user, None
        try:
            return user, _readFile(messPath)
        except OSError as e:
            raise TemporaryFailure(f"Unable to read message: {e.strerror}. (#4.3.0)")

    def _helper(self, user: User) -> _Helper:
        key = (user.uid, user.gid)
        h = self.helpers.get(key)
        if h is None or h.closed:
            h = _Helper(self, user.uid, user.gid)
            h.start()
            self.helpers[key] = h
        return h

    async def _deliverOne(self, req: DeliveryRequest) -> Report:
        local, host = splitAddress(req.recipient)
        if not local:
            return Report.success(b"did 0+0+0\n")
        if self.stopping:
            return Report.deferral(CRASHED)
        try:
            user, message = await self.ctx.runInThread(lambda: self._lookup(local, req.messPath))
        except MailError as e:
            return Report(Outcome.FAILURE if e.permanent else Outcome.DEFERRAL,
                          capReport(e.text.encode() + b"\n"))
        controls = self.ctx.controls.current()
        job = Job(user.name, user.home, user.dash, user.ext, local, host, req.sender,
                  req.messPath, req.uniqueKey, req.mayBeRepeat, controls.defaultdelivery,
                  self.ctx.home.bin, self.reactor.seconds())
        if message is not None:
            result = await self._helper(user).run(job, message)
            uid = user.uid
        else:
            result = await runJob(job, self.reactor, self.ctx.runInThread, self.baseEnv,
                                  self.running)
            uid = os.getuid()
        return await self._finish(req, user, uid, result)

    async def _finish(self, req: DeliveryRequest, user: User, uid: int,
                      result: JobResult) -> Report:
        if result.outcome is not Outcome.SUCCESS:
            if result.failedLine:
                log.info("delivery to {rcpt}: line {line} of {file} failed: {outcome}",
                         rcpt=logSafe(req.recipient), line=result.failedLine,
                         file=os.fsdecode(result.failedFile) if isinstance(
                             result.failedFile, bytes) else result.failedFile,
                         outcome=result.outcome.value, text=result.text)
            return Report(result.outcome, capReport(result.text))
        text = result.text
        qpLine = b""
        if result.forwards:
            how = b"by alias" if user.isAlias else b"by uid %d" % uid
            try:
                message = await self.ctx.runInThread(lambda: _readFile(req.messPath))
                queued = await self.ctx.injector.inject(
                    result.newsender, list(result.forwards), result.dtline + message, how, uid)
            except QueueError as e:
                why = b"Unable to forward message: " + e.text.encode() + b".\n"
                outcome = Outcome.FAILURE if e.permanent else Outcome.DEFERRAL
                return Report(outcome, capReport(text + why))
            except OSError as e:
                return Report.deferral(
                    text + b"Unable to forward message: %s. (#4.3.0)\n" % e.strerror.encode())
            qpLine = b"qp %d\n" % queued.qp
        did = b"did %d+%d+%d\n" % (result.files, len(result.forwards), result.programs)
        return Report(Outcome.SUCCESS, capReport(text + did + qpLine))
