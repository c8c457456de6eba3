"""
The daemon's injector: qmail-queue inside the process, with group commit.

Listeners stream message bytes into a L{PendingMessage} on the reactor thread (plain writes to
the page cache); every fsync happens in L{commitRound} on a thread. While one round runs, the
commits that arrive wait and then go together in the next round, so under load many messages
share one set of directory syncs. Nobody is told "queued" before their round has returned.
Observers (L{Injector.addObserver}: the queue service, or C{lock/trigger} for a process without
one) learn the numbers of each round before its committers are answered.

With a receiver (L{Injector.handOff}: the queue service's intake), the messages the receiver
claims are preprocessed from the envelopes the round holds, by a second thread job that starts
once the round's committers are answered and may run beside the next round; a later round
releases them to the receiver once their files and the removal of their todo entries are
durable (L{qmtwist.queue.handoff}, docs/behaviour/queue.md 5.11). When no commit waits for that
round, a round without new messages runs at once to do it.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any, Callable, cast

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from qmtwist.control import Control, load
from qmtwist.errors import QQ_BUG, QueueError
from qmtwist.interfaces import IInjector, IMessageWriter
from qmtwist.queue.handoff import HandOff, Receiver, Written
from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.preprocess import Preprocessed, Problem
from qmtwist.queue.store import PendingMessage, Queued, Syncer, commitRound, pokeTrigger

if TYPE_CHECKING:
    from qmtwist.home import Home

RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]
#: Called on the reactor thread with the message numbers a commit round made durable.
CommitObserver = Callable[[list[int]], None]
#: Seconds before a round retries making preprocessed messages durable after a failed sync.
RETRY_SOON = 10


@implementer(IMessageWriter)
class _Writer:
    def __init__(self, injector: Injector, pending: PendingMessage) -> None:
        self._injector = injector
        self._pending = pending
        self._done = False

    @property
    def qp(self) -> int:
        return self._pending.qp

    @property
    def size(self) -> int:
        return self._pending.size

    @property
    def id(self) -> int:
        return self._pending.id

    def write(self, data: bytes) -> None:
        self._pending.write(data)

    def commit(self, sender: bytes, recipients: list[bytes],
               onceKey: str | None = None) -> Deferred[Queued]:
        """
        @param onceKey: a forward's delivery key: the round also writes C{fwd/<onceKey>}, the
            forward's commit point (L{qmtwist.queue.fwd}, docs/behaviour/queue.md 5.10).
        """
        if self._done:
            raise RuntimeError("message already finished")
        self._done = True
        self._pending.onceKey = onceKey
        try:
            self._pending.setEnvelope(sender, recipients)
        except QueueError:
            self._injector._discard(self._pending)
            raise
        return self._injector._enqueue(self._pending)

    def abort(self) -> None:
        """Remove the message's files, on a thread (nothing waits for that)."""
        if not self._done:
            self._done = True
            self._injector._discard(self._pending)


