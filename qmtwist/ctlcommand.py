"""
C{qmtwist ctl queue|hold|release|delete|retry|stats|why} (docs/commands.md "Queue control",
docs/behaviour/queue-control.md): the commands that talk to the running daemon through its
control socket, and C{why}, which reads the daemon's log.

Exit codes: 0 done; 1 a message number the daemon does not know (or refused, e.g. held for
C{retry}, a delivery running for C{delete}) or, for C{why}, no line about the message; 111 the
daemon could not be reached or the log not read; 100 usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qmtwist.ctlclient import ControlError, ask
from qmtwist.home import Home
from qmtwist.logstory import StoryError, findLog, story
from qmtwist.tools.qread import formatRows

COMMANDS = ("queue", "hold", "release", "delete", "retry", "stats", "why")


def _fatal(text: str, code: int = 111) -> int:
    sys.stderr.write(f"qmtwist ctl: fatal: {text}\n")
    return code


def _ids(words: list[str]) -> list[int] | None:
    out = []
    for w in words:
        w = w.lstrip("#")
        if not w.isdigit() or int(w) <= 0:
            return None
        out.append(int(w))
    return out


def ctlCommand(home: Home, argv: list[str]) -> int:
    """Run one control command; C{argv} starts with its name."""
    p = argparse.ArgumentParser(prog=f"qmtwist ctl {argv[0]}")
    if argv[0] in ("queue", "stats"):
        p.add_argument("--json", action="store_true", help="one JSON object per line")
    elif argv[0] == "why":
        p.add_argument("id")
        p.add_argument("--log", help="the log file (default: the daemon's, see run/logfile; "
                                     "- reads standard input)")
    else:
        p.add_argument("ids", nargs="+", metavar="ID")
    try:
        opts = p.parse_args(argv[1:])
    except SystemExit as e:
        return 0 if e.code == 0 else 100
    if argv[0] == "why":
        return _why(home, opts.id, opts.log)
    try:
        if argv[0] == "queue":
            return _queue(home, opts.json)
        if argv[0] == "stats":
            return _stats(home, opts.json)
        return _change(home, argv[0], opts.ids)
    except ControlError as e:
        return _fatal(str(e))


def _queue(home: Home, asJson: bool) -> int:
    answer = ask(home, {"op": "queue"})
    if not answer.get("ok"):
        return _fatal("; ".join(answer.get("errors") or ["refused"]))
    rows: list[dict[str, Any]] = answer.get("messages") or []
    if asJson:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
    else:
        sys.stdout.buffer.write(formatRows(rows))
    sys.stdout.flush()
    return 0


def _stats(home: Home, asJson: bool) -> int:
    answer = ask(home, {"op": "stats"})
    if not answer.get("ok"):
        return _fatal("; ".join(answer.get("errors") or ["refused"]), 1)
    figures = answer.get("stats") or {}
    if asJson:
        sys.stdout.write(json.dumps(figures, sort_keys=True) + "\n")
    else:
        for name in sorted(figures):
            sys.stdout.write(f"{name} {figures[name]}\n")
    return 0


def _change(home: Home, op: str, words: list[str]) -> int:
    ids = _ids(words)
    if ids is None:
        return _fatal(f"{op}: message IDs are numbers, as in mailq's #N", 100)
    answer = ask(home, {"op": op, "ids": ids})
    for line in answer.get("errors") or []:
        sys.stderr.write(f"qmtwist ctl: {line}\n")
    if not answer.get("ok"):
        return 1
    return 0


def _why(home: Home, word: str, logOption: str | None) -> int:
    ids = _ids([word])
    if ids is None:
        return _fatal("why: a message ID is a number, as in mailq's #N", 100)
    try:
        paths = findLog(home, logOption)
        lines = story(paths, ids[0], sys.stdin if logOption == "-" else None)
    except StoryError as e:
        return _fatal(str(e))
    if not lines:
        sys.stderr.write(f"qmtwist ctl: why: no log line about msg {ids[0]}\n")
        return 1
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0
