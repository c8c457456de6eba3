"""
The queue service (qmail-send): start-up and recovery, the schedule of passes, the results of
deliveries, the end of each message, signals and the stop (docs/behaviour/queue.md 5.5-5.10, 6).

Its parts, one job each: L{qmtwist.queue.intake.Intake} preprocesses todo entries into
messages; L{qmtwist.queue.passes.Passes} holds when each channel's next pass is due and begins it;
L{qmtwist.queue.dispatch.Dispatcher} starts deliveries within the concurrency limits;
L{qmtwist.queue.shutdown.Shutdown} holds what the stop waits for. This service records each
report (done mark, bounce paragraph or next pass) and finishes messages with
L{qmtwist.queue.finish.finishMessage}; every file operation goes through L{FileOps}, which runs
the waiting operations together on a thread.
"""

from __future__ import annotations

import fcntl
import os
from functools import partial
from typing import Any

from twisted.application import service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from qmtwist.context import ControlCache, RunInThread
from qmtwist.delivery import Outcome, Report
from qmtwist.interfaces import IDeliveryAgent, IInjector
from qmtwist.queue import bounce as qbounce
from qmtwist.queue import clean, fwd, marks
from qmtwist.queue.dispatch import Dispatcher
from qmtwist.queue.envelope import ChannelEntry
from qmtwist.queue.fileops import FileOps
from qmtwist.queue.finish import finishMessage
from qmtwist.queue.intake import RETRY_SOON, Intake, resumedMessage
from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.preprocess import unprefix
from qmtwist.queue.schedule import TOO_LONG, nextPass
from qmtwist.queue.shutdown import Shutdown, storeSchedule
from qmtwist.queue.state import Channel, Message, logSafe
from qmtwist.queue.store import Syncer
from qmtwist.queue.passes import Passes

log = Logger(namespace="qmail-send")
TODO_SCAN_INTERVAL = 25 * 60


