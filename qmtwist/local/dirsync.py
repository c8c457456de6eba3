"""
Maildir names made durable together (docs/behaviour/local.md 4.8.1).

A Maildir delivery is durable once its file's data is (the writer fsyncs the file before linking
it into C{new/}) and its name in C{new/} is (a sync of the directory). The second step does not
need to run once per delivery: the local agent collects the directories of the deliveries that
finish at about the same time and makes them durable in one thread hop, with one C{syncfs(2)}
per filesystem when several directories share it (one journal commit instead of one per
directory), or one fsync of a lone directory. Only then are those deliveries reported done, so
the queue service never records a C{D} for a file whose name could still vanish in a crash.

With C{syncfs(2)} the first step can wait too (L{DirectorySyncs} with C{coverData}): a writer
on a filesystem the agent watches leaves its file's data unsynced, and the batch's C{syncfs}
makes data and names durable at once, so a delivery costs no journal commit of its own. The
agent holds one descriptor per such filesystem from before any write it covers, because
C{syncfs} reports a writeback error only to descriptors opened before it happened; a delivery
fails if any batch since it was handed out reported one (L{DirectorySyncs.token}).

The directories come from the delivery helpers, which run as the mail's owner; the daemon only
opens them read-only as directories (C{O_DIRECTORY}: anything else fails before it is opened)
and syncs them, so a helper that names another directory gains nothing.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from twisted.internet.defer import Deferred

from qmtwist.durable import canSyncFilesystem, syncFilesystem

#: The error a delivery gets when a batch since it started reported a writeback error.
WRITEBACK = OSError(5, "a writeback error was reported while the delivery was written")

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


def syncWatched(paths: Iterable[bytes],
                watch: dict[int, int]) -> tuple[dict[bytes, OSError], bool]:
    """
    Blocking: one C{syncfs} per filesystem of C{paths}, through the descriptor C{watch} holds
    for it; a filesystem not in C{watch} yet gets the descriptor of its first directory, kept
    there (its writers synced their own data: they were not told it was watched).

    @return: the directories that are not durable, with the error; and whether a C{syncfs}
        failed (an error that may concern any file written on that filesystem).
    """
    failed: dict[bytes, OSError] = {}
    byDevice: dict[int, list[bytes]] = {}
    syncFailed = False
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
        if dev in watch:
            os.close(fd)
        else:
            watch[dev] = fd
        byDevice.setdefault(dev, []).append(path)
    for dev, members in byDevice.items():
        try:
            syncFilesystem(watch[dev])
        except OSError as e:
            syncFailed = True
            for path in members:
                failed[path] = e
    return failed, syncFailed


class DirectorySyncs:
    """
    Batches directory syncs: every L{sync} asked for while a batch runs goes into the next one,
    so deliveries finishing together share one thread hop and one sync per filesystem.

    @ivar batches: how many batches have run (for tests and figures).
    @ivar coverData: every batch is a C{syncfs} through a watched descriptor, so writers on a
        filesystem of L{watched} may leave their files' data unsynced.
    """

    def __init__(self, runInThread: RunInThread, useSyncfs: bool = True,
                 coverData: bool = False) -> None:
        self.runInThread = runInThread
        self.useSyncfs = useSyncfs
        self.coverData = coverData and useSyncfs and canSyncFilesystem()
        self.batches = 0
        #: the devices of the filesystems held by C{_watch}, as the reactor last saw them
        self.watched: frozenset[int] = frozenset()
        self._watch: dict[int, int] = {}  # device -> descriptor; changed only by the batch
        self._lastError = 0  # the number of the last batch that reported an error
        self._waiting: list[tuple[tuple[bytes, ...], int, Deferred[None]]] = []
        self._running = False

    def token(self) -> int:
        """
        The first batch whose C{syncfs} can report an error of a write that starts now (the
        one running, whose check may come after the write, or the next). Pass it to L{sync}.
        """
        return self.batches if self._running else self.batches + 1

    def sync(self, paths: Iterable[bytes], since: int | None = None) -> Deferred[None]:
        """
        Fires once every directory of C{paths} (and, with L{coverData}, the data of the files
        in it) is durable; fails with the L{OSError} of the first one that could not be
        synced, or with L{WRITEBACK} when a batch since C{since} (a L{token}) reported an
        error (it may have been this delivery's data).
        """
        d: Deferred[None] = Deferred()
        self._waiting.append((tuple(paths), since if since is not None else self.token(), d))
        if not self._running:
            self._run()
        return d

    def close(self) -> None:
        """Let go of the watched descriptors (when no batch runs)."""
        if self._running:
            return
        fds, self._watch = list(self._watch.values()), {}
        self.watched = frozenset()
        for fd in fds:
            os.close(fd)

    def _run(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True
        self.batches += 1
        number = self.batches
        every = [p for paths, _, _ in batch for p in paths]
        if self.coverData:
            watch = self._watch
            work = self.runInThread(lambda: syncWatched(every, watch))
        else:
            work = self.runInThread(lambda: (syncDirectories(every, self.useSyncfs), False))

        def done(result: tuple[dict[bytes, OSError], bool]) -> None:
            self._answer(number, batch, *result)

        def crashed(f: Any) -> None:
            e = f.value if isinstance(f.value, OSError) else OSError(5, f.getErrorMessage())
            self._answer(number, batch, {p: e for p in every}, True)

        work.addCallbacks(done, crashed)

    def _answer(self, number: int, batch: list[tuple[tuple[bytes, ...], int, Deferred[None]]],
                failed: dict[bytes, OSError], syncFailed: bool) -> None:
        self._running = False
        self.watched = frozenset(self._watch)
        if syncFailed:
            self._lastError = number
        for paths, since, d in batch:
            errors = [failed[p] for p in paths if p in failed]
            if errors:
                d.errback(errors[0])
            elif self.coverData and self._lastError >= since:
                d.errback(WRITEBACK)
            else:
                d.callback(None)
        if self._waiting and not self._running:
            self._run()
