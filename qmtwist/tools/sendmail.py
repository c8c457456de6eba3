"""
sendmail: the interface MUAs expect, mapped onto qmail-inject (docs/behaviour/tools.md 12.2).

Replaces qmail 1.03's sendmail wrapper. C{-t} runs qmail-inject with C{-H}, otherwise C{-a};
C{-f} passes the envelope sender; C{-F} sets C{MAILNAME}. The flags MUAs add out of habit
(C{-i}, C{-oi}, C{-oem}, C{-m}, C{-v}, ...) are accepted and ignored, so a lone C{.} line never
ends a message. C{-bs} speaks SMTP on stdin/stdout through the stdio qmail-smtpd, C{-bp} (or the
name C{mailq}) lists the queue. Differences [qmtwist]: C{-r sender} is an alias of C{-f};
C{-q} sends ALRM to the running daemon instead of being a usage error; C{newaliases} points to
the C{.qmail} files; C{-f '<>'} means the empty sender (qmail would complete it to
C{<>@defaulthost}).
"""

from __future__ import annotations

import os
import signal
import sys

from attrs import evolve

from qmtwist.tools.base import ProgramEnv

USAGE = b"sendmail: usage: sendmail [ -t ] [ -fsender ] [ -Fname ] [ -bp ] [ -bs ] [ arg ... ]\n"
_WITH_ARG = set("efpoBFbr")
_NO_ARG = set("vimtx")
_OTHER_NAMES = ("mailq", "newaliases")


class _Usage(Exception):
    pass


def _parse(args: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Options as qmail's sgetopt reads them (stops at C{--} or the first non-option)."""
    opts: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            break
        j = 1
        while j < len(word):
            ch = word[j]
            if ch in _NO_ARG:
                opts.append((ch, ""))
                j += 1
            elif ch in ("E", "J", "q"):
                opts.append((ch, word[j + 1:]))  # optional argument: the rest of the word
                break
            elif ch in _WITH_ARG:
                if j + 1 < len(word):
                    value = word[j + 1:]
                elif i + 1 < len(args):
                    i += 1
                    value = args[i]
                else:
                    raise _Usage()
                opts.append((ch, value))
                break
            else:
                raise _Usage()
        i += 1
    return opts, args[i:]


def _alarm(env: ProgramEnv) -> int:
    try:
        with open(env.home.pidfile) as f:
            pid = int(f.read().strip())
        if pid <= 1:  # kill(0) or kill(-1) would alarm a whole group, or everyone
            raise ValueError(pid)
        os.kill(pid, signal.SIGALRM)
    except (OSError, ValueError):
        env.stderr.write(b"sendmail: fatal: qmtwist is not running\n")
        return 111
    return 0


def main(argv: list[str], env: ProgramEnv) -> int:
    name = os.path.basename(argv[0]) if argv else "sendmail"
    if name == "sendmail" and sys.argv and os.path.basename(sys.argv[0]) in _OTHER_NAMES:
        name = os.path.basename(sys.argv[0])  # a HOME/bin/mailq symlink to the launcher
    if argv[1:] == ["--help"]:
        env.stdout.write(USAGE)
        return 0
    if name == "newaliases":
        env.stderr.write(
            b"sendmail: fatal: qmail has no aliases database; use ~alias/.qmail files\n")
        return 100
    try:
        opts, args = _parse(argv[1:])
    except _Usage:
        env.stderr.write(USAGE)
        return 100
    header = False
    sender: str | None = None
    environ = dict(env.environ)
    for opt, value in opts:
        if opt == "t":
            header = True
        elif opt in ("f", "r"):
            sender = "" if value == "<>" else value
        elif opt == "F":
            environ["MAILNAME"] = value
        elif opt == "q":
            return _alarm(env)
        elif opt == "b":
            if value.startswith("m"):
                continue
            if value.startswith("p"):
                return _mailq(env)
            if value.startswith("s"):
                return _smtpd(env)
            env.stderr.write(USAGE)
            return 100
    if name == "mailq":
        return _mailq(env)
    from qmtwist.tools import inject

    injectArgv = ["qmail-inject", "-H" if header else "-a"]
    if sender is not None:
        injectArgv += ["-f", sender]
    injectArgv += ["--", *args]
    return inject.main(injectArgv, evolve(env, environ=environ), requireRecipients=True)


def _mailq(env: ProgramEnv) -> int:
    from qmtwist.tools import qread

    return int(qread.main(["qmail-qread"], env) or 0)


def _smtpd(env: ProgramEnv) -> int:
    environ = dict(env.environ)
    if "PROTO" not in environ:
        environ.update(
            RELAYCLIENT="", DATABYTES="0", PROTO="TCP", TCPLOCALIP="127.0.0.1",
            TCPLOCALHOST="localhost", TCPREMOTEIP="127.0.0.1", TCPREMOTEHOST="localhost",
            TCPREMOTEINFO="sendmail-bs")
    from qmtwist.smtp import stdio

    return int(stdio.main(["qmail-smtpd"], evolve(env, environ=environ)) or 0)
