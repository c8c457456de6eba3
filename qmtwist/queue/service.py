"""
The queue service (qmail-send): preprocess, schedule, dispatch to delivery agents, record
results, bounce, clean (docs/behaviour/queue.md 5.5-5.10, 6).

One object owns the in-memory schedule; every file operation goes through L{FileOps}, which
runs the waiting operations together on a thread. Reports from agents are trusted only as far as
qmail-send trusts its spawners: anything unexpected is a deferral.
"""

from __future__ import annotations

import fcntl
import heapq
import os
from collections import Counter, deque
from typing import Any, Callable

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from qmtwist.context import ControlCache
from qmtwist.delivery import DeliveryRequest, Outcome, Report
from qmtwist.interfaces import IDeliveryAgent, IInjector
from qmtwist.queue import bounce as qbounce
from qmtwist.queue.finish import FileOps, finishMessage
from qmtwist.queue.state import Channel as _Channel
from qmtwist.queue.state import Message as _Message
from qmtwist.queue.state import logSafe
from qmtwist.queue import clean
from qmtwist.queue.envelope import ChannelEntry
from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.preprocess import Preprocessed, Problem, preprocessBatch, unprefix
from qmtwist.queue.schedule import TOO_LONG, isLastPass, nextPass
from qmtwist.queue.store import Syncer

log = Logger(namespace="qmail-send")
RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]
TODO_SCAN_INTERVAL = 25 * 60
RETRY_SOON = 10
MAX_PASSED_OVER = 1000  # ready local entries looked past per pump, at most


