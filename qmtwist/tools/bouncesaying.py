"""
bouncesaying: bounce with a message, optionally only when a program says so (docs/behaviour/tools.md 13).

Replaces qmail's bouncesaying. Without prog: print error, exit 100. With prog: run it on the
message; exit 0 → print error, exit 100; exit 111 → 111; anything else → 0.
"""

from __future__ import annotations

from qmtwist.tools import child
from qmtwist.tools.base import ProgramEnv

USAGE = "bouncesaying: usage: bouncesaying error [ program [ arg ... ] ]"


def main(argv: list[str], env: ProgramEnv) -> int:
    if len(argv) < 2:
        env.warn(USAGE)
        return 100
    if len(argv) > 2:
        code, failed = child.runCondition("bouncesaying", argv[2:], env)
        if failed is not None:
            return failed
        if code != 0:
            return 0
    env.warn(argv[1])
    return 100
