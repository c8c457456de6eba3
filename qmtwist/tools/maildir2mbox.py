"""
maildir2mbox: move a Maildir's messages into an mbox (docs/behaviour/tools.md 13). Replaces qmail's
maildir2mbox.

Environment C{MAILDIR}, C{MAIL}, C{MAILTMP}. Under an exclusive lock on C{MAIL}, C{MAIL} is
copied to C{MAILTMP}, each message of C{new/} and C{cur/} (oldest first) is appended in mbox form
(From_ line from its Return-Path, C{>From} quoting, an empty line after it), C{MAILTMP} is
fsynced and renamed onto C{MAIL}; only then are the Maildir files removed. Any error: 111 and
nothing removed.
"""

from __future__ import annotations

import fcntl
import os
import re

from qmtwist.received import ctime
from qmtwist.tools.base import ProgramEnv

FATAL = "maildir2mbox: fatal: "
_FROM = re.compile(rb"^>*From ")


class _Fail(Exception):
    pass


def _messages(maildir: str) -> list[tuple[float, str]]:
    found = []
    for sub in ("new", "cur"):
        for name in os.listdir(os.path.join(maildir, sub)):
            if name.startswith("."):
                continue
            digits = re.match(r"\d+", name)
            path = os.path.join(sub, name)
            when = int(digits.group()) if digits else os.stat(os.path.join(maildir, path)).st_mtime
            found.append((when, path))
    found.sort()
    return found


def mboxEntry(data: bytes, when: float) -> bytes:
    """One message in mbox form, as qmail's maildir2mbox writes it."""
    lines = data.split(b"\n")
    ufline = b"From XXX "
    first = lines[0] + b"\n" if len(lines) > 1 else b""
    if first.startswith(b"Return-Path: <"):
        if first[14:15] == b">":
            ufline = b"From MAILER-DAEMON "
        else:
            ufline = b"From " + first[14:-2].replace(b" ", b"-").replace(b"\t", b"-") + b" "
    out = [ufline + ctime(when) + b"\n"]
    if lines[-1] == b"":
        lines.pop()  # a last line without LF gets one, as qmail's reader does
    for line in lines:
        out.append((b">" if _FROM.match(line) else b"") + line + b"\n")
    out.append(b"\n")
    return b"".join(out)


def main(argv: list[str], env: ProgramEnv) -> int:
    if argv[1:] == ["--help"]:
        env.stdout.write(b"maildir2mbox: usage: MAILDIR=dir MAIL=mbox MAILTMP=tmp maildir2mbox\n")
        return 0
    values = {}
    for name in ("MAILDIR", "MAIL", "MAILTMP"):
        if not env.environ.get(name):
            env.warn(f"{FATAL}{name} not set")
            return 111
        values[name] = env.environ[name]
    maildir, mbox, mboxtmp = values["MAILDIR"], values["MAIL"], values["MAILTMP"]
    old = os.umask(0o077)
    try:
        return _run(env, maildir, mbox, mboxtmp)
    except _Fail as e:
        env.warn(f"{FATAL}{e}")
        return 111
    finally:
        os.umask(old)


def _run(env: ProgramEnv, maildir: str, mbox: str, mboxtmp: str) -> int:
    try:
        messages = _messages(maildir)
    except OSError as e:
        raise _Fail(f"unable to scan $MAILDIR: {e.strerror}")
    if not messages:
        return 0
    try:
        lockFd = os.open(mbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        fcntl.flock(lockFd, fcntl.LOCK_EX)
    except OSError as e:
        raise _Fail(f"unable to lock {mbox}: {e.strerror}")
    try:
        try:
            with open(mbox, "rb") as f:
                old = f.read()
        except OSError as e:
            raise _Fail(f"unable to read {mbox}: {e.strerror}")
        try:
            out = open(mboxtmp, "wb")
        except OSError as e:
            raise _Fail(f"unable to create {mboxtmp}: {e.strerror}")
        with out:
            try:
                out.write(old)
                for when, path in messages:
                    try:
                        with open(os.path.join(maildir, path), "rb") as f:
                            data = f.read()
                    except OSError as e:
                        raise _Fail(f"unable to read $MAILDIR/{path}: {e.strerror}")
                    out.write(mboxEntry(data, when))
                out.flush()
                os.fsync(out.fileno())
            except OSError as e:
                raise _Fail(f"unable to write to {mboxtmp}: {e.strerror}")
        try:
            os.rename(mboxtmp, mbox)
        except OSError as e:
            raise _Fail(f"unable to move {mboxtmp} to {mbox}: {e.strerror}")
    finally:
        os.close(lockFd)
    for _, path in messages:
        try:
            os.unlink(os.path.join(maildir, path))
        except OSError as e:
            env.warn(f"maildir2mbox: warning: $MAILDIR/{path} will be delivered twice; "
                     f"unable to unlink: {e.strerror}")
    return 0
