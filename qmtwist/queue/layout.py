"""
Paths of qmail's queue (docs/behaviour/queue.md 5.2): split 23, message files named by their inode number.

qmail's layout plus C{fwd/}, the records that make local delivery's forwards exactly-once
(L{qmtwist.queue.fwd}), and C{hold/} and C{why/}, hold markers and deferral notes
(L{qmtwist.queue.marks}).
"""

from __future__ import annotations

import os

from attrs import frozen

SPLIT = 23
SPLIT_DIRS = ("mess", "info", "local", "remote")
FLAT_DIRS = ("pid", "intd", "todo", "bounce", "fwd", "lock", "hold", "why")


@frozen
class QueueLayout:
    """The directories of one queue; pure path arithmetic plus L{create}."""

    path: str

    def sub(self, *parts: str | int) -> str:
        return os.path.join(self.path, *map(str, parts))

    def mess(self, n: int) -> str:
        return self.sub("mess", n % SPLIT, n)

    def info(self, n: int) -> str:
        return self.sub("info", n % SPLIT, n)

    def local(self, n: int) -> str:
        return self.sub("local", n % SPLIT, n)

    def remote(self, n: int) -> str:
        return self.sub("remote", n % SPLIT, n)

    def channel(self, name: str, n: int) -> str:
        return self.sub(name, n % SPLIT, n)

    def intd(self, n: int) -> str:
        return self.sub("intd", n)

    def todo(self, n: int) -> str:
        return self.sub("todo", n)

    def bounce(self, n: int) -> str:
        return self.sub("bounce", n)

    @property
    def trigger(self) -> str:
        return self.sub("lock", "trigger")

    @property
    def sendmutex(self) -> str:
        return self.sub("lock", "sendmutex")

    @property
    def tcpto(self) -> str:
        return self.sub("lock", "tcpto")

    def isComplete(self) -> bool:
        if not os.path.isdir(self.path):
            return False
        for d in FLAT_DIRS:
            if not os.path.isdir(self.sub(d)):
                return False
        for d in SPLIT_DIRS:
            if not os.path.isdir(self.sub(d, SPLIT - 1)):
                return False
        return True

    def create(self) -> list[str]:
        """Create missing directories and lock files; return what was made."""
        made: list[str] = []

        def mkdir(p: str, mode: int) -> None:
            try:
                os.mkdir(p, mode)
                made.append(p)
            except FileExistsError:
                pass

        mkdir(self.path, 0o750)
        for d in FLAT_DIRS:
            mkdir(self.sub(d), 0o750 if d == "lock" else 0o700)
        for d in SPLIT_DIRS:
            mkdir(self.sub(d), 0o750)
            for i in range(SPLIT):
                mkdir(self.sub(d, i), 0o750)
        for name in ("sendmutex", "tcpto"):
            p = self.sub("lock", name)
            if not os.path.exists(p):
                with open(p, "ab"):
                    pass
                os.chmod(p, 0o600 if name == "sendmutex" else 0o644)
                made.append(p)
        if not os.path.exists(self.trigger):
            os.mkfifo(self.trigger, 0o622)
            os.chmod(self.trigger, 0o622)
            made.append(self.trigger)
        return made
