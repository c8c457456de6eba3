"""
The remote host timeout table (qmail's tcpto.c; docs/behaviour/remote.md 11.6), kept in C{queue/lock/tcpto}.

Only connect timeouts count. A timeout increments the address's counter unless its previous
recorded timeout is under 120 s old; the counter stops at 10. An address with a counter of 2 or
more whose last timeout is younger than 3840 s plus a random 0-1983 s is skipped. A successful
connection or a refusal resets the counter.

The file is text, one line C{⟨ip⟩ ⟨counter⟩ ⟨unix time of last timeout⟩} per address [qmtwist];
it is re-read when it changes, so C{qmail-tcpok} (another process) takes effect at once.
The file is tiny, so reads and writes happen in the reactor thread, as qmail-remote reads it.
"""

from __future__ import annotations

import os
import random
from typing import Any

from attrs import frozen

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
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(formatTable(table))
    os.replace(tmp, path)


class TimeoutTable:
    """
    The table as qmail-remote uses it.

    @param path: C{HOME/queue/lock/tcpto}.
    @param clock: an C{IReactorTime} (its C{seconds()} is "now").
    @param rng: chooses the random part of the skip window.
    """

    def __init__(self, path: str, clock: Any, rng: random.Random | None = None) -> None:
        self.path = path
        self.clock = clock
        self.rng = rng or random.Random()
        self._table: dict[str, Entry] = {}
        self._stamp: tuple[int, int, int] | None = None

    def _fileStamp(self) -> tuple[int, int, int] | None:
        # the inode changes on every write (os.replace), even within one mtime tick
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def _load(self) -> dict[str, Entry]:
        stamp = self._fileStamp()
        if stamp is None or stamp != self._stamp:
            try:
                self._table = read(self.path)
            except OSError:
                self._table = {}
            self._stamp = stamp
        return self._table

    def _save(self) -> None:
        try:
            write(self.path, self._table)
            self._stamp = self._fileStamp()
        except OSError:
            pass  # the table is advisory; qmail-remote ignores its write errors too

    def skip(self, ip: str) -> bool:
        """Whether connecting to C{ip} should be skipped now."""
        entry = self._load().get(ip)
        if entry is None or entry.count < 2:
            return False
        window = SKIP_BASE + self.rng.randrange(SKIP_RANDOM)
        return self.clock.seconds() - entry.last < window

    def timedOut(self, ip: str) -> None:
        """Record a connect timeout of C{ip}."""
        table = self._load()
        now = self.clock.seconds()
        entry = table.get(ip)
        if entry is not None and now - entry.last < RECENT:
            return
        count = min((entry.count if entry else 0) + 1, MAX_COUNT)
        table[ip] = Entry(ip, count, now)
        self._save()

    def ok(self, ip: str) -> None:
        """A connection to C{ip} succeeded or was refused: reset its counter."""
        table = self._load()
        if ip in table:
            del table[ip]
            self._save()