class QueueService(service.Service):
    """qmail-send: the queue, controls, clock, a thread hop, agents by channel, the injector."""

    name = "qmail-send"  # type: ignore[assignment]  # Service declares name = None

    def __init__(
        self,
        layout: QueueLayout,
        controls: ControlCache,
        clock: IReactorTime,
        runInThread: RunInThread,
        agents: dict[str, IDeliveryAgent],
        injector: IInjector,
        syncer: Syncer | None = None,
    ) -> None:
        self.layout = layout
        self.controls = controls
        self.clock = clock
        self.injector = injector
        self.syncer = syncer or Syncer()
        if self.syncer.canGroup:
            self.syncer.watch(layout.path)
        self.ops = FileOps(runInThread, self.syncer, layout.path)
        self.runInThread = runInThread
        self.messages: dict[int, Message] = {}
        self.held: set[int] = set()  # no pass starts for these (qmtwist.queue.admin)
        self.shutdown = Shutdown(self._idle)
        self.intake = Intake(layout, controls, clock, runInThread, self.syncer,
                             self._adopt, self.shutdown.check)
        handOff = getattr(injector, "handOff", None)  # (an IInjector need not offer it)
        if handOff is not None:  # this process's commits come preprocessed (queue.md 5.11)
            handOff(self.intake)
        self.dispatch = Dispatcher(layout, controls, agents, self.messages, self._result,
                                   self._status)
        self.passes = Passes(clock, layout, controls, self.ops, self.dispatch, self.messages,
                             self.held, lambda: self._stopping, self._pump)
        self.timers = self.passes.timers
        self._stopping = False
        self._todoScan: LoopingCall | None = None
        self._mutexFd = -1
        self._finishing = 0
        self.started: Deferred[None] = Deferred()
        self.deliveryObservers: list[Any] = []  # IDeliveryObserver: told of each result

    @property
    def agents(self) -> dict[str, IDeliveryAgent]:
        """The delivery agent of each channel (the dispatcher's)."""
        return self.dispatch.agents

    @property
    def active(self) -> dict[str, int]:
        """Deliveries in flight per channel."""
        return self.dispatch.active

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
        self.held |= scan.held
        if self._stopping:
            self.started.callback(None)
            return
        now = self.clock.seconds()
        for m in scan.messages:
            if m.id in self.intake.known:
                continue
            resumed, finished = resumedMessage(m, now)
            for name in finished:  # every recipient done, the file not yet removed at the crash
                path = self.layout.channel(name, m.id)
                self.ops.submit(partial(os.unlink, path)).addErrback(lambda f: None)
            self.intake.known.add(m.id)
            self._adopt(resumed)
        self.intake.open(scan.todo)
        self._todoScan = LoopingCall(self.scanTodo)
        self._todoScan.clock = self.clock
        self._todoScan.start(TODO_SCAN_INTERVAL, now=False)
        self.started.callback(None)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = self.intake.closed = True
        if self._todoScan is not None and self._todoScan.running:
            self._todoScan.stop()
        self.passes.cancel()
        self._status()
        d = self.shutdown.whenIdle()
        d.addCallback(lambda _: self.ops.submit(
            lambda: storeSchedule(self.layout, self.messages.values())))
        d.addCallback(lambda _: self._stopAgents())
        d.addCallback(lambda _: self._exit())
        return d

    def _stopAgents(self) -> Deferred[None]:
        stopping = gatherResults([maybeDeferred(a.stop) for a in self.agents.values()],
                                 consumeErrors=True)
        stopping.addErrback(lambda f: log.failure("stopping a delivery agent failed", f))
        return self.shutdown.unlessAbandoned(stopping)

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
        if self.shutdown.abandoned:
            return
        self._stopping = self.intake.closed = True
        log.info("status: second TERM: abandoning {n} deliveries in flight",
                 n=self.dispatch.inFlight())
        self.shutdown.abandon()

    def _exit(self) -> None:
        if self._mutexFd >= 0:
            os.close(self._mutexFd)
            self._mutexFd = -1
        log.info("status: exiting")

    def _idle(self) -> bool:
        """Whether the stop may go on: no delivery, preprocessing or finishing in flight."""
        deliveriesDone = self.shutdown.abandoned or not self.dispatch.inFlight()
        return deliveriesDone and not self.intake.busy and not self._finishing

    # -- signals -----------------------------------------------------------------------------

    def hup(self) -> Deferred[None]:
        """
        SIGHUP: reread controls on a thread (unreadable files keep their old values), then
        reload the agents. Fires when done.
        """

        def reloaded(warnings: list[str]) -> None:
            for agent in self.agents.values():
                agent.reload()
            if not any(w.startswith("alert:") for w in warnings):
                log.info("hup: reread control files, users and rules")
            self._pump()

        return self.controls.reloadOffThread(self.runInThread).addCallback(reloaded)

    def alrm(self) -> None:
        """SIGALRM: every pending pass, local and remote, is due now (FAQ 7.2); not if held."""
        now = self.clock.seconds()
        for m in (m for m in self.messages.values() if m.id not in self.held):
            for ch in m.channels.values():
                if not ch.inPass:
                    ch.scheduled = now
                    self.timers.push(now, m.id, ch.name)
        self.wake()

    # -- new messages ------------------------------------------------------------------------

    def scanTodo(self) -> Deferred[None]:
        """Look in todo/ (trigger from another process, or the 25-minute sweep)."""
        return self.intake.scan(self.preprocess)

    def preprocess(self, ids: list[int]) -> None:
        """
        Queue todo entries for preprocessing: the daemon's injector calls this through its
        observer after each commit round (docs/behaviour/queue.md 5.5).
        """
        if self._stopping or not self.running:
            return
        self.intake.add(ids)

    def _adopt(self, m: Message) -> None:
        """Hold message C{m} (recovered or just preprocessed) and schedule its channels."""
        self.messages[m.id] = m
        self._afterChannelsChanged(m)

    # -- scheduling --------------------------------------------------------------------------

    def _afterChannelsChanged(self, m: Message) -> None:
        if not m.channels:
            self._finish(m)
            return
        for ch in m.channels.values():
            if not ch.undone():
                continue
            self.timers.push(ch.scheduled, m.id, ch.name)
        self.wake()

    def wake(self) -> None:
        """
        Begin every delivery pass that is due now and set the timer for the next one. For a
        caller that put channels on L{timers} or made one due sooner (C{qmtwist ctl release},
        C{retry}: L{qmtwist.queue.admin}); the service calls it after its own changes.
        """
        self.passes.arm()

    def withhold(self, m: Message) -> None:
        """
        C{m} was just held (C{qmtwist ctl hold}, docs/behaviour/queue-control.md 17.4): its
        deliveries of the running pass that wait for a slot are taken back, as if tried and not
        done in this pass, so nothing new starts for it; those already handed to an agent
        finish and are recorded as usual. The pass then ends with its last report, and the
        next one waits for the release.
        """
        for name, pos in self.dispatch.withdraw(m.id):
            ch = m.channels.get(name)
            if ch is not None:
                self._entryFinished(m, ch, ch.entries[pos], done=False)

    def _pump(self) -> None:
        if not self._stopping:
            self.dispatch.pump()

    # -- results -----------------------------------------------------------------------------

    def _result(self, report: object, m: Message, ch: Channel, e: ChannelEntry,
                number: int) -> None:
        if self.shutdown.abandoned:
            return  # left as it is on disk: retried after the restart (abandon)
        self.dispatch.release(ch.name, e.address)
        if not isinstance(report, Report):
            report = Report.deferral(b"Unexpected report from delivery agent. (#4.3.0)")
        if report.outcome is Outcome.DEFERRAL and ch.lastPass:
            report = Report(Outcome.FAILURE, report.text + TOO_LONG)
        log.info(
            "delivery {delivery}: msg {id}: {outcome}: {text}",
            delivery=number, id=m.id, outcome=report.outcome.value, text=logSafe(report.text))
        for o in self.deliveryObservers:
            o.delivered(ch.name, report.outcome, report.text, m.birth)
        self._status()
        ch.reasons.pop(e.position, None)
        if report.outcome is Outcome.DEFERRAL:
            ch.deferred, ch.reasons[e.position] = True, report.text
            self._entryFinished(m, ch, e, done=False)
        elif report.outcome is Outcome.FAILURE:
            para = qbounce.paragraph(unprefix(self.controls.snapshot, e.address), report.text)
            self._appendBounce(m, ch, e, para)
        else:
            self._markDone(m, ch, e)
        self._pump()
        self.shutdown.check()

    def _appendBounce(self, m: Message, ch: Channel, e: ChannelEntry, para: bytes) -> None:
        """Record a permanent failure in bounce/N; qmail-send retries this every 10 s."""
        bouncePath = self.layout.bounce(m.id)
        m.bounced = True

        def failed(f: Any) -> None:
            log.critical("alert: unable to append to bounce message; HELP! sleeping...")
            self.clock.callLater(RETRY_SOON, self._appendBounce, m, ch, e, para)

        self.ops.submit(lambda: qbounce.appendParagraph(bouncePath, para)).addCallbacks(
            lambda _: self._markDone(m, ch, e), failed)

    def _markDone(self, m: Message, ch: Channel, e: ChannelEntry) -> None:
        """Overwrite the recipient's T with D (fsynced) before anything else depends on it."""
        path = self.layout.channel(ch.name, m.id)

        def failed(f: Any) -> None:
            # qmail-send: the result stands in memory; only a crash would repeat the delivery
            log.warn("warning: trouble marking {path}; message will be delivered twice!",
                     path=path)
            self._entryFinished(m, ch, e, done=True)

        # The D marks of one batch share one sync (queue.md 5.12); once D is durable, a local
        # delivery's forward record has done its work (queue.md 5.10).
        key = f"{m.stamp}Q{e.position}" if ch.name == "local" else None
        self.ops.submitDurable(
            lambda: clean.writeDone(path, [e.offset]),
            None if key is None else partial(fwd.dropRecord, self.layout, key)).addCallbacks(
            lambda _: self._entryFinished(m, ch, e, done=True), failed)

    def _entryFinished(self, m: Message, ch: Channel, e: ChannelEntry, done: bool) -> None:
        ch.inFlight.discard(e.position)
        if done:
            ch.done.add(e.position)
        ch.outstanding -= 1
        if ch.outstanding > 0:
            return
        ch.inPass = False
        if not ch.undone():
            del m.channels[ch.name]
            if not m.channels:
                self._finish(m)  # the removal takes this channel's file too
            else:
                m.channelFiles.discard(ch.name)
                path = self.layout.channel(ch.name, m.id)
                self.ops.submit(lambda: os.unlink(path)).addErrback(lambda f: None)
        else:
            ch.scheduled = nextPass(m.birth, ch.passStart, ch.name)
            self.timers.push(ch.scheduled, m.id, ch.name)
            m.noted = True
            self.ops.submit(partial(marks.writeNote, self.layout, m.id, marks.noteOf(m))
                            ).addErrback(lambda f: None)  # mailq's cache (queue-control.md 17.7)
            self.wake()
        self.shutdown.check()

    # -- finishing ---------------------------------------------------------------------------

    def _finish(self, m: Message) -> None:
        if m.finishing or self.shutdown.abandoned:
            return  # after abandon, recovery at the next start finishes it
        m.finishing = True
        self._finishing += 1
        d = finishMessage(self.layout, self.ops, self.controls.snapshot, self.clock.seconds(),
                          self.injector, m.id, m.sender, clean.sideFiles(m))
        d.addCallbacks(lambda _: self._removed(m), self._finishFailed, errbackArgs=(m,))

    def _removed(self, m: Message) -> None:
        self._finishing -= 1
        log.info("end msg {id}", id=m.id)
        self.messages.pop(m.id, None)
        self.intake.forget(m.id)
        self.shutdown.check()

    def _finishFailed(self, f: Any, m: Message) -> None:
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
