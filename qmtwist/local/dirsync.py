"""
Maildir names made durable together (docs/behaviour/local.md 4.8.1).

A Maildir delivery is durable once its file's data is (the writer fsyncs the file before linking
it into C{new/}) and its name in C{new/} is (a sync of the directory). The second step does not
need to run once per delivery: the local agent collects the directories of the deliveries that
finish at about the same time and makes them durable in one thread hop, with one C{syncfs(2)}
per filesystem when several directories share it (one journal commit instead of one per
directory), or one fsync of a lone directory. Only then are those deliveries reported done, so
the queue service never records a C{D} for a file whose name could still vanish in a crash.

The directories come from the delivery helpers, which run as the mail's owner; the daemon only
opens them read-only as directories (C{O_DIRECTORY}: anything else fails before it is opened)
and syncs them, so a helper that names another directory gains nothing.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred

from qmtwist.durable import canSyncFilesystem, syncFilesystem

RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]
_OPEN_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC


def syncDirectories(paths: Iterable[bytes], useSyncfs: bool = True) -> dict[bytes, OSError]:
    """
    Make the entries of every directory in C{paths} durable; blocking (run it on a thread).

    Directories on one filesystem share one C{syncfs} when there are several of them (and
    C{useSyncfs}); a directory alone on its filesystem gets an fsync.

    @return: the directories that could not be synced, with the error (an empty dict when all
        are durable).
    """
    failed: dict[bytes, OSError] = {}
    byDevice: dict[int, list[tuple[bytes, int]]] = {}
    for path in dict.fromkeys(paths):
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as e:
            failed[path] = e
            continue
        try:
            dev = os.fstat(fd).st_dev
        except OSError as e:
            os.close(fd)
            failed[path] = e
            continue
        byDevice.setdefault(dev, []).append((path, fd))
    group = useSyncfs and canSyncFilesystem()
    for members in byDevice.values():
        try:
            if group and len(members) > 1:
                try:
                    syncFilesystem(members[0][1])
                except OSError as e:
                    for path, _ in members:
                        failed[path] = e
            else:
                for path, fd in members:
                    try:
                        os.fsync(fd)
                    except OSError as e:
                        failed[path] = e
        finally:
            for _, fd in members:
                os.close(fd)
    return failed


class DirectorySyncs:
    """
    Batches directory syncs: every L{sync} asked for while a batch runs goes into the next one,
    so deliveries finishing together share one thread hop and one sync per filesystem.

    @ivar batches: how many batches have run (for tests and figures).
    """

    def __init__(self, runInThread: RunInThread, useSyncfs: bool = True) -> None:
        self.runInThread = runInThread
        self.useSyncfs = useSyncfs
        self.batches = 0
        self._waiting: list[tuple[tuple[bytes, ...], Deferred[None]]] = []
        self._running = False

    def sync(self, paths: Iterable[bytes]) -> Deferred[None]:
        """
        Fires once every directory of C{paths} is durable; fails with the L{OSError} of the
        first one that could not be synced.
        """
        d: Deferred[None] = Deferred()
        self._waiting.append((tuple(paths), d))
        if not self._running:
            self._run()
        return d

    def _run(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True
        self.batches += 1
        every = [p for paths, _ in batch for p in paths]
        work = self.runInThread(lambda: syncDirectories(every, self.useSyncfs))

        def done(failed: dict[bytes, OSError]) -> None:
            self._answer(batch, failed)

        def crashed(f: Any) -> None:
            e = f.value if isinstance(f.value, OSError) else OSError(5, f.getErrorMessage())
            self._answer(batch, {p: e for p in every})

        work.addCallbacks(done, crashed)

    def _answer(self, batch: list[tuple[tuple[bytes, ...], Deferred[None]]],
                failed: dict[bytes, OSError]) -> None:
        self._running = False
        for paths, d in batch:
            errors = [failed[p] for p in paths if p in failed]
            if errors:
                d.errback(errors[0])
            else:
                d.callback(None)
        if self._waiting and not self._running:
            self._run()
