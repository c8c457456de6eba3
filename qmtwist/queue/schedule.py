"""
When a channel of a message is retried, and when it has lived too long (docs/behaviour/queue.md 5.6). Pure.

qmail's schedule: after a pass at C{now} that leaves a recipient deferred, the next pass is at
C{birth + (floor(sqrt(now - birth)) + S)**2} with S = 10 for local and 20 for remote.
"""

from __future__ import annotations

import math

CHANNEL_STEP = {"local": 10, "remote": 20}
TOO_LONG = b"I'm not going to try again; this message has been in the queue too long.\n"


def nextPass(birth: float, now: float, channel: str) -> float:
    """The time of the next pass of C{channel} after a pass that started at C{now}."""
    age = max(0.0, now - birth)
    return birth + (math.isqrt(int(age)) + CHANNEL_STEP[channel]) ** 2


def isLastPass(birth: float, now: float, lifetime: int) -> bool:
    """A pass starting at C{now} is the last when the message is older than its lifetime."""
    return now > birth + lifetime
