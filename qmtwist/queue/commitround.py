"""
One commit round (docs/behaviour/queue.md 5.1, 5.3): the durability order that turns a batch of
written L{qmtwist.queue.store.PendingMessage}s into committed messages with shared syncs.

For every message of the round: its file and envelope are durable, then the directory entries
under C{mess/}, then a forward's C{fwd/} record (L{qmtwist.queue.fwd}), then the todo link, then
the C{todo/} directory; a message that fails on the way is removed and gets qmail-queue's code.
C{control/queueextra} is read for every round (FAQ 8.2). The daemon runs a round on a thread
(L{qmtwist.queue.commit.Injector}), and preprocesses its messages right after it
(L{qmtwist.queue.handoff}, docs/behaviour/queue.md 5.11); L{qmtwist.queue.store.injectStream}
runs a round of one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from qmtwist.control import readList
from qmtwist.errors import QQ_WRITE_ERROR, QueueError
from qmtwist.queue import crashpoint, fwd

if TYPE_CHECKING:
    from qmtwist.queue.handoff import HandOff
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
    warnings: list[str] | None = None, handoff: HandOff | None = None,
) -> dict[int, QueueError]:
    """
    Commit C{batch} with shared directory syncs.

    @param warnings: receives the warning lines about C{control/queueextra}.
    @param handoff: the daemon's in-process preprocessing (docs/behaviour/queue.md 5.11): the
        round's first sync also makes the previous rounds' preprocessed files durable, their
        todo entries are removed before this round's are linked, and the one sync of C{todo/}
        covers both. The round's claimed messages are preprocessed afterwards, by
        L{HandOff.finish} in a job of its own.
    @return: the messages that failed, by id; they have been removed. Every other message of the
        batch is durable when this returns.
    """
    failed: dict[int, QueueError] = {}
    if batch:
        layout = batch[0].layout
    elif handoff is not None:
        layout = handoff.layout
    else:
        return failed
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
    # the previous rounds' preprocessed messages, to settle (queue.md 5.11)
    settling = handoff if handoff is not None and handoff.settling else None
    settled = False  # whether the settling messages' files are durable now
    if (ok or settling) and not syncer.canGroup:
        # the message files must be reachable by name before a todo entry can point at them;
        # the previous round's info/local/remote entries before its todo entries go
        dirs = {os.path.dirname(p.messPath) for p in ok}
        if handoff is not None:
            dirs |= handoff.directories()
        try:
            syncer.syncDirs(dirs)
            settled = True
        except OSError as e:
            for p in ok:
                failed[p.id] = QueueError(QQ_WRITE_ERROR, str(e))
        ok = [p for p in ok if p.id not in failed]
    elif ok or settling:
        # One syncfs makes every message and envelope of the round durable before any of
        # them is committed (and the previous round's preprocessed files before their todo
        # entries go); then only the todo directory needs a sync.
        try:
            syncer.syncFilesystem(layout.path)
            settled = True
        except OSError as e:
            for p in ok:
                failed[p.id] = QueueError(QQ_WRITE_ERROR, str(e))
        ok = [p for p in ok if p.id not in failed]
    if settling is not None and not settled:
        settling.syncFailed()
    crashpoint.reached("after-fsync")
    # a forward's fwd/ record: after its files are durable, before its todo link
    fwd.writeRecords(ok, syncer, failed)
    ok = [p for p in ok if p.id not in failed]
    crashpoint.reached("before-link")
    unlinked = settling is not None and settled and settling.unlinkSettled()
    if unlinked:
        crashpoint.reached("after-unlink")
    for p in ok:
        try:
            p.linkTodo()
        except QueueError as e:
            failed[p.id] = e
    ok = [p for p in ok if p.id not in failed]
    crashpoint.reached("after-link")
    linked: set[int] = set()
    if ok or unlinked:
        try:
            syncer.syncDirs([layout.sub("todo")])
        except OSError as e:
            # Linked already: the queue service may be preprocessing them. As qmail-queue
            # does after its link, report the error and leave the files (a possible duplicate,
            # never a loss).
            for p in ok:
                failed[p.id] = QueueError(QQ_WRITE_ERROR, str(e))
                linked.add(p.id)
            ok = []
            if settling is not None:
                settling.todoSynced(False)
        else:
            if ok:
                crashpoint.reached("after-todo-sync")
            if settling is not None and unlinked:
                settling.todoSynced(True)
                crashpoint.reached("after-settle")
    for p in batch:
        if p.id in failed and p.id not in linked:
            p.discard()
    return failed
