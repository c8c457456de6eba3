"""
splogger: send lines from stdin to syslog (docs/behaviour/tools.md 13, FAQ 5.1). Replaces qmail's splogger.

C{splogger [tag [facility]]}: each line becomes C{tag: TIMESTAMP line} at priority ALERT for
lines starting C{alert:}, WARNING for C{warning:}, else INFO; unprintable bytes become C{?};
empty lines are skipped; lines over 799 characters are split, each continuation logged as
C{TIMESTAMP+rest}. The facility is a number (default 2, LOG_MAIL). Uses the standard
library's C{syslog}. Exit 0 at end of input.
"""

from __future__ import annotations

import syslog
import time
from typing import Callable

from qmtwist.tools.base import ProgramEnv

LIMIT = 799  # qmail's 800-byte buffer with its NUL


def _clean(data: bytes) -> str:
    return "".join(chr(c) if 32 <= c <= 126 else "?" for c in data)


def records(line: bytes, stamp: str) -> list[tuple[int, str]]:
    """The syslog (priority, text) records for one input line (without its LF)."""
    if not line:
        return []
    if line.startswith(b"alert:"):
        priority = syslog.LOG_ALERT
    elif line.startswith(b"warning:"):
        priority = syslog.LOG_WARNING
    else:
        priority = syslog.LOG_INFO
    text = _clean(line)
    out = []
    first = True
    while text:
        piece, text = text[:LIMIT], text[LIMIT:]
        out.append((priority, f"{stamp}{' ' if first else '+'}{piece}"))
        first = False
    return out


def timestamp(now: float) -> str:
    """qmail's splogger stamp: C{seconds.microseconds}, six digits after the dot."""
    micro = int(round(now * 1000000))
    return "%d.%06d" % divmod(micro, 1000000)


def main(argv: list[str], env: ProgramEnv,
         log: Callable[[int, str], None] | None = None) -> int:
    if argv[1:] == ["--help"]:
        env.stdout.write(b"splogger: usage: splogger [ tag [ facility ] ]\n")
        return 0
    tag = argv[1] if len(argv) > 1 else "splogger"
    try:
        facility = int(argv[2]) if len(argv) > 2 else 2
    except ValueError:
        facility = 2
    if log is None:
        syslog.openlog(tag, 0, facility << 3)
        log = syslog.syslog
    while True:
        line = env.stdin.readline()
        if not line:
            break
        for priority, text in records(line.rstrip(b"\n"), timestamp(time.time())):
            log(priority, text)
    return 0
