"""
qmail-qstat: count the messages in the queue (docs/behaviour/tools.md 13). Replaces qmail's qmail-qstat.
"""

from __future__ import annotations

import os

from qmtwist.queue.layout import SPLIT
from qmtwist.tools.base import ProgramEnv


def main(argv: list[str], env: ProgramEnv) -> int:
    if argv[1:] == ["--help"]:
        env.stdout.write(b"qmail-qstat: usage: qmail-qstat\n")
        return 0
    layout = env.home.queue
    try:
        messages = sum(len(os.listdir(layout.sub("mess", i))) for i in range(SPLIT))
        todo = len(os.listdir(layout.sub("todo")))
    except OSError as e:
        env.warn(f"qmail-qstat: fatal: unable to read the queue: {e.strerror}")
        return 111
    env.stdout.write(b"messages in queue: %d\n" % messages)
    env.stdout.write(b"messages in queue but not yet preprocessed: %d\n" % todo)
    env.stdout.flush()
    return 0
