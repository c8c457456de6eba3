"""
datemail: sendmail with a Date line in local time (docs/behaviour/tools.md 12.3, FAQ 6.1).

Replaces qmail's datemail (predate + sendmail): C{Date: D Mon YYYY hh:mm:ss +hhmm} in the local
time zone is put before the message, so qmail-inject keeps it instead of adding a GMT one.

Difference [qmtwist]: when the header already has a C{Date:} (modern MUAs such as s-nail write
one), nothing is added, so the message never carries two Dates.
"""

from __future__ import annotations

import time
from typing import BinaryIO, cast

from attrs import evolve

from qmtwist.tools.base import ProgramEnv
from qmtwist.tools.streams import Prepended

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def localDate(when: float) -> bytes:
    """C{5 Nov 2025 08:03:09 +0100}: local time with its numeric offset."""
    t = time.localtime(when)
    offset = (t.tm_gmtoff or 0) // 60
    sign = b"+" if offset >= 0 else b"-"
    offset = abs(offset)
    return b"%d %s %d %02d:%02d:%02d %s%02d%02d" % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec,
        sign, offset // 60, offset % 60)


def main(argv: list[str], env: ProgramEnv) -> int:
    from qmtwist.tools import sendmail

    if argv[1:] == ["--help"]:
        env.stdout.write(b"datemail: usage: datemail [ sendmail args ]\n")
        return 0
    header = b""
    hasDate = False
    while True:
        line = env.stdin.readline()
        header += line
        if not line or line in (b"\n", b"\r\n"):
            break
        if line[:5].lower() == b"date:" or (
                line[:4].lower() == b"date" and line[4:].lstrip(b" \t")[:1] == b":"):
            hasDate = True
    dateLine = b"" if hasDate else b"Date: " + localDate(time.time()) + b"\n"
    stdin = Prepended(dateLine + header, env.stdin)
    # Prepended reads (read, readline) as the standard input it stands in for
    return sendmail.main(["sendmail", *argv[1:]], evolve(env, stdin=cast(BinaryIO, stdin)))
