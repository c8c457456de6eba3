"""
preline: feed a program the mbox From_, Return-Path and Delivered-To lines (docs/behaviour/tools.md 13).

Replaces qmail's preline. C{preline [-dfrDFR] cmd [arg ...]} runs cmd (looked up on C{PATH})
with stdin = C{UFLINE} + C{RPLINE} + C{DTLINE} + the message; C{-f}, C{-r}, C{-d} leave out the
From_, Return-Path and Delivered-To line, C{-F}, C{-R}, C{-D} put it back. Exit: cmd's code;
100 usage (also when a variable is missing); 111 if cmd crashed or could not be run for a
temporary reason, 100 for a permanent one (not found).
"""

from __future__ import annotations

import os

from qmtwist.tools import child
from qmtwist.tools.base import ProgramEnv

USAGE = "preline: usage: preline cmd [ arg ... ]"


def main(argv: list[str], env: ProgramEnv) -> int:
    lines = {}
    for name in ("UFLINE", "RPLINE", "DTLINE"):
        if name not in env.environ:
            env.warn(USAGE)
            return 100
        lines[name] = os.fsencode(env.environ[name])
    keep = {"f": True, "r": True, "d": True}
    args = argv[1:]
    while args and args[0].startswith("-") and args[0] != "-":
        word = args.pop(0)
        if word == "--":
            break
        for letter in word[1:]:
            if letter.lower() not in keep:
                env.warn(USAGE)
                return 100
            keep[letter.lower()] = letter.islower() is False
    if not args:
        env.warn(USAGE)
        return 100
    prefix = ((lines["UFLINE"] if keep["f"] else b"") + (lines["RPLINE"] if keep["r"] else b"")
              + (lines["DTLINE"] if keep["d"] else b""))
    try:
        code = child.run(args, env, prefix=prefix or b"")
    except OSError as e:
        return child.fatal(env, "preline", 111 if child.isTemporary(e) else 100,
                           f"unable to run {args[0]}: {e.strerror}")
    if code < 0:
        return child.fatal(env, "preline", 111, "child crashed")
    return code