def recipientLimit(control: Any) -> int:
    """Local deliveries at once to one address: concurrencyrecipient, else half the slots."""
    if control.concurrencyrecipient > 0:
        return int(control.concurrencyrecipient)
    return max(1, int(control.concurrencylocal) // 2)


class QueueService(service.Service):
    """
    qmail-send. Construct with the queue, controls, clock, a thread hop, the agents by channel
    name and the injector used for bounces.
    """

    name = "qmail-send"

    def __init__(
        self,
        layout: QueueLayout,
        controls: ControlCache,
        clock: Any,
        runInThread: RunInThread,
        agents: dict[str, IDeliveryAgent],
        injector: IInjector,
        syncer: Syncer | None = None,
    ) -> None:
        self.layout = layout
        self.controls = controls
        self.clock = clock
        self.agents = agents
        self.injector = injector
        self.syncer = syncer or Syncer()
        if self.syncer.canGroup:
            self.syncer.watch(layout.path)
        self.ops = FileOps(runInThread)
        self.runInThread = runInThread
        self.messages: dict[int, _Message] = {}
        self._known: set[int] = set()
        self._again: set[int] = set()
        self._toPreprocess: set[int] = set()
        self._preprocessing = False
        self._timers: list[tuple[float, int, str]] = []
        self._wakeCall: Any = None
        self._ready: dict[str, deque[tuple[int, int]]] = {"local": deque(), "remote": deque()}
        self.active: dict[str, int] = {"local": 0, "remote": 0}
        # local deliveries in flight per recipient address (control/concurrencyrecipient)
        self._perRecipient: Counter[bytes] = Counter()
        self._deliveryCounter = 0
        self._stopping = False
        self._abandoned = False
        self._idleWaiters: list[Deferred[None]] = []
        self._abandonWaiters: list[Deferred[None]] = []
        self._todoScan: LoopingCall | None = None
        self._mutexFd = -1
        self._recoveryDone = False
        self._early: list[int] = []
        self._finishing = 0
        self.started: Deferred[None] = Deferred()

    # -- start and stop --------------------------------------------------------------------

    def lockMutex(self) -> None:
        """Take C{lock/sendmutex}; raise L{RuntimeError} when another queue service holds it."""
        fd = os.open(self.layout.sendmutex, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            log.critical("alert: cannot start: qmail-send is already running")
            raise RuntimeError("qmail-send is already running")
        self._mutexFd = fd

    def startService(self) -> None:
        if self._mutexFd < 0:
            self.lockMutex()
        super().startService()
        self._status()
        self._recover()

    def _recover(self) -> None:
        now = self.clock.seconds()
        d = self.runInThread(lambda: clean.recover(self.layout, now))

        def failed(f: Any) -> None:
            log.critical("alert: unable to opendir {dir}, sleeping... ({why})",
                         dir=self.layout.path, why=f.getErrorMessage())
            if not self._stopping:
                self.clock.callLater(RETRY_SOON, self._recover)

        d.addCallbacks(self._recovered, failed)

    def _recovered(self, scan: clean.Scan) -> None:
        for line in scan.problems:
            log.warn("{line}", line=line)
        if self._stopping:
            self.started.callback(None)
            return
        now = self.clock.seconds()
        for m in scan.messages:
            if m.id in self._known:
                continue
            channels = {}
            for name, ch in m.channels.items():
                done = {e.position for e in ch.entries if e.done}
                if len(done) == len(ch.entries):
                    # every recipient done but the file not yet removed at the crash
                    path = self.layout.channel(name, m.id)
                    self.ops.submit(lambda path=path: os.unlink(path)).addErrback(
                        lambda f: None)
                    continue
                channels[name] = _Channel(
                    name, list(ch.entries), max(now, ch.scheduled), recovered=True, done=done)
            msg = _Message(m.id, m.sender, m.birth, m.stamp, m.size, channels)
            self.messages[m.id] = msg
            self._known.add(m.id)
            self._afterChannelsChanged(msg)
        self._recoveryDone = True
        early, self._early = self._early, []
        self.preprocess(list(scan.todo) + early)
        self._todoScan = LoopingCall(self.scanTodo)
        self._todoScan.clock = self.clock
        self._todoScan.start(TODO_SCAN_INTERVAL, now=False)
        self.started.callback(None)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        if self._todoScan is not None and self._todoScan.running:
            self._todoScan.stop()
        if self._wakeCall is not None and self._wakeCall.active():
            self._wakeCall.cancel()
        self._status()
        d = self._whenIdle()
        d.addCallback(lambda _: self.ops.submit(self._storeSchedule))
        d.addCallback(lambda _: self._stopAgents())
        d.addCallback(lambda _: self._exit())
        return d

    def _stopAgents(self) -> Deferred[None]:
        stopping = gatherResults([maybeDeferred(a.stop) for a in self.agents.values()],
                                 consumeErrors=True)
        stopping.addErrback(lambda f: log.failure("stopping a delivery agent failed", f))
        return self._unlessAbandoned(stopping)

    def abandon(self) -> None:
        """
        The second TERM: stop waiting for the deliveries in flight (docs/behaviour/queue.md 6.1).

        Their recipients stay as they are in the channel files (still C{T}), so they are retried
        after the restart, as possibly repeated; a report that still arrives is ignored, so
        nothing is marked done or bounced that this run did not already record. Preprocessing,
        finishing and the file operations already submitted are short and crash-safe, and are
        still waited for (the thread pool is joined at exit anyway). The agents are still
        stopped (connections aborted, programs sent TERM), but not waited for.
        """
        if self._abandoned:
            return
        self._abandoned = True
        self._stopping = True
        log.info("status: second TERM: abandoning {n} deliveries in flight",
                 n=sum(self.active.values()))
        waiters, self._abandonWaiters = self._abandonWaiters, []
        for d in waiters:
            d.callback(None)
        self._checkIdle()

    def _unlessAbandoned(self, d: Deferred[Any]) -> Deferred[None]:
        """Fire when C{d} does, or at L{abandon}, whichever comes first."""
        out: Deferred[None] = Deferred()
        if self._abandoned:
            out.callback(None)
            return out
        self._abandonWaiters.append(out)

        def fire(_: Any) -> None:
            if out in self._abandonWaiters:
                self._abandonWaiters.remove(out)
                out.callback(None)

        d.addBoth(fire)
        return out

    def _exit(self) -> None:
        if self._mutexFd >= 0:
            os.close(self._mutexFd)
            self._mutexFd = -1
        log.info("status: exiting")

    def _idle(self) -> bool:
        deliveriesDone = self._abandoned or not any(self.active.values())
        return deliveriesDone and not self._preprocessing and not self._finishing

    def _whenIdle(self) -> Deferred[None]:
        if self._idle():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        return d

    def _checkIdle(self) -> None:
        if self._idleWaiters and self._idle():
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def _storeSchedule(self) -> None:
        for m in self.messages.values():
            for ch in m.channels.values():
                try:
                    os.utime(self.layout.channel(ch.name, m.id), (ch.scheduled, ch.scheduled))
                except OSError:
                    pass

    # -- signals -----------------------------------------------------------------------------

    def hup(self) -> None:
        """SIGHUP: reread controls (unreadable files keep their old values), reload agents."""
        warnings = self.controls.reload()
        for agent in self.agents.values():
            agent.reload()
        if not any(w.startswith("alert:") for w in warnings):
            log.info("hup: reread control files, users and rules")
        self._pump()

    def alrm(self) -> None:
        """SIGALRM: every pending pass, local and remote, is due now (FAQ 7.2)."""
        now = self.clock.seconds()
        for m in self.messages.values():
            for ch in m.channels.values():
                if not ch.inPass:
                    ch.scheduled = now
                    heapq.heappush(self._timers, (now, m.id, ch.name))
        self._armTimer()

    # -- preprocessing -----------------------------------------------------------------------

    def scanTodo(self) -> Deferred[None]:
        """Look in todo/ (trigger from another process, or the 25-minute sweep)."""
        d = self.runInThread(lambda: clean.listTodo(self.layout))
        d.addCallback(self.preprocess)
        # a failed scan must not stop the 25-minute LoopingCall for good
        d.addErrback(lambda f: log.warn("alert: unable to opendir {dir}, sleeping... ({why})",
                                        dir=self.layout.sub("todo"), why=f.getErrorMessage()))
        return d

    def preprocess(self, ids: list[int]) -> None:
        """Queue todo entries for preprocessing (in-process injectors call this directly)."""
        if self._stopping or not self.running:
            return
        if not self._recoveryDone:
            # the start-up scan is still reading info/: new messages wait for it
            self._early.extend(ids)
            return
        fresh = [n for n in ids if n not in self._known]
        # An id we still know may be a new message that reused the inode of one whose files
        # are being removed right now: look at it again once that removal is done.
        self._again.update(n for n in ids if n in self._known)
        self._known.update(fresh)
        self._toPreprocess.update(fresh)
        if self._toPreprocess and not self._preprocessing:
            self._runPreprocess()

    def _runPreprocess(self) -> None:
        ids = sorted(self._toPreprocess)
        self._toPreprocess.clear()
        self._preprocessing = True
        control = self.controls.snapshot
        d = self.runInThread(lambda: preprocessBatch(self.layout, ids, control, self.syncer))

        def done(results: list[Preprocessed | Problem]) -> None:
            self._preprocessing = False
            handled = set()
            for r in results:
                handled.add(r.id)
                if isinstance(r, Problem):
                    log.warn("{line}", line=r.line)
                    self._known.discard(r.id)
                    if r.retry:
                        self.clock.callLater(RETRY_SOON, self.preprocess, [r.id])
                else:
                    self._newMessage(r)
            for n in ids:
                if n not in handled:
                    self._known.discard(n)
            self._checkIdle()
            if self._toPreprocess and not self._stopping:
                self._runPreprocess()

        def failed(f: Any) -> None:
            self._preprocessing = False
            log.failure("preprocessing crashed", f)
            for n in ids:
                self._known.discard(n)
            self._checkIdle()

        d.addCallbacks(done, failed)

    def _newMessage(self, p: Preprocessed) -> None:
        log.info("new msg {id}", id=p.id)
        log.info(
            "info msg {id}: bytes {size} from <{sender}> qp {qp} uid {uid}",
            id=p.id, size=p.size, sender=logSafe(p.sender), qp=p.qp, uid=p.uid)
        now = self.clock.seconds()
        channels = {}
        for name, addresses in (("local", p.local), ("remote", p.remote)):
            if addresses:
                entries, offset = [], 0
                for i, a in enumerate(addresses):
                    entries.append(ChannelEntry(i, offset, a, False))
                    offset += len(a) + 2
                channels[name] = _Channel(name, entries, now)
        m = _Message(p.id, p.sender, p.birth, p.stamp, p.size, channels)
        self.messages[p.id] = m
        self._afterChannelsChanged(m)

    # -- scheduling --------------------------------------------------------------------------

    def _afterChannelsChanged(self, m: _Message) -> None:
        if not m.channels:
            self._finish(m)
            return
        for ch in m.channels.values():
            if not ch.undone():
                continue
            heapq.heappush(self._timers, (ch.scheduled, m.id, ch.name))
        self._armTimer()

    def _armTimer(self) -> None:
        if self._stopping:
            return
        if self._wakeCall is not None and self._wakeCall.active():
            self._wakeCall.cancel()
        self._wakeCall = None
        now = self.clock.seconds()
        while self._timers and self._timers[0][0] <= now:
            _, n, name = heapq.heappop(self._timers)
            m = self.messages.get(n)
            ch = m.channels.get(name) if m is not None else None
            if m is None or ch is None or ch.inPass or ch.scheduled > now:
                continue
            self._beginPass(m, ch, now)
        if self._timers:
            self._wakeCall = self.clock.callLater(
                max(0.0, self._timers[0][0] - now), self._armTimer)
        self._pump()

    def _beginPass(self, m: _Message, ch: _Channel, now: float) -> None:
        try:
            m.birth = os.stat(self.layout.info(m.id)).st_mtime  # touch rejuvenates (FAQ 7.3)
        except OSError:
            pass
        ch.inPass = True
        ch.passStart = now
        ch.lastPass = isLastPass(m.birth, now, self.controls.snapshot.queuelifetime)
        ch.deferred = False
        pending = [e for e in ch.undone() if e.position not in ch.inFlight]
        ch.outstanding = len(pending)
        for e in pending:
            self._ready[ch.name].append((m.id, e.position))
        if not pending:
            ch.inPass = False

    def _pump(self) -> None:
        if self._stopping:
            return
        control = self.controls.snapshot
        limits = {"local": control.concurrencylocal, "remote": control.concurrencyremote}
        for name, ready in self._ready.items():
            agent = self.agents.get(name)
            if name == "local" and agent is not None:
                self._pumpLocal(agent, ready, limits[name], recipientLimit(control))
                continue
            while ready and self.active[name] < limits[name] and agent is not None:
                room = limits[name] - self.active[name]
                n, _ = ready[0]
                batch = []
                while ready and ready[0][0] == n and len(batch) < room:
                    batch.append(ready.popleft()[1])
                m = self.messages.get(n)
                if m is None or name not in m.channels:
                    continue
                self._start(agent, m, m.channels[name], batch)

    def _pumpLocal(self, agent: IDeliveryAgent, ready: deque[tuple[int, int]], limit: int,
                   perRecipient: int) -> None:
        """
        Start local deliveries in queue order, but at most C{perRecipient} at once to one
        address: a user whose program never exits (or a flood to one address) holds at most
        that share of the C{concurrencylocal} slots, and the others keep being delivered.
        Entries passed over keep their place.
        """
        skipped: list[tuple[int, int]] = []
        while ready and self.active["local"] < limit and len(skipped) < MAX_PASSED_OVER:
            n, pos = ready.popleft()
            m = self.messages.get(n)
            if m is None or "local" not in m.channels:
                continue
            ch = m.channels["local"]
            address = ch.entries[pos].address.lower()
            if self._perRecipient[address] >= perRecipient:
                skipped.append((n, pos))
                continue
            self._perRecipient[address] += 1
            self._start(agent, m, ch, [pos])
        ready.extendleft(reversed(skipped))

    def _start(self, agent: IDeliveryAgent, m: _Message, ch: _Channel, positions: list[int]) -> None:
        requests, numbers, entries = [], [], []
        for pos in positions:
            e = ch.entries[pos]
            self._deliveryCounter += 1
            numbers.append(self._deliveryCounter)
            entries.append(e)
            ch.inFlight.add(pos)
            self.active[ch.name] += 1
            log.info(
                "starting delivery {delivery}: msg {id} to {channel} {addr}",
                delivery=self._deliveryCounter, id=m.id, channel=ch.name, addr=logSafe(e.address))
            requests.append(DeliveryRequest(
                m.id, self.layout.mess(m.id), qbounce.verpSender(m.sender, e.address),
                e.address, pos, m.stamp, ch.recovered or pos in ch.attempted, ch.lastPass))
            ch.attempted.add(pos)
        self._status()
        try:
            results = agent.deliver(requests)
        except Exception as exc:
            log.failure("delivery agent crashed")
            results = [succeed(Report.deferral(f"Unable to run delivery: {exc}. (#4.3.0)"))
                       for _ in requests]
        results = list(results)
        if len(results) != len(requests):
            log.warn("delivery agent answered {got} of {n} requests", got=len(results),
                     n=len(requests))
            results = (results + [succeed(Report.deferral(
                b"Delivery agent gave no report. (#4.3.0)")) for _ in requests])[:len(requests)]
        for d, number, e in zip(results, numbers, entries):
            d.addErrback(lambda f: Report.deferral(
                f"Delivery agent crashed: {f.getErrorMessage()}. (#4.3.0)"))
            d.addCallback(self._result, m, ch, e, number)

    def _result(self, report: Report, m: _Message, ch: _Channel, e: ChannelEntry, number: int) -> None:
        if self._abandoned:
            return  # left as it is on disk: retried after the restart (abandon)
        if ch.name == "local":
            address = e.address.lower()
            self._perRecipient[address] -= 1
            if self._perRecipient[address] <= 0:
                del self._perRecipient[address]
        if not isinstance(report, Report):
            report = Report.deferral(b"Unexpected report from delivery agent. (#4.3.0)")
        if report.outcome is Outcome.DEFERRAL and ch.lastPass:
            report = Report(Outcome.FAILURE, report.text + TOO_LONG)
        self.active[ch.name] -= 1
        log.info(
            "delivery {delivery}: {outcome}: {text}",
            delivery=number, outcome=report.outcome.value, text=logSafe(report.text))
        self._status()
        if report.outcome is Outcome.DEFERRAL:
            ch.deferred = True
            self._entryFinished(m, ch, e, done=False)
        elif report.outcome is Outcome.FAILURE:
            para = qbounce.paragraph(unprefix(self.controls.snapshot, e.address), report.text)
            self._appendBounce(m, ch, e, para)
        else:
            self._markDone(m, ch, e)
        self._pump()
        self._checkIdle()

    def _appendBounce(self, m: _Message, ch: _Channel, e: ChannelEntry, para: bytes) -> None:
        """Record a permanent failure in bounce/N; qmail-send retries this every 10 s."""
        bouncePath = self.layout.bounce(m.id)

        def failed(f: Any) -> None:
            log.critical("alert: unable to append to bounce message; HELP! sleeping...")
            self.clock.callLater(RETRY_SOON, self._appendBounce, m, ch, e, para)

        self.ops.submit(lambda: qbounce.appendParagraph(bouncePath, para)).addCallbacks(
            lambda _: self._markDone(m, ch, e), failed)

    def _markDone(self, m: _Message, ch: _Channel, e: ChannelEntry) -> None:
        """Overwrite the recipient's T with D (fsynced) before anything else depends on it."""
        path = self.layout.channel(ch.name, m.id)

        def failed(f: Any) -> None:
            # qmail-send: the result stands in memory; only a crash would repeat the delivery
            log.warn("warning: trouble marking {path}; message will be delivered twice!",
                     path=path)
            self._entryFinished(m, ch, e, done=True)

        # once D is durable, a local delivery's forward record has done its work (queue.md 5.10)
        keys = [f"{m.stamp}Q{e.position}"] if ch.name == "local" else []
        self.ops.submit(lambda: clean.markDone(path, [e.offset], self.layout, keys)).addCallbacks(
            lambda _: self._entryFinished(m, ch, e, done=True), failed)

    def _entryFinished(self, m: _Message, ch: _Channel, e: ChannelEntry, done: bool) -> None:
        ch.inFlight.discard(e.position)
        if done:
            ch.done.add(e.position)
        ch.outstanding -= 1
        if ch.outstanding > 0:
            return
        ch.inPass = False
        if not ch.undone():
            del m.channels[ch.name]
            path = self.layout.channel(ch.name, m.id)
            self.ops.submit(lambda: os.unlink(path)).addErrback(lambda f: None)
            if not m.channels:
                self._finish(m)
        else:
            ch.scheduled = nextPass(m.birth, ch.passStart, ch.name)
            heapq.heappush(self._timers, (ch.scheduled, m.id, ch.name))
            self._armTimer()
        self._checkIdle()

    # -- finishing ---------------------------------------------------------------------------

    def _finish(self, m: _Message) -> None:
        if m.finishing or self._abandoned:
            return  # after abandon, recovery at the next start finishes it
        m.finishing = True
        self._finishing += 1
        d = finishMessage(self.layout, self.ops, self.controls.snapshot, self.clock.seconds(),
                          self.injector, m.id, m.sender)
        d.addCallbacks(lambda _: self._removed(m), self._finishFailed, errbackArgs=(m,))

    def _removed(self, m: _Message) -> None:
        self._finishing -= 1
        log.info("end msg {id}", id=m.id)
        self.messages.pop(m.id, None)
        self._known.discard(m.id)
        if m.id in self._again:
            self._again.discard(m.id)
            self.preprocess([m.id])
        self._checkIdle()

    def _finishFailed(self, f: Any, m: _Message) -> None:
        log.warn("warning: trouble injecting bounce message, will try later")
        log.debug("bounce of msg {id} not queued: {why}", id=m.id, why=f.getErrorMessage())
        self._finishing -= 1
        m.finishing = False
        if not self._stopping:
            self.clock.callLater(RETRY_SOON * 6, self._finish, m)

    # -- log ---------------------------------------------------------------------------------

    def _status(self) -> None:
        control = self.controls.snapshot
        log.info(
            "status: local {l}/{L} remote {r}/{R}{exitasap}",
            l=self.active["local"], L=control.concurrencylocal,
            r=self.active["remote"], R=control.concurrencyremote,
            exitasap=" exitasap" if self._stopping else "")
