"""
The queue service's intake: which todo entries still need preprocessing, one batch at a time on
a thread, and the new messages that come out of it (docs/behaviour/queue.md 5.5).

Numbers arrive from three places: the injector's observer (a commit round in this process), the
C{lock/trigger} FIFO and the 25-minute sweep of C{todo/} (L{Intake.scan}). Numbers that arrive
while a batch runs wait and go together in the next one. Until recovery has read the queue at
start-up they are only collected; L{Intake.open} lets them through.

Messages committed by this process's injector mostly come preprocessed instead: the intake
claims them at the start of their commit round (L{Intake.claim}), the round preprocesses them,
and L{Intake.adopt} takes them in (L{qmtwist.queue.handoff}, docs/behaviour/queue.md 5.11). A
claimed number is known: it is neither claimed again nor read from C{todo/} meanwhile.

A number is a mess file's inode, so a new message may take the number of one just removed: a
number seen in C{todo/} while it is held, claimed or in the running batch is read again as soon
as it is free (L{forget}, L{_release}), unless it became a message meanwhile (then the entry seen
was that message's own).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from qmtwist.context import ControlCache, RunInThread
from qmtwist.control import Control
from qmtwist.queue import clean
from qmtwist.queue.envelope import ChannelEntry
from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.preprocess import Preprocessed, Problem, preprocessBatch
from qmtwist.queue.state import Channel, Message, logSafe
from qmtwist.queue.store import Syncer

log = Logger(namespace="qmail-send")
RETRY_SOON = 10


def newMessage(p: Preprocessed, now: float) -> Message:
    """The schedule's view of a freshly preprocessed message: each channel due at C{now}."""
    channels = {}
    for name, addresses in (("local", p.local), ("remote", p.remote)):
        if addresses:
            entries, offset = [], 0
            for i, a in enumerate(addresses):
                entries.append(ChannelEntry(i, offset, a, False))
                offset += len(a) + 2
            channels[name] = Channel(name, entries, now)
    return Message(p.id, p.sender, p.birth, p.stamp, p.size, channels,
                   channelFiles=set(channels), hadLocal="local" in channels)


def resumedMessage(m: clean.LoadedMessage, now: float) -> tuple[Message, list[str]]:
    """
    The schedule's view of a message found at start (docs/behaviour/queue.md 5.10), and the
    names of its channels whose recipients are all done (their files are to be removed).
    """
    channels, finished = {}, []
    for name, ch in m.channels.items():
        done = {e.position for e in ch.entries if e.done}
        if len(done) == len(ch.entries):
            finished.append(name)
            continue
        channels[name] = Channel(
            name, list(ch.entries), max(now, ch.scheduled), recovered=True, done=done)
    return Message(m.id, m.sender, m.birth, m.stamp, m.size, channels, recovered=True), finished


