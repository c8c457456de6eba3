"""
What the queue service's stop waits for, and the second TERM that stops the waiting
(docs/behaviour/queue.md 6.1).

The first TERM stops new passes and waits until the service is idle (no delivery in flight, no
preprocessing batch, no message being finished), then for the agents' own stop. The second TERM
(L{Shutdown.abandon}) ends both waits at once: the deliveries still in flight are left as they
are on disk and retried after the restart. Before the agents stop, L{storeSchedule} keeps each
channel's next pass for the next start (docs/behaviour/queue.md 5.6).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred, succeed

from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.state import Message


class Shutdown:
    """
    The waits of one stop.

    @param idle: whether the service has nothing in flight that the stop must wait for; asked
        again at every L{check}.
    @ivar abandoned: whether L{abandon} was called.
    """

    def __init__(self, idle: Callable[[], bool]) -> None:
        self.idle = idle
        self.abandoned = False
        self._idleWaiters: list[Deferred[None]] = []
        self._abandonWaiters: list[Deferred[None]] = []

    def whenIdle(self) -> Deferred[None]:
        """Fire at the first L{check} that finds the service idle (at once if it is now)."""
        if self.idle():
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        return d

    def check(self) -> None:
        """Something ended: fire the idle waiters if nothing is left in flight."""
        if self._idleWaiters and self.idle():
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def unlessAbandoned(self, d: Deferred[Any]) -> Deferred[None]:
        """Fire when C{d} does, or at L{abandon}, whichever comes first."""
        out: Deferred[None] = Deferred()
        if self.abandoned:
            out.callback(None)
            return out
        self._abandonWaiters.append(out)

        def fire(_: Any) -> None:
            if out in self._abandonWaiters:
                self._abandonWaiters.remove(out)
                out.callback(None)

        d.addBoth(fire)
        return out

    def abandon(self) -> None:
        """The second TERM: end the waits of L{unlessAbandoned}, then L{check} again."""
        self.abandoned = True
        waiters, self._abandonWaiters = self._abandonWaiters, []
        for d in waiters:
            d.callback(None)
        self.check()


def storeSchedule(layout: QueueLayout, messages: Iterable[Message]) -> None:
    """
    Thread side of a clean stop: write each pending channel's next-pass time as the mtime (and
    atime) of its C{local/} or C{remote/} file, where recovery reads it (queue.md 5.6).
    """
    for m in messages:
        for ch in m.channels.values():
            try:
                os.utime(layout.channel(ch.name, m.id), (ch.scheduled, ch.scheduled))
            except OSError:
                pass
