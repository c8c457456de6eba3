"""
Named points of the commit round where the queue's crash test kills the process
(tests/integration/test_daemon.py, docs/behaviour/queue.md 5.1 and 5.10). Off unless the
environment says otherwise, and only tests set it.

C{QMTWIST_TEST_PAUSE=POINT:FILE} (read once, at import) makes the round that reaches C{POINT}
write its pid into C{FILE} and then sleep, so that the test, which waits for C{FILE}, SIGKILLs
the process exactly there. The points are those of L{POINTS}: the message and envelope are
durable (C{after-fsync}); the forward records are written and the todo link is next
(C{before-link}); the todo links exist and the round has not returned (C{after-link}).
"""

from __future__ import annotations

import os
import time

POINTS = ("after-fsync", "before-link", "after-link")

_POINT, _, _MARKER = os.environ.get("QMTWIST_TEST_PAUSE", "").partition(":")


def reached(point: str) -> None:
    """At C{point} of a commit round: nothing, unless a test asked to pause here."""
    if _POINT and point == _POINT:
        with open(_MARKER, "w") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(3600)  # until the test's SIGKILL