class Intake:
    """
    Preprocesses todo entries for the queue service.

    @param onMessage: receives each new L{Message}, after C{new msg} and C{info msg} are logged.
    @param onSettled: called whenever a batch has ended (the service may be waiting for that).
    @ivar known: the numbers the service holds: being preprocessed, scheduled or finishing. A
        number already known is not preprocessed again until L{forget}.
    @ivar busy: whether a batch is running.
    @ivar closed: set when the service stops; nothing new is taken in and no batch starts.
    """

    def __init__(self, layout: QueueLayout, controls: ControlCache, clock: IReactorTime,
                 runInThread: RunInThread, syncer: Syncer,
                 onMessage: Callable[[Message], None], onSettled: Callable[[], None]) -> None:
        self.layout = layout
        self.controls = controls
        self.clock = clock
        self.runInThread = runInThread
        self.syncer = syncer
        self.onMessage = onMessage
        self.onSettled = onSettled
        self.known: set[int] = set()
        self.busy = False
        self.closed = False
        self._again: set[int] = set()
        self._waiting: set[int] = set()
        self._opened = False
        self._early: list[int] = []
        self._claimed: set[int] = set()  # preprocessed in commit rounds, not yet adopted
        self._batch: set[int] = set()  # the numbers of the running batch
        self._scanning = False  # a listing of todo/ runs
        self._scanWaiters: list[Deferred[None]] = []  # asked for a listing not yet started
        # numbers seen in todo/ again while claimed or in the running batch (L{_release})
        self._seenInBatch: set[int] = set()

    def scan(self, found: Callable[[list[int]], None]) -> Deferred[None]:
        """
        List todo/ on a thread and pass the numbers to C{found} (the service's gate).

        One listing runs at a time: asked while one runs (triggers from busy front ends come
        faster than listings), one more listing follows it, which starts after every request
        made meanwhile and so sees every entry committed before it. The returned Deferred fires
        when a listing that started after the request has been passed on.
        """
        d: Deferred[None] = Deferred()
        self._scanWaiters.append(d)
        if not self._scanning:
            self._startScan(found)
        return d

    def _startScan(self, found: Callable[[list[int]], None]) -> None:
        waiters, self._scanWaiters = self._scanWaiters, []
        self._scanning = True
        d = self.runInThread(lambda: clean.listTodo(self.layout))
        d.addCallback(found)
        # a failed scan must not stop the 25-minute LoopingCall for good
        d.addErrback(lambda f: log.warn("alert: unable to opendir {dir}, sleeping... ({why})",
                                        dir=self.layout.sub("todo"), why=f.getErrorMessage()))

        def finished(_: object) -> None:
            self._scanning = False
            for w in waiters:
                w.callback(None)
            if self._scanWaiters:
                self._startScan(found)

        d.addBoth(finished)

    def open(self, todo: Iterable[int]) -> None:
        """Recovery is done: preprocess C{todo} and everything collected until now."""
        self._opened = True
        early, self._early = self._early, []
        self.add(list(todo) + early)

    def add(self, ids: list[int]) -> None:
        """Queue todo entries for preprocessing."""
        if self.closed:
            return
        # a claimed message is being preprocessed by its commit round: its todo entry is
        # not to be read (its number comes from the injector's observer or a scan)
        claimed = [n for n in ids if n in self._claimed]
        if claimed:
            # its commit round may still drop it (a failed commit frees the number): look
            # again then (L{adopt})
            self._seenInBatch.update(claimed)
            ids = [n for n in ids if n not in self._claimed]
        if not self._opened:
            # the start-up scan is still reading info/: new messages wait for it
            self._early.extend(ids)
            return
        fresh = [n for n in ids if n not in self.known]
        for n in ids:
            if n not in self.known:
                continue
            if n in self._batch:
                # read already, or being read: if the batch finds no todo entry (gone, or
                # removed as never committed), the number is free and this entry may be a new
                # message that took it; look again then
                self._seenInBatch.add(n)
            elif n not in self._waiting:
                # a message we hold may be being removed, and a new message may have reused its
                # inode: look at it again once the removal is done (L{forget})
                self._again.add(n)
        self.known.update(fresh)
        self._waiting.update(fresh)
        if self._waiting and not self.busy:
            self._run()

    def claim(self, ids: list[int]) -> tuple[Control, set[int]] | None:
        """
        At the start of a commit round of this process (reactor thread): the numbers of
        C{ids} that round may preprocess, and the controls to do it with (L{Receiver}). Not
        before recovery is done nor after the stop; not a number still known, which may be a
        new message that took the inode of one whose files are being removed (it waits in
        C{todo/} for L{forget}, as in L{add}).
        """
        if self.closed or not self._opened:
            return None
        mine = {n for n in ids if n not in self.known}
        self.known |= mine
        self._claimed |= mine
        return self.controls.snapshot, mine

    def adopt(self, results: Iterable[Preprocessed | Problem], dropped: Iterable[int] = ()
              ) -> None:
        """
        Messages preprocessed in commit rounds (L{Receiver}): each L{Preprocessed} is durable
        and its todo entry durably gone, so it is logged and scheduled; a L{Problem} is left to
        its todo entry, read again in 10 seconds; C{dropped} numbers were not committed.
        After the stop they are left on disk for the next start.
        """
        for n in dropped:
            self._claimed.discard(n)
            self._release(n)
        for r in results:
            self._claimed.discard(r.id)
            self._seenInBatch.discard(r.id)
            if isinstance(r, Problem):
                log.warn("{line}", line=r.line)
                self.known.discard(r.id)
                if r.retry:
                    self.clock.callLater(RETRY_SOON, self.add, [r.id])
            elif not self.closed:
                self._new(r)
        self.onSettled()

    def forget(self, n: int) -> None:
        """Message C{n}'s files are gone; if a new message took its number meanwhile, take it."""
        self.known.discard(n)
        if n in self._again:
            self._again.discard(n)
            self.add([n])

    def _release(self, n: int) -> None:
        """
        Number C{n} was claimed or in a batch and did not become a message (its todo entry was
        gone, or its commit failed): if C{todo/} showed it meanwhile, that may be a new message
        that took the freed inode, so it is read again.
        """
        self.known.discard(n)
        if n in self._seenInBatch:
            self._seenInBatch.discard(n)
            self.add([n])

    def _run(self) -> None:
        ids = sorted(self._waiting)
        self._waiting.clear()
        self._batch = set(ids)
        self.busy = True
        control = self.controls.snapshot
        d = self.runInThread(lambda: preprocessBatch(self.layout, ids, control, self.syncer))

        def done(results: list[Preprocessed | Problem]) -> None:
            self.busy = False
            self._batch = set()
            handled = set()
            for r in results:
                handled.add(r.id)
                self._seenInBatch.discard(r.id)
                if isinstance(r, Problem):
                    log.warn("{line}", line=r.line)
                    self.known.discard(r.id)
                    if r.retry:
                        self.clock.callLater(RETRY_SOON, self.add, [r.id])
                else:
                    self._new(r)
            for n in ids:
                if n not in handled:
                    self._release(n)
            self.onSettled()
            if self._waiting and not self.closed and not self.busy:
                self._run()

        def failed(f: Any) -> None:
            self.busy = False
            self._batch = set()
            log.failure("preprocessing crashed", f)
            for n in ids:
                self._release(n)
            self.onSettled()

        d.addCallbacks(done, failed)

    def _new(self, p: Preprocessed) -> None:
        log.info("new msg {id}", id=p.id)
        log.info(
            "info msg {id}: bytes {size} from <{sender}> qp {qp} uid {uid}",
            id=p.id, size=p.size, sender=logSafe(p.sender), qp=p.qp, uid=p.uid)
        self.onMessage(newMessage(p, self.clock.seconds()))
