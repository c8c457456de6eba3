"""
The local delivery agent (qmail-lspawn + qmail-local, docs/behaviour/local.md 3.2-3.6 and 4).

For each request: split the recipient at its last C{@}, find the controlling user on a thread
(L{qmtwist.users.UserTable}), then run qmail-local's work (L{qmtwist.local.deliver.runJob}):

 - daemon not root: in this process, file writes and fsyncs on C{ctx.runInThread}, programs
   with C{reactor.spawnProcess}, all as the daemon's user;
 - daemon root: in a long-lived helper child per (uid, gid) (L{qmtwist.local.child}), started
   on demand (C{python -m qmtwist.local.child --drop UID GID}: the child sets its groups and
   uid right after exec, before reading any request), fed jobs over a socket with the message as
   an open descriptor (L{qmtwist.local.helper}), and ended when
   idle for L{IDLE_TIMEOUT} seconds, on L{LocalAgent.reload} or L{LocalAgent.stop}. A helper
   that dies fails its jobs with a deferral naming its exit status and stderr tail, and the
   next job starts a new one. Nothing a user controls runs as root, no delivery runs as uid 0,
   and nothing calls seteuid in the reactor.

Forwards are queued here, after qmail-local succeeded, as one message (DTLINE + the message as
queued, copied in chunks on a thread) through C{ctx.injector} with sender NEWSENDER
(docs/behaviour/local.md 4.6), exactly once: the commit records the forward under the
delivery's C{uniqueKey} in C{queue/fwd/} (L{qmtwist.queue.fwd}), and a repeated delivery that
finds the record reports it instead of queueing again; the report is
qmail-local's
C{did F+W+P} and C{qp Q} (docs/behaviour/local.md 4.10).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

import qmtwist
from qmtwist.address import splitAddress
from qmtwist.context import Context, freshControls
from qmtwist.delivery import DeliveryRequest, Outcome, Report, capReport
from qmtwist.errors import MailError, QueueError, TemporaryFailure
from qmtwist.interfaces import IDeliveryAgent
from qmtwist.local import maildir
from qmtwist.local.deliver import Job, JobResult, runJob
from qmtwist.local.dirsync import DirectorySyncs
from qmtwist.local.env import daemonEnv
from qmtwist.local.helper import Helper
from qmtwist.local.message import QueuedMessage
from qmtwist.local.program import CRASHED
from qmtwist.queue import fwd
from qmtwist.queue.state import logSafe
from qmtwist.users import User, UserTable

log = Logger(namespace="qmail-lspawn")

IDLE_TIMEOUT = 60.0


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


def _copyForward(writer: Any, dtline: bytes, messPath: str) -> None:
    """On a thread: DTLINE and the queued message into a new queue message, chunk by chunk."""
    writer.write(dtline)
    with QueuedMessage.open(messPath) as message:
        for chunk in message.chunks():
            writer.write(chunk)


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
        self.helpers: dict[tuple[int, int], Helper] = {}
        self.retiring: set[Helper] = set()
        self.running: set[Any] = set()
        self.inflight: set[Deferred[Report]] = set()
        self.stopping = False
        self.dirSyncs = DirectorySyncs(ctx.runInThread, coverData=True)
        #: unique keys of deliveries whose batch sync failed: their retry rewrites the copy
        #: (docs/behaviour/local.md 4.8.1); an entry goes at that retry
        self.unsyncedKeys: set[str] = set()

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
        d.addCallback(lambda _: self.dirSyncs.close())
        return d

    # internals

    def _done(self, result: Any, d: Deferred[Report]) -> Any:
        self.inflight.discard(d)
        return result

    def _unexpected(self, f: Any, r: DeliveryRequest) -> Report:
        log.failure("local delivery to {rcpt} crashed", f, rcpt=logSafe(r.recipient))
        return Report.deferral(b"Temporary failure in qmail-local. (#4.3.0)\n")

    def _forget(self, helper: Helper) -> None:
        key = (helper.uid, helper.gid)
        if self.helpers.get(key) is helper:
            del self.helpers[key]
        if helper.closed and not helper.ended.called:
            self.retiring.add(helper)
            helper.ended.addBoth(lambda _: self.retiring.discard(helper))

    def _lookup(self, local: bytes, messPath: str) -> tuple[User, QueuedMessage | None]:
        """
        On a thread: the user and, as root, the message opened for the helper (which cannot
        open the queue; it gets this descriptor, as qmail-local gets descriptor 0).
        """
        user = self.users.find(local)
        if not self.root:
            return user, None
        return user, QueuedMessage.open(messPath)

    def _helper(self, user: User) -> Helper:
        key = (user.uid, user.gid)
        h = self.helpers.get(key)
        if h is None or h.closed:
            h = Helper(self, user.uid, user.gid)
            h.start()
            self.helpers[key] = h
        return h

    async def _deliverOne(self, req: DeliveryRequest) -> Report:
        local, host = splitAddress(req.recipient)
        if not local:
            return Report.success(b"did 0+0+0\n")
        if self.stopping:
            return Report.deferral(CRASHED)
        # defaultdelivery as it is now, read on a thread (docs/behaviour/control.md 2.2)
        controls = await freshControls(self.ctx)
        try:
            user, message = await self.ctx.runInThread(lambda: self._lookup(local, req.messPath))
        except MailError as e:
            return Report(Outcome.FAILURE if e.permanent else Outcome.DEFERRAL,
                          capReport(e.text.encode() + b"\n"))
        rewrite = req.uniqueKey in self.unsyncedKeys
        self.unsyncedKeys.discard(req.uniqueKey)
        since = self.dirSyncs.token()
        job = Job(user.name, user.home, user.dash, user.ext, local, host, req.sender,
                  req.messPath, req.uniqueKey, req.mayBeRepeat, controls.defaultdelivery,
                  self.ctx.home.bin, self.reactor.seconds(), float(controls.timeoutlocal),
                  syncLater=True, lateDataOn=tuple(sorted(self.dirSyncs.watched)),
                  rewrite=rewrite)
        if message is not None:
            try:
                helper = self._helper(user)
            except BaseException:
                message.close()
                raise
            result = await helper.run(job, message)
            uid = user.uid
        else:
            result = await runJob(job, self.reactor, self.ctx.runInThread, self.baseEnv,
                                  self.running)
            uid = os.getuid()
        return await self._finish(req, user, uid, result, since)

    async def _finish(self, req: DeliveryRequest, user: User, uid: int,
                      result: JobResult, since: int) -> Report:
        if result.outcome is not Outcome.SUCCESS:
            if result.failedLine:
                log.info("delivery to {rcpt}: line {line} of {file} failed: {outcome}",
                         rcpt=logSafe(req.recipient), line=result.failedLine,
                         file=os.fsdecode(result.failedFile) if isinstance(
                             result.failedFile, bytes) else result.failedFile,
                         outcome=result.outcome.value, text=result.text)
            return Report(result.outcome, capReport(result.text))
        text = result.text
        if result.unsynced:
            # the Maildir names are durable before anything counts on this delivery
            # (docs/behaviour/local.md 4.8.1)
            try:
                await self.dirSyncs.sync(result.unsynced, since)
            except OSError as e:
                log.info("delivery to {rcpt}: Maildir sync failed: {error}",
                         rcpt=logSafe(req.recipient), error=e)
                self.unsyncedKeys.add(req.uniqueKey)
                return Report.deferral(text + maildir.TEMP.encode() + b"\n")
        qpLine = b""
        if result.forwards:
            how = b"by alias" if user.isAlias else b"by uid %d" % uid
            layout, key = self.ctx.home.queue, req.uniqueKey
            try:
                # Exactly once: an earlier run of this delivery may have queued the forward
                # and crashed before the queue recorded the result (docs/behaviour/local.md 4.6).
                earlier = await self.ctx.runInThread(lambda: fwd.readRecord(layout, key))
                if earlier is not None:
                    qpLine = b"qp %d\n" % earlier.qp
                    did = b"did %d+%d+%d\n" % (
                        result.files, len(result.forwards), result.programs)
                    return Report(Outcome.SUCCESS, capReport(text + did + qpLine))
                writer = self.ctx.injector.newMessage(how, uid)
                try:
                    await self.ctx.runInThread(
                        lambda: _copyForward(writer, result.dtline, req.messPath))
                except BaseException:
                    writer.abort()
                    raise
                queued = await writer.commit(
                    result.newsender, list(result.forwards), onceKey=key)
            except TemporaryFailure as e:
                return Report.deferral(text + e.text.encode() + b"\n")
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
