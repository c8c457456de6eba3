"""
When delivery passes begin (qmail-send's schedule, docs/behaviour/queue.md 5.8): a
L{TimerHeap} of the channels due, one wake-up call on the injected clock, and the start of
each pass once its time has come.

A pass needs the message's age (its last pass turns a deferral into a bounce), and the age is
the info file's mtime, so that a touch rejuvenates a message (FAQ 7.3). That mtime is read on
the file thread, never on the reactor thread, except where it was read just now (preprocessing
or recovery): a message's first pass begins without a read.
"""

from __future__ import annotations

import os
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from qmtwist.context import ControlCache
from qmtwist.queue.dispatch import Dispatcher
from qmtwist.queue.finish import FileOps
from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.schedule import isLastPass
from qmtwist.queue.state import Channel, Message
from qmtwist.queue.timers import TimerHeap

log = Logger(namespace="qmail-send")


def _mtime(path: str) -> float | None:
    """C{path}'s mtime, or L{None} when it cannot be read (the birth in memory then stands)."""
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


class Passes:
    """
    The schedule of the queue service's messages.

    @param messages: the service's messages by number (read, not changed).
    @param held: the numbers of held messages: no pass begins for them.
    @param stopping: whether the service is stopping (then nothing begins).
    @param pump: starts the deliveries that became ready.
    """

    def __init__(self, clock: IReactorTime, layout: QueueLayout, controls: ControlCache,
                 ops: FileOps, dispatch: Dispatcher, messages: dict[int, Message],
                 held: set[int], stopping: Callable[[], bool], pump: Callable[[], None]) -> None:
        self.clock = clock
        self.layout = layout
        self.controls = controls
        self.ops = ops
        self.dispatch = dispatch
        self.messages = messages
        self.held = held
        self.stopping = stopping
        self.pump = pump
        self.timers = TimerHeap()
        self._wakeCall: IDelayedCall | None = None

    def push(self, when: float, n: int, channel: str) -> None:
        """Channel C{channel} of message C{n} is due at C{when} (call L{arm} after)."""
        self.timers.push(when, n, channel)

    def cancel(self) -> None:
        """No more wake-ups (the service stops)."""
        if self._wakeCall is not None and self._wakeCall.active():
            self._wakeCall.cancel()
        self._wakeCall = None

    def arm(self) -> None:
        """Begin every pass that is due, and wake up when the next one is."""
        if self.stopping():
            return
        self.cancel()
        now = self.clock.seconds()
        due: list[tuple[Message, Channel]] = []
        for n, name in self.timers.popDue(now):
            m = self.messages.get(n)
            ch = m.channels.get(name) if m is not None else None
            if (m is None or ch is None or ch.inPass or ch.starting or ch.scheduled > now
                    or n in self.held):
                continue
            due.append((m, ch))
        if due:
            self._beginPasses(due)
        nextDue = self.timers.nextDue()
        if nextDue is not None:
            self._wakeCall = self.clock.callLater(max(0.0, nextDue - now), self.arm)
        self.pump()

    def _beginPasses(self, due: list[tuple[Message, Channel]]) -> None:
        stale = [(m, ch) for m, ch in due if not m.birthFresh]
        fresh = [(m, ch) for m, ch in due if m.birthFresh]
        for m, ch in fresh:  # (every channel of a message due now shares its fresh birth)
            self._beginPass(m, ch)
        for m, _ in fresh:
            m.birthFresh = False
        if not stale:
            return
        for _, ch in stale:
            ch.starting = True
        paths = [self.layout.info(m.id) for m, _ in stale]

        def begin(births: list[float | None]) -> None:
            for (m, ch), birth in zip(stale, births):
                ch.starting = False
                if (self.stopping() or self.messages.get(m.id) is not m
                        or ch.name not in m.channels or m.id in self.held):
                    continue
                if birth is not None:
                    m.birth = birth
                self._beginPass(m, ch)
            self.pump()

        d = self.ops.submit(lambda: [_mtime(p) for p in paths])
        d.addCallback(begin).addErrback(
            lambda f: log.failure("unable to begin delivery passes", f))

    def _beginPass(self, m: Message, ch: Channel) -> None:
        now = self.clock.seconds()
        lastPass = isLastPass(m.birth, now, self.controls.snapshot.queuelifetime)
        self.dispatch.beginPass(m, ch, now, lastPass)
