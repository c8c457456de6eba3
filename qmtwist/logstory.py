"""
C{qmtwist ctl why ID}: a message's story from the daemon's log (docs/behaviour/queue-control.md 17.9).

Every queue service line about a message names it as C{msg N} (C{new msg}, C{info msg},
C{starting delivery D: msg N}, C{delivery D: msg N: ...}, C{hold msg}, C{bounce msg},
C{end msg}), so the story is every line matching C{msg N} and no longer number. Numbers are
inodes and are reused: the story starts at the last C{new msg N} line (an earlier message
with the same number ended before it).

The log: C{--log FILE}, C{--log -} (standard input, e.g. from C{journalctl}), else the file named
in C{HOME/run/logfile}, which the daemon writes at start when twistd logs to a file
(C{--logfile}); its rotated files (C{FILE.N}, as twistd's rotation names them, highest oldest)
are read first. Text lines and C{--log-format json} lines are both understood.

No Twisted is imported at module level: the command runs outside the daemon. Lines are read
one at a time; only the matching ones are kept.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from typing import Iterable, Iterator, TextIO

from qmtwist.home import Home


class StoryError(Exception):
    """The log cannot be found or read; the text is one line."""


def logPointer(home: Home) -> str:
    """C{HOME/run/logfile}: the daemon's log file, one absolute path and LF."""
    return home.sub("run", "logfile")


def findLog(home: Home, option: str | None) -> list[str]:
    """The files to read, oldest first (C{[]} for standard input)."""
    if option == "-":
        return []
    path = option
    if path is None:
        try:
            with open(logPointer(home)) as f:
                path = f.read().strip()
        except FileNotFoundError:
            raise StoryError(
                f"no {logPointer(home)}: the daemon does not log to a file (twistd --logfile); "
                "give --log FILE, or --log - with the log on standard input") from None
        except OSError as e:
            raise StoryError(f"unable to read {logPointer(home)}: {e.strerror}") from None
    rotated = []
    directory, base = os.path.split(os.path.abspath(path))
    try:
        names = os.listdir(directory)
    except OSError as e:
        raise StoryError(f"unable to read {directory}: {e.strerror}") from None
    for name in names:
        suffix = name[len(base) + 1:]
        if name.startswith(base + ".") and suffix.isdigit():
            rotated.append((int(suffix), os.path.join(directory, name)))
    return [p for _, p in sorted(rotated, reverse=True)] + [os.path.abspath(path)]


def _jsonText(line: str) -> str | None:
    """A C{--log-format json} line as twistd would have written it in text, or None."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("text"), str):
        return None
    when = event.get("log_time")
    stamp = (datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S+0000")
             if isinstance(when, (int, float)) else "-")
    return f"{stamp} [{event.get('log_namespace', '-')}] {event['text']}"


def _lines(paths: list[str], stdin: TextIO | None) -> Iterator[str]:
    if stdin is not None:
        yield from stdin
        return
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield from f
        except FileNotFoundError:
            continue
        except OSError as e:
            raise StoryError(f"unable to read {path}: {e.strerror}") from None


def matching(lines: Iterable[str], n: int) -> list[str]:
    """The lines about message C{n}, from its last C{new msg N} line on."""
    pattern = re.compile(rf"\bmsg {n}(?![0-9])")
    new = re.compile(rf"\bnew msg {n}$")
    found: list[str] = []
    for raw in lines:
        line = raw.rstrip("\n")
        if line.startswith("{"):
            line = _jsonText(line) or line
        if not pattern.search(line):
            continue
        if new.search(line):
            found = []
        found.append(line)
    return found


def story(paths: list[str], n: int, stdin: TextIO | None = None) -> list[str]:
    """The story of message C{n} in C{paths} (or C{stdin})."""
    return matching(_lines(paths, stdin), n)
