"""
The remote host timeout table (qmail's tcpto.c; docs/behaviour/remote.md 11.6), kept in C{queue/lock/tcpto}.

Only connect timeouts count. A timeout increments the address's counter unless its previous
recorded timeout is under 120 s old; the counter stops at 10. An address with a counter of 2 or
more whose last timeout is younger than 3840 s plus a random 0-1983 s is skipped. A successful
connection or a refusal resets the counter.

The file is text, one line C{⟨ip⟩ ⟨counter⟩ ⟨unix time of last timeout⟩} per address [qmtwist];
it is re-read when it changes, so C{qmail-tcpok} (another process) takes effect at the next
delivery. In the daemon it is read and written on a pool thread only, never on the reactor
thread (L{TimeoutTable}).
"""

from __future__ import annotations

import os
import random
from functools import partial
from typing import Any, Callable

from attrs import frozen
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

RECENT = 120
SKIP_BASE = 3840
SKIP_RANDOM = 1984
MAX_COUNT = 10


@frozen
class Entry:
    ip: str
    count: int
    last: float


def parse(data: bytes) -> dict[str, Entry]:
    """Read the table text; malformed lines are ignored."""
    out: dict[str, Entry] = {}
    for line in data.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        try:
            entry = Entry(parts[0], min(int(parts[1]), MAX_COUNT), float(parts[2]))
        except ValueError:
            continue
        if entry.count > 0:
            out[entry.ip] = entry
    return out


def formatTable(table: dict[str, Entry]) -> bytes:
    """The file's text for C{table}, sorted by address (the inverse of L{parse})."""
    return b"".join(
        f"{e.ip} {e.count} {e.last:.0f}\n".encode("ascii")
        for e in sorted(table.values(), key=lambda e: e.ip)
        if e.count > 0
    )


def read(path: str) -> dict[str, Entry]:
    """The table in C{path}; a missing file is an empty table. @raise OSError: unreadable."""
    try:
        with open(path, "rb") as f:
            return parse(f.read())
    except FileNotFoundError:
        return {}


def write(path: str, table: dict[str, Entry]) -> None:
    """Replace the table atomically. @raise OSError: on a write error."""
    _replace(path, formatTable(table))


def _replace(path: str, data: bytes) -> None:
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


#: What tells one version of the file from another (L{fileStamp}); L{None}: no file.
Stamp = tuple[int, int, int] | None


def fileStamp(path: str) -> Stamp:
    """The file's mtime, inode and size; the inode changes on every L{write} (C{os.replace}),
    even within one mtime tick."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_ino, st.st_size)


def readIfChanged(path: str, stamp: Stamp) -> tuple[Stamp, dict[str, Entry] | None]:
    """The file's stamp and, unless it is still C{stamp}, its table ({} when unreadable)."""
    now = fileStamp(path)
    if now is not None and now == stamp:
        return now, None
    try:
        return now, read(path)
    except OSError:
        return now, {}


def writeStamped(path: str, data: bytes) -> Stamp:
    """Replace the file with C{data} and return its stamp; L{None} on a write error (ignored)."""
    try:
        _replace(path, data)
    except OSError:
        return None
    return fileStamp(path)


class TimeoutTable:
    """
    The table as qmail-remote uses it.

    With C{runInThread} (the daemon's agent), the file is never touched on the calling thread:
    L{refresh} rereads it on a thread when it has changed (the agent calls it before each
    group's connections, so C{qmail-tcpok} takes effect at the next delivery), L{skip} reads the
    copy in memory, and L{timedOut} and L{ok} change that copy and write it behind on a thread,
    one write at a time (L{flush} waits for them). Without it (a program of its own), every call
    rereads a changed file and writes at once, as qmail-remote does.

    @param path: C{HOME/queue/lock/tcpto}.
    @param clock: an C{IReactorTime} (its C{seconds()} is "now").
    @param rng: chooses the random part of the skip window.
    @param runInThread: C{ctx.runInThread}: runs a callable on a pool thread, returns a Deferred.
    """

    def __init__(
        self, path: str, clock: IReactorTime, rng: random.Random | None = None,
        runInThread: Callable[[Callable[[], Any]], Any] | None = None,
    ) -> None:
        self.path = path
        self.clock = clock
        self.rng = rng or random.Random()
        self.runInThread = runInThread
        self._table: dict[str, Entry] = {}
        self._stamp: Stamp = None
        self._version = 0  # counts changes of the copy in memory, from either side
        self._writing: defer.Deferred[None] | None = None
        self._dirty = False  # changed since the last write began
        self._flushed: list[defer.Deferred[None]] = []

    # -- the file ---------------------------------------------------------------------------
    def _apply(self, result: tuple[Stamp, dict[str, Entry] | None]) -> None:
        self._stamp, table = result
        if table is not None:
            self._table = table
            self._version += 1

    def refresh(self) -> defer.Deferred[None]:
        """Reread the file if another process (C{qmail-tcpok}) has replaced it."""
        if self.runInThread is None:
            self._apply(readIfChanged(self.path, self._stamp))
            return defer.succeed(None)
        if self._writing is not None:
            return defer.succeed(None)  # the copy in memory is newer than the file
        version = self._version

        def apply(result: tuple[Stamp, dict[str, Entry] | None]) -> None:
            if version == self._version and self._writing is None:
                self._apply(result)

        reading = self.runInThread(partial(readIfChanged, self.path, self._stamp))
        return reading.addCallbacks(apply, lambda _f: None)  # the table is advisory

    def _changed(self) -> None:
        self._version += 1
        if self.runInThread is None:
            stamp = writeStamped(self.path, formatTable(self._table))
            if stamp is not None:
                self._stamp = stamp
            return
        self._dirty = True
        if self._writing is None:
            self._writeBehind()

    def _writeBehind(self) -> None:
        assert self.runInThread is not None
        self._dirty = False
        self._writing = self.runInThread(partial(writeStamped, self.path, formatTable(self._table)))

        def written(stamp: Stamp) -> None:
            if stamp is not None:
                self._stamp = stamp
            self._writing = None
            if self._dirty:
                self._writeBehind()
                return
            waiters, self._flushed = self._flushed, []
            for d in waiters:
                d.callback(None)

        self._writing.addCallbacks(written, lambda _f: written(None))

    def flush(self) -> defer.Deferred[None]:
        """Fires when every change so far is in the file (or failed to get there)."""
        if self._writing is None:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._flushed.append(d)
        return d

    def _current(self) -> dict[str, Entry]:
        if self.runInThread is None:
            self.refresh()
        return self._table

    # -- qmail-remote's rules ---------------------------------------------------------------
    def skip(self, ip: str) -> bool:
        """Whether connecting to C{ip} should be skipped now."""
        entry = self._current().get(ip)
        if entry is None or entry.count < 2:
            return False
        window = SKIP_BASE + self.rng.randrange(SKIP_RANDOM)
        return self.clock.seconds() - entry.last < window

    def timedOut(self, ip: str) -> None:
        """Record a connect timeout of C{ip}."""
        table = self._current()
        now = self.clock.seconds()
        entry = table.get(ip)
        if entry is not None and now - entry.last < RECENT:
            return
        count = min((entry.count if entry else 0) + 1, MAX_COUNT)
        table[ip] = Entry(ip, count, now)
        self._changed()

    def ok(self, ip: str) -> None:
        """A connection to C{ip} succeeded or was refused: reset its counter."""
        table = self._current()
        if ip in table:
            del table[ip]
            self._changed()
