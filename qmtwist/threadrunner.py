"""
The daemon's and the local helpers' way to run blocking calls (file open, write, fsync, unlink,
stat) off the reactor thread (docs/ARCHITECTURE.md 3).

A L{ThreadRunner} is called like C{deferToThreadPool(reactor, pool, f, *args)} and returns a
L{Deferred} fired on the reactor thread with C{f}'s result or failure. It replaces Twisted's
reactor thread pool on the mail path because that pool's hand-off (a coordinator worker, a
lock worker and a condition per call, one C{callFromThread} wake-up per result) costs about 70 us
of CPU per call with ten threads, most of it GIL and futex traffic, and a message makes a dozen
such calls. Here the hand-off is one C{queue.SimpleQueue} put and get, and results that finish
while the reactor has not yet run the previous batch ride on the same wake-up: about 18 us per
call, measured with bench/hop_bench.py.

Durability is unchanged: a call's Deferred fires only after the call returned in its thread, so
an fsync done there is complete before any acknowledgement that waits for it. At reactor
shutdown (the C{during} phase, after the services stopped, as Twisted's own pool does) the runner
lets the queued calls finish and joins its threads; a call made after that runs at once in the
caller's thread, so nothing asked of the runner is dropped.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

T = TypeVar("T")
#: Threads a runner starts at most: Twisted's default pool size, enough for fsyncs to overlap.
DEFAULT_SIZE = 10
_STOP = object()


class ThreadRunner:
    """
    Run blocking callables on up to C{size} worker threads, started on demand; deliver results
    on the reactor thread in batches.

    @ivar size: the most threads this runner starts.
    """

    def __init__(self, reactor: Any, size: int = DEFAULT_SIZE, name: str = "qmtwist-io") -> None:
        """
        @param reactor: provides C{callFromThread} and C{addSystemEventTrigger}.
        @param size: the most worker threads.
        @param name: the threads' name prefix (for C{top -H} and py-spy).
        """
        if size < 1:
            raise ValueError("a thread runner needs at least one thread")
        self.reactor = reactor
        self.size = size
        self.name = name
        self._work: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done: list[tuple[Deferred[Any], bool, Any]] = []
        self._wakePending = False
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads about to wait with no call meant for them
        self._backlog = 0  # calls queued with neither an idle thread nor a new one for them
        self._stopped = False
        reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def __call__(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Run C{f(*args, **kwargs)} on a worker thread; the result fires on the reactor thread."""
        if self._stopped:
            try:
                return succeed(f(*args, **kwargs))
            except BaseException:
                return fail(Failure())
        d: Deferred[T] = Deferred()
        with self._lock:
            idle = self._idle
            if idle:
                self._idle = idle - 1  # claimed: the next call will not count on it
            grow = not idle and len(self._threads) < self.size
            if not idle and not grow:
                self._backlog += 1  # the next thread to finish takes it
            if grow:
                thread = threading.Thread(target=self._worker, daemon=True,
                                          name=f"{self.name}-{len(self._threads)}")
                self._threads.append(thread)
        self._work.put((d, f, args, kwargs))
        if grow:
            thread.start()
        return d

    def _worker(self) -> None:
        """Take calls until told to stop; hand each result to the reactor thread."""
        while True:
            item = self._work.get()
            if item is _STOP:
                return
            d, f, args, kwargs = item
            try:
                outcome: tuple[Deferred[Any], bool, Any] = (d, True, f(*args, **kwargs))
            except BaseException:
                outcome = (d, False, Failure())
            with self._lock:
                self._done.append(outcome)
                wake = not self._wakePending
                self._wakePending = True
                if self._backlog:
                    self._backlog -= 1
                else:
                    self._idle += 1
            if wake:
                self.reactor.callFromThread(self._deliver)
            del item, d, f, args, kwargs, outcome  # nothing kept alive while waiting

    def _deliver(self) -> None:
        """On the reactor thread: fire every Deferred whose call has finished, in that order."""
        with self._lock:
            done, self._done = self._done, []
            self._wakePending = False
        for d, ok, value in done:
            if ok:
                d.callback(value)
            else:
                d.errback(value)

    def stop(self) -> None:
        """Let queued calls finish, then join the threads (reactor shutdown, C{during})."""
        if self._stopped:
            return
        self._stopped = True
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._work.put(_STOP)
        for thread in threads:
            thread.join()
        self._deliver()  # results that finished after the reactor's last wake-up