@implementer(IInjector)
class Injector:
    """
    Queue messages in qmail's layout; acknowledge each only after its commit round.

    @param layout: the queue.
    @param controlDir: where C{queueextra} is read for every round.
    @param clock: for the Received line's time.
    @param runInThread: runs a blocking callable off the reactor thread (C{maybeDeferred} in
        unit tests).
    @param onCommitted: a first observer (see L{addObserver}).
    """

    log = Logger(namespace="qmail-queue")

    def __init__(
        self,
        layout: QueueLayout,
        controlDir: str | None,
        clock: IReactorTime,
        runInThread: RunInThread = maybeDeferred,
        onCommitted: CommitObserver | None = None,
        syncer: Syncer | None = None,
    ) -> None:
        self.layout = layout
        self.controlDir = controlDir
        self.clock = clock
        self.runInThread = runInThread
        self._observers: list[CommitObserver] = []
        if onCommitted is not None:
            self.addObserver(onCommitted)
        self.syncer = syncer or Syncer()
        if self.syncer.canGroup:
            self.syncer.watch(layout.path)
        self._qp = itertools.count(os.getpid() * 1000 % 100000000 + 1)
        self._waiting: list[tuple[PendingMessage, Deferred[Queued]]] = []
        self._running = False
        self.rounds = 0  # rounds of new messages (not those that only settle)
        self._controlWarnings: tuple[str, ...] = ()
        self._receiver: Receiver | None = None
        # preprocessed in a round, waiting for the next one to be made durable and released
        self._settling: list[Written] = []
        self._flushing = False  # a round that only settles is running (_settle)
        self._finishing = 0  # HandOff.finish jobs running (_finish)
        self._retry: Any = None  # the delayed settling round after a failed sync

    def addObserver(self, observer: CommitObserver) -> None:
        """Tell C{observer} the numbers of every round that committed any (L{IInjector})."""
        self._observers.append(observer)

    def handOff(self, receiver: Receiver) -> None:
        """
        Preprocess the messages C{receiver} claims in their own commit rounds and give them to
        it preprocessed (docs/behaviour/queue.md 5.11); the observers are still told of every
        committed number.
        """
        self._receiver = receiver

    def newMessage(self, how: bytes, uid: int | None = None) -> _Writer:
        pending = PendingMessage(
            self.layout, next(self._qp), how, os.getuid() if uid is None else uid,
            self.clock.seconds())
        return _Writer(self, pending)

    def openMessage(self, how: bytes, uid: int | None = None) -> Deferred[IMessageWriter]:
        """
        L{newMessage} with the queue file (C{pid/}, C{mess/}, the Received line) created on a
        thread, so that a listener's reactor thread opens no file (docs/ARCHITECTURE.md 3);
        fails with the L{QueueError} that L{newMessage} would raise.
        """
        qp = next(self._qp)
        owner = os.getuid() if uid is None else uid
        now = self.clock.seconds()
        d = self.runInThread(lambda: PendingMessage(self.layout, qp, how, owner, now))
        return cast("Deferred[IMessageWriter]",
                    d.addCallback(lambda pending: _Writer(self, pending)))

    def inject(
        self, sender: bytes, recipients: list[bytes], message: bytes, how: bytes,
        uid: int | None = None,
    ) -> Deferred[Queued]:
        try:
            w = self.newMessage(how, uid)
        except QueueError as e:
            return fail(e)
        try:
            w.write(message)
            return w.commit(sender, recipients)
        except QueueError as e:
            w.abort()
            return fail(e)

    def allocateQp(self) -> int:
        """A qp for a message prepared elsewhere (on a thread) and committed here."""
        return next(self._qp)

    def commitPending(self, pending: PendingMessage) -> Deferred[Queued]:
        """Commit a message whose data and envelope were prepared off the reactor thread."""
        return self._enqueue(pending)

    def _discard(self, pending: PendingMessage) -> None:
        """An aborted message's files go on a thread; a failure to remove them leaves
        leftovers that a start removes after 36 hours (docs/behaviour/queue.md 5.10)."""
        d = self.runInThread(pending.discard)
        d.addErrback(lambda f: self.log.failure("removing an aborted message", f))

    def _enqueue(self, pending: PendingMessage) -> Deferred[Queued]:
        d: Deferred[Queued] = Deferred()
        self._waiting.append((pending, d))
        if not self._running:
            self._startRound()
        return d

    def _logControlWarnings(self, lines: list[str]) -> None:
        """
        Log what the round found wrong with C{control/queueextra}, once per change: the file
        is read for every round, and a bad line would otherwise be logged for every message.
        """
        if tuple(lines) != self._controlWarnings:
            self._controlWarnings = tuple(lines)
            for line in lines:
                self.log.warn("{line}", line=line)

    def _startRound(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True
        self.rounds += 1
        pendings = [p for p, _ in batch]
        handoff = self._handOff(pendings)
        warnings: list[str] = []
        d = self.runInThread(
            lambda: commitRound(pendings, self.syncer, self.controlDir, warnings, handoff))

        def done(failed: dict[int, QueueError]) -> None:
            self._running = False
            self._logControlWarnings(warnings)
            committed = [p.id for p in pendings if p.id not in failed]
            if committed:
                for observer in list(self._observers):
                    observer(committed)
            for p, waiter in batch:
                if p.id in failed:
                    self.log.warn("injection failed: {text}", text=str(failed[p.id]))
                    waiter.errback(failed[p.id])
                else:
                    waiter.callback(p.queued())
            if handoff is not None:
                self._finish(handoff, [p for p in pendings if p.id not in failed])

        def crashed(f: Any) -> None:
            self._running = False
            self.log.failure("commit round crashed", f)
            if handoff is not None:
                self._settleCrashed(handoff)
            for p, waiter in batch:
                try:
                    p.discard()
                except OSError:
                    pass
                waiter.errback(QueueError(QQ_BUG, f.getErrorMessage()))

        d.addCallbacks(done, crashed)
        d.addBoth(lambda _: self._next())

    def _handOff(self, pendings: list[PendingMessage]) -> HandOff | None:
        """This round's share of the hand-off (reactor thread), if there is a receiver."""
        if self._receiver is None:
            return None
        claim = self._receiver.claim([p.id for p in pendings]) if pendings else None
        control, claimed = claim if claim is not None else (None, set())
        settling, self._settling = self._settling, []
        if not claimed and not settling:
            return None
        return HandOff(self.layout, control, claimed, settling)

    def _settle(self) -> None:
        """
        No commit waits to settle the preprocessed messages: a round of none does it now. It
        may run beside a round of new messages (they share no file), so a commit arriving
        meanwhile does not wait for it.
        """
        self._flushing = True
        handoff = HandOff(self.layout, None, set(), self._settling)
        self._settling = []

        def job() -> None:
            commitRound([], self.syncer, None, None, handoff)
            handoff.finish([], self.syncer)  # the released messages' intd entries

        d = self.runInThread(job)

        def done(_: object) -> None:
            self._flushing = False
            self._released(handoff)

        def crashed(f: Any) -> None:
            self._flushing = False
            self.log.failure("commit round crashed", f)
            self._settleCrashed(handoff)

        d.addCallbacks(done, crashed)
        d.addBoth(lambda _: self._next())

    def _released(self, handoff: HandOff) -> None:
        """
        A round and its L{HandOff.finish} are done: give the receiver the messages released
        (their intd entries are gone, so their removal need not look for one) and the problems
        met; keep for a later round what it wrote and those whose todo removal is not durable.
        """
        self._settling.extend(handoff.written)
        self._settling[:0] = handoff.kept
        assert self._receiver is not None
        dropped = handoff.dropped()  # before the problems are taken: it counts them
        results: list[Preprocessed | Problem] = [*handoff.released, *handoff.takeProblems()]
        if results or dropped:
            self._receiver.adopt(results, dropped)
        if handoff.kept:
            self._retryLater()

    def _finish(self, handoff: HandOff, committed: list[PendingMessage]) -> None:
        """
        After a round's committers were answered: preprocess its claimed messages and remove
        the released ones' intd entries (L{HandOff.finish}) in a job of its own, so that the
        next round need not wait for it; then L{_released}.
        """
        if not handoff.needsFinish():
            self._released(handoff)
            return
        self._finishing += 1
        d = self.runInThread(lambda: handoff.finish(committed, self.syncer))

        def done(_: object) -> None:
            self._finishing -= 1
            self._released(handoff)

        def crashed(f: Any) -> None:
            # a bug: which files were written is unknown; the claimed messages that did not
            # come out written go the todo way (their todo entries are durable)
            self._finishing -= 1
            self.log.failure("preprocessing after a commit round crashed", f)
            written = {w.result.id for w in handoff.written}
            mine = {p.id for p in committed} & handoff.claimed
            handoff.problems.extend(
                Problem(n, f"warning: trouble writing to info/{n}", True)
                for n in sorted(mine - written))
            self._released(handoff)

        d.addCallbacks(done, crashed)
        d.addBoth(lambda _: self._next())

    def _settleCrashed(self, handoff: HandOff) -> None:
        """
        A round raised (a bug): where it stopped is unknown. Its settling messages are settled
        again later (every step may be done twice); its claimed ones were not committed.
        """
        assert self._receiver is not None
        self._settling = handoff.settling + self._settling
        self._receiver.adopt([], sorted(handoff.claimed))
        self._retryLater()

    def _retryLater(self) -> None:
        """A sync failed: the next settling round waits (no busy loop on a bad disk); a round
        of new messages settles the waiting ones as usual."""
        if self._retry is None or not self._retry.active():
            self._retry = self.clock.callLater(RETRY_SOON, self._next)

    def _next(self) -> None:
        """After a round: the next one for the commits waiting, or one to settle."""
        if self._waiting and not self._running:
            self._startRound()
            return
        if not self._settling or self._running or self._flushing or self._finishing:
            return
        if self._retry is not None and self._retry.active():
            return
        self._retry = None
        self._settle()


def standaloneInjector(home: Home, reactor: IReactorTime,
                       runInThread: RunInThread) -> tuple[Control, Injector]:
    """
    Controls and an injector for a process that runs no queue service (the stdio servers):
    each commit wakes the daemon through C{lock/trigger}.

    @raise qmtwist.errors.ControlError: the control files cannot be read.
    """
    control, _warnings = load(home.control)
    layout = home.queue
    injector = Injector(layout, home.control, reactor, runInThread)
    injector.addObserver(lambda ids: pokeTrigger(layout))
    return control, injector
