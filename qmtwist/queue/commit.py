"""
The daemon's injector: qmail-queue inside the process, with group commit.

Listeners stream message bytes into a L{PendingMessage} on the reactor thread (plain writes to
the page cache); every fsync happens in L{commitRound} on a thread. While one round runs, the
commits that arrive wait and then go together in the next round, so under load many messages
share one set of directory syncs. Nobody is told "queued" before their round has returned.
Observers (L{Injector.addObserver}: the queue service, or C{lock/trigger} for a process without
one) learn the numbers of each round before its committers are answered.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from qmtwist.control import Control, load
from qmtwist.errors import QQ_BUG, QueueError
from qmtwist.interfaces import IInjector, IMessageWriter
from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.store import PendingMessage, Queued, Syncer, commitRound, pokeTrigger

if TYPE_CHECKING:
    from qmtwist.home import Home

RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]
#: Called on the reactor thread with the message numbers a commit round made durable.
CommitObserver = Callable[[list[int]], None]


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
            self._pending.discard()
            raise
        return self._injector._enqueue(self._pending)

    def abort(self) -> None:
        if not self._done:
            self._done = True
            self._pending.discard()


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
        self.rounds = 0
        self._controlWarnings: tuple[str, ...] = ()

    def addObserver(self, observer: CommitObserver) -> None:
        """Tell C{observer} the numbers of every round that committed any (L{IInjector})."""
        self._observers.append(observer)

    def newMessage(self, how: bytes, uid: int | None = None) -> _Writer:
        pending = PendingMessage(
            self.layout, next(self._qp), how, os.getuid() if uid is None else uid,
            self.clock.seconds())
        return _Writer(self, pending)

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
        warnings: list[str] = []
        d = self.runInThread(
            lambda: commitRound(pendings, self.syncer, self.controlDir, warnings))

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

        def crashed(f: Any) -> None:
            self._running = False
            self.log.failure("commit round crashed", f)
            for p, waiter in batch:
                try:
                    p.discard()
                except OSError:
                    pass
                waiter.errback(QueueError(QQ_BUG, f.getErrorMessage()))

        def nextRound(_: object) -> None:
            if self._waiting and not self._running:
                self._startRound()

        d.addCallbacks(done, crashed)
        d.addBoth(nextRound)


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
