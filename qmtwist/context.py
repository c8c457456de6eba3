"""
What the running daemon's parts share: the home, the reactor, the injector and the controls.

L{ControlCache} gives two views of C{control/}: L{ControlCache.snapshot}, the queue side's
values that change only on SIGHUP, and L{ControlCache.current}, for what docs/behaviour/control.md
2.2 marks "conn" and "deliv" (a change applies to the next connection or delivery without a
signal). L{ControlCache.current} never touches the disk: L{ControlCache.refresh} compares the
entries of C{control/} with what was read last and rereads them when anything changed, on a
thread, and the listener (before each connection) and the delivery agents (before each
delivery) wait for it. Files registered with L{ControlCache.watch} (C{servercert.pem}) are
checked in the same thread job.

Given the daemon's L{qmtwist.dirwatch.DirWatches}, the cache watches C{control/} with inotify
and L{ControlCache.refresh} skips the thread job when no event came since the last full check
and that check found the watch sufficient (docs/behaviour/control.md 2.4): then it fires at
once with L{ControlCache.current}. Without one (tools, tests) every refresh is a full check.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IReactorCore, IReactorFDSet, IReactorProcess, IReactorSocket, IReactorTCP, IReactorThreads,
    IReactorTime)
from twisted.logger import Logger
from twisted.python.failure import Failure

from qmtwist import control
from qmtwist.control import Control
from qmtwist.dirwatch import DirWatches, Stamp, scanDirectory
from qmtwist.home import Home
from qmtwist.interfaces import IInjector

#: Runs a blocking callable on the reactor's thread pool; fires with its result.
RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]


class IDaemonReactor(IReactorCore, IReactorTime, IReactorTCP, IReactorSocket, IReactorProcess,
                     IReactorThreads, IReactorFDSet):
    """
    The reactor interfaces the daemon's parts use (a type for L{Context.reactor}): the clock,
    listening and connecting, adopting a socket, spawning, threads, and watching a descriptor.
    The real reactor provides them all; a test passes a fake with what its part needs.
    """


def _mtimes(controlDir: str) -> Stamp:
    return scanDirectory(controlDir)[0]


class Watched(Protocol):
    """A file checked together with the controls (L{qmtwist.tls.ServerCertificate})."""

    def check(self) -> Callable[[], None] | None:
        """Blocking check on a thread; returns what to run on the reactor thread, or None."""


class ControlCache:
    """Control snapshots for the daemon; see module docstring."""

    log = Logger(namespace="qmail-send")

    def __init__(self, home: Home, watches: DirWatches | None = None) -> None:
        # Read at start-up, before the reactor serves anything.
        self.home = home
        # control/ through inotify (the watch is added by the first refresh's thread job)
        self._dirWatch = None if watches is None else watches.directory(home.control)
        self._running: list[Deferred[Control]] = []  # the waiters of the check under way
        self.snapshot, warnings = control.load(home.control)
        self._current = self.snapshot
        self._stamp = _mtimes(home.control)
        self._watched: list[Watched] = []
        self._waiting: list[Deferred[Control]] = []
        self._checking = False
        self._generation = 0
        for w in warnings:
            self.log.warn("{line}", line=w)

    def reload(self) -> list[str]:
        """Re-read everything now (blocking: tests and start-up; the daemon's SIGHUP uses
        L{reloadOffThread}); unreadable or bad files keep their previous values."""
        return self._applyReload(self._readAll(self.home.control, self.snapshot))

    def reloadOffThread(self, runInThread: Callable[[Callable[[], Any]], Any]
                        ) -> Deferred[list[str]]:
        """
        SIGHUP: L{reload} with the reading done on C{runInThread}; the new values take effect
        on the calling (reactor) thread when it is done.

        @return: fires with the warnings (already logged); never fails: a read that crashes
            is logged and the values in force stay.
        """
        controlDir, previous = self.home.control, self.snapshot
        read: Deferred[tuple[Control, list[str], Stamp]] = runInThread(
            lambda: self._readAll(controlDir, previous))
        d = read.addCallback(self._applyReload)

        def crashed(f: Failure) -> list[str]:
            self.log.failure("control files reload failed", f)
            return []

        return d.addErrback(crashed)

    @staticmethod
    def _readAll(controlDir: str, previous: Control) -> tuple[Control, list[str], Stamp]:
        loaded, warnings = control.load(controlDir, previous)
        return loaded, warnings, _mtimes(controlDir)

    def _applyReload(self, result: tuple[Control, list[str], Stamp]) -> list[str]:
        self.snapshot, warnings, self._stamp = result
        self._current = self.snapshot
        self._generation += 1
        for w in warnings:
            self.log.warn("{line}", line=w)
        return warnings

    def current(self) -> Control:
        """
        The newest values read so far, without touching the disk: callers that must see a
        change at once wait for L{refresh} first (the listener and the delivery agents do).
        """
        return self._current

    def watch(self, source: Watched) -> None:
        """Check C{source} in every L{refresh} (its C{check} runs on the refresh's thread)."""
        self._watched.append(source)

    def refresh(self, runInThread: Callable[[Callable[[], Any]], Any]) -> Deferred[Control]:
        """
        Reread the control files if any entry of C{control/} changed (names, mtimes, sizes,
        inodes), on a thread, and check the watched files.

        Requests that arrive while a check runs share the next one (a change made during the
        running check is seen by them), so under load at most one check is running. With a
        watch in force and no event since the last check began (control.md 2.4), there is no
        thread job: the result is L{current}, or that of the check under way.

        @param runInThread: the context's runner (C{deferToThreadPool}); never blocks here.
        @return: fires with L{current} once the check is done; never fails (a check that
            crashes is logged and the values in force stay).
        """
        if self._dirWatch is not None and not self._dirWatch.changed():
            if not self._checking:
                return succeed(self._current)
            # the running check began after the last event: its result is new enough
            d: Deferred[Control] = Deferred()
            self._running.append(d)
            return d
        d = Deferred()
        self._waiting.append(d)
        if not self._checking:
            self._startCheck(runInThread)
        return d

    def _sufficient(self) -> bool:
        # a watched file elsewhere than in control/ is not seen by the watch (control.md 2.4)
        here = os.path.abspath(self.home.control)
        return all(os.path.dirname(os.path.abspath(getattr(w, "path", None) or "/")) == here
                   for w in self._watched)

    def _startCheck(self, runInThread: Callable[[Callable[[], Any]], Any]) -> None:
        waiting, self._waiting = self._waiting, []
        self._running = waiting
        self._checking = True
        controlDir, stamp, current = self.home.control, self._stamp, self._current
        watched, generation = list(self._watched), self._generation
        watch = self._dirWatch
        token = watch.begin() if watch is not None else None  # clears the events first
        forced = token is not None and token.forced
        usable = [False]

        def check() -> tuple[Stamp, bool, Control | None, list[str], list[Callable[[], None]]]:
            if token is not None:
                token.arm()  # before the scan: an edit from now on is an event
            newStamp, sufficient = scanDirectory(controlDir)
            loaded: Control | None = None
            warnings: list[str] = []
            if forced or newStamp != stamp:
                loaded, warnings = control.load(controlDir, current)
            applies = []
            for source in watched:
                apply = source.check()
                if apply is not None:
                    applies.append(apply)
            return newStamp, sufficient, loaded, warnings, applies

        def done(result: tuple[Stamp, bool, Control | None, list[str],
                               list[Callable[[], None]]]) -> None:
            newStamp, sufficient, loaded, warnings, applies = result
            if generation == self._generation:
                self._stamp = newStamp
                if loaded is not None:
                    self._current = loaded
                usable[0] = sufficient and self._sufficient()
            for w in warnings:
                self.log.warn("{line}", line=w)
            for apply in applies:
                apply()

        def crashed(f: Failure) -> None:
            self.log.failure("control files check failed", f)

        def finished(_: object) -> None:
            if watch is not None and token is not None:
                watch.end(token, usable[0])  # not usable (or result dropped): check again
            self._checking = False
            self._running = []
            for d in waiting:
                d.callback(self._current)
            if self._waiting and not self._checking:
                self._startCheck(runInThread)

        d = runInThread(check)
        d.addCallbacks(done, crashed)
        d.addErrback(crashed)
        d.addBoth(finished)


def freshControls(ctx: Context) -> Deferred[Control]:
    """
    The controls as they are now, for a delivery or a connection: L{ControlCache.refresh} with
    the context's thread runner (a stand-in without C{refresh} gives its C{current()}).
    """
    refresh = getattr(ctx.controls, "refresh", None)
    if refresh is None:
        return succeed(ctx.controls.current())
    return refresh(ctx.runInThread)  # type: ignore[no-any-return]


@define
class Context:
    """
    Everything a listener or agent constructor may need, built once by L{qmtwist.plugin}.

    @ivar reactor: the reactor (tests pass a C{MemoryReactorClock} or a C{Clock}).
    @ivar injector: the daemon's injector.
    @ivar controls: the L{ControlCache}.
    @ivar runInThread: runs a blocking callable on the thread pool, returns a Deferred.
    @ivar reloaders: callables run on SIGHUP after the controls were re-read.
    @ivar watches: the daemon's inotify watches (L{qmtwist.dirwatch.DirWatches}) for the
        listeners' rules files, or L{None} (tests, tools): every check is a thread job.
    """

    home: Home
    reactor: IDaemonReactor
    injector: IInjector
    controls: ControlCache
    runInThread: RunInThread
    reloaders: list[Callable[[], None]] = field(factory=list)
    watches: DirWatches | None = None
