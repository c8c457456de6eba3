"""
Named points of the commit round where the queue's crash test kills the process
(tests/integration/test_daemon.py, docs/behaviour/queue.md 5.1 and 5.10). Off unless the
environment says otherwise, and only tests set it.

C{QMTWIST_TEST_PAUSE=POINT:FILE} (read once, at import) makes the round that reaches C{POINT}
write its pid into C{FILE} and then sleep, so that the test, which waits for C{FILE}, SIGKILLs
the process exactly there. The points are those of L{POINTS}: the message and envelope are
durable (C{after-fsync}); the forward records are written and the todo link is next
(C{before-link}); the todo links exist and the round has not returned (C{after-link}).

The daemon's in-process hand-off (docs/behaviour/queue.md 5.11) adds: the todo links are
durable (C{after-todo-sync}, also reached by qmail-queue's round); the round's messages'
info/local/remote files are written, not yet durable, by the job that follows the round once
its committers were answered (C{after-info}); a later round (the one that settles them) has
removed their todo entries, not yet durably (C{after-unlink}), or durably, and has not returned
(C{after-settle}). L{DAEMON_ONLY}
are reached only by the daemon's rounds; L{ANSWERED}, only after the committer was answered.

The queue service's batched D marks (L{qmtwist.queue.fileops}, docs/behaviour/queue.md 5.12)
add: a delivery's C{D} is written, its batch's sync not yet made (C{before-mark-sync}), and
made, the follow-ups (forward records dropped, the delivery counted done) not yet run
(C{after-mark-sync}). Both come after the message was delivered and its committer answered.
"""

from __future__ import annotations

import os
import time

POINTS = ("after-fsync", "before-link", "after-link",
          "after-todo-sync", "after-info", "after-unlink", "after-settle",
          "before-mark-sync", "after-mark-sync")
#: Points of the in-process hand-off: a process that runs no queue service never reaches them.
DAEMON_ONLY = frozenset({"after-info", "after-unlink", "after-settle", "before-mark-sync",
                         "after-mark-sync"})
#: Points reached after the round of the message had returned (its committer was answered).
ANSWERED = frozenset({"after-info", "after-unlink", "after-settle", "before-mark-sync",
                      "after-mark-sync"})
#: Points reached before the todo link exists: the message is not committed.
UNCOMMITTED = frozenset({"after-fsync", "before-link"})

_POINT, _, _MARKER = os.environ.get("QMTWIST_TEST_PAUSE", "").partition(":")


def reached(point: str) -> None:
    """At C{point} of a commit round: nothing, unless a test asked to pause here."""
    if _POINT and point == _POINT:
        with open(_MARKER, "w") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(3600)  # until the test's SIGKILL
