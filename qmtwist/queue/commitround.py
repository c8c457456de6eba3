"""
One commit round (docs/behaviour/queue.md 5.1, 5.3): the durability order that turns a batch of
written L{qmtwist.queue.store.PendingMessage}s into committed messages with shared syncs.

For every message of the round: its file and envelope are durable, then the directory entries
under C{mess/}, then a forward's C{fwd/} record (L{qmtwist.queue.fwd}), then the todo link, then
the C{todo/} directory; a message that fails on the way is removed and gets qmail-queue's code.
C{control/queueextra} is read for every round (FAQ 8.2). The daemon runs a round on a thread
(L{qmtwist.queue.commit.Injector}); L{qmtwist.queue.store.injectStream} runs a round of one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from qmtwist.control import readList
from qmtwist.errors import QQ_WRITE_ERROR, QueueError
from qmtwist.queue import crashpoint, fwd

if TYPE_CHECKING:
    from qmtwist.queue.store import PendingMessage, Syncer


def readQueueExtra(controlDir: str | None, warnings: list[str] | None = None) -> list[bytes]:
    """
    C{control/queueextra}: recipients added to every message (FAQ 8.2).

    Read with the checks of L{qmtwist.control.load}: a line that could not be stored as an
    envelope address (a CR or other control character, 1003 bytes or more) is left out, so
    that it cannot make every injection fail; a FIFO or other non-regular file is never opened
    for reading and counts as missing.

    @param warnings: receives the C{warning: control/queueextra ...} lines.
    @raise OSError: the file exists but cannot be read.
    """
    if controlDir is None:
        return []
    entries, lines = readList(controlDir, "queueextra")
    if warnings is not None:
        warnings.extend(lines)
    return entries


def commitRound(
    batch: list[PendingMessage], syncer: Syncer, controlDir: str | None,
    warnings: list[str] | None = None,
) -> dict[int, QueueError]:
    """
    Commit C{batch} with shared directory syncs.

    @param warnings: receives the warning lines about C{control/queueextra}.
    @return: the messages that failed, by id; they have been removed. Every other message of the
        batch is durable when this returns.
    """
    failed: dict[int, QueueError] = {}
    try:
        extra = readQueueExtra(controlDir, warnings)
    except OSError as e:
        extra = []
        for p in batch:
            failed[p.id] = QueueError(55, str(e))
    for p in batch:
        if p.id in failed:
            continue
        try:
            p.finishFiles(syncer, extra)
        except QueueError as e:
            failed[p.id] = e
        except OSError as e:
            failed[p.id] = QueueError(QQ_WRITE_ERROR, str(e))
    ok = [p for p in batch if p.id not in failed]
    if ok and not syncer.canGroup:
        # the message files must be reachable by name before a todo entry can point at them
        try:
            syncer.syncDirs({os.path.dirname(p.messPath) for p in ok})
        except OSError as e:
            for p in ok:
                failed[p.id] = QueueError(QQ_WRITE_ERROR, str(e))
        ok = [p for p in ok if p.id not in failed]
    if ok and syncer.canGroup:
        # One syncfs makes every message and envelope of the round durable before any of
        # them is committed; then only the todo directory needs a sync.
        try:
            syncer.syncFilesystem(ok[0].layout.path)
        except OSError as e:
            for p in ok:
                failed[p.id] = QueueError(QQ_WRITE_ERROR, str(e))
        ok = [p for p in ok if p.id not in failed]
    crashpoint.reached("after-fsync")
    # a forward's fwd/ record: after its files are durable, before its todo link
    fwd.writeRecords(ok, syncer, failed)
    ok = [p for p in ok if p.id not in failed]
    crashpoint.reached("before-link")
    for p in ok:
        try:
            p.linkTodo()
        except QueueError as e:
            failed[p.id] = e
    ok = [p for p in ok if p.id not in failed]
    crashpoint.reached("after-link")
    linked: set[int] = set()
    if ok:
        try:
            syncer.syncDirs([ok[0].layout.sub("todo")])
        except OSError as e:
            # Linked already: the queue service may be preprocessing them. As qmail-queue
            # does after its link, report the error and leave the files (a possible duplicate,
            # never a loss).
            for p in ok:
                failed[p.id] = QueueError(QQ_WRITE_ERROR, str(e))
                linked.add(p.id)
    for p in batch:
        if p.id in failed and p.id not in linked:
            p.discard()
    return failed
