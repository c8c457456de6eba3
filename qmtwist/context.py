"""
What the running daemon's parts share: the home, the reactor, the injector and the controls.

L{ControlCache} gives two views of C{control/}: L{ControlCache.snapshot}, the queue side's
values that change only on SIGHUP, and L{ControlCache.current}, re-read when a file's mtime
changed, for what docs/behaviour/control.md 2.2 marks "conn" and "deliv" (a change applies to the next
connection
or delivery without a signal).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from attrs import define, field
from twisted.logger import Logger

from qmtwist import control
from qmtwist.control import Control
from qmtwist.home import Home


def _mtimes(controlDir: str) -> tuple[tuple[str, int], ...]:
    try:
        entries = sorted(os.scandir(controlDir), key=lambda e: e.name)
    except OSError:
        return ()
    out = []
    for e in entries:
        try:
            out.append((e.name, e.stat().st_mtime_ns))
        except OSError:
            pass
    return tuple(out)


class ControlCache:
    """Control snapshots for the daemon; see module docstring."""

    log = Logger(namespace="qmail-send")

    def __init__(self, home: Home) -> None:
        self.home = home
        self.snapshot, warnings = control.load(home.control)
        self._current = self.snapshot
        self._stamp = _mtimes(home.control)
        for w in warnings:
            self.log.warn("{line}", line=w)

    def reload(self) -> list[str]:
        """SIGHUP: re-read everything; unreadable or bad files keep their previous values."""
        self.snapshot, warnings = control.load(self.home.control, self.snapshot)
        self._current = self.snapshot
        self._stamp = _mtimes(self.home.control)
        for w in warnings:
            self.log.warn("{line}", line=w)
        return warnings

    def current(self) -> Control:
        """The newest values (checked by mtime), for per-connection and per-delivery use."""
        stamp = _mtimes(self.home.control)
        if stamp != self._stamp:
            self._current, warnings = control.load(self.home.control, self._current)
            self._stamp = stamp
            for w in warnings:
                self.log.warn("{line}", line=w)
        return self._current


@define
class Context:
    """
    Everything a listener or agent constructor may need, built once by L{qmtwist.plugin}.

    @ivar reactor: the reactor (tests pass a fake).
    @ivar injector: an L{qmtwist.interfaces.IInjector}.
    @ivar controls: the L{ControlCache}.
    @ivar runInThread: runs a blocking callable on the thread pool, returns a Deferred.
    @ivar reloaders: callables run on SIGHUP after the controls were re-read.
    """

    home: Home
    reactor: Any
    injector: Any
    controls: ControlCache
    runInThread: Callable[[Callable[[], Any]], Any]
    reloaders: list[Callable[[], None]] = field(factory=list)
