"""
The Maildir side of qmail-pop3d (docs/behaviour/pop3.md 10.3): listing, reading and the changes made at QUIT.

Every function here touches the file system and blocks, so the POP3 session runs them with
C{runInThread}. Messages are identified by their path relative to the Maildir (C{new/NAME} or
C{cur/NAME:2,...}); the UIDL is the file name without the directory and without anything from the
first C{:} on, so it survives the new -> cur move and stays the same across sessions.
"""

from __future__ import annotations

import os
import re

from attrs import frozen

#: tmp files not accessed for this long are removed when a session starts [qmail].
TMP_AGE = 36 * 3600

_LEADING = re.compile(rb"^[0-9]*")


class NoMaildir(Exception):
    """The Maildir cannot be entered (C{-ERR this user has no $HOME/Maildir})."""


@frozen
class Message:
    """
    One message of the session's list.

    @ivar path: relative to the Maildir, C{new/NAME} or C{cur/NAME}.
    @ivar uid: the UIDL (bytes).
    @ivar size: the file's size in octets.
    """

    path: str
    uid: bytes
    size: int


def uidOf(name: str) -> bytes:
    """C{1762326189.M1P2.host:2,S} -> C{1762326189.M1P2.host}."""
    return os.fsencode(name).split(b":", 1)[0]


def _order(name: str) -> tuple[int, str]:
    digits = _LEADING.match(os.fsencode(name))
    number = int(digits.group(0)) if digits and digits.group(0) else 0
    return number, name


def scan(maildir: str, now: float) -> list[Message]:
    """
    Start a session: remove stale tmp files, then list C{new/} and C{cur/} oldest first.

    @raise NoMaildir: C{maildir} (or its C{new}/C{cur}) cannot be entered.
    """
    if not os.path.isdir(maildir):
        raise NoMaildir(maildir)
    try:
        tmp = list(os.scandir(os.path.join(maildir, "tmp")))
    except OSError:
        tmp = []
    for entry in tmp:
        try:
            if now - entry.stat(follow_symlinks=False).st_atime > TMP_AGE:
                os.unlink(entry.path)
        except OSError:
            pass
    found: list[tuple[tuple[int, str], Message]] = []
    for sub in ("new", "cur"):
        try:
            entries = list(os.scandir(os.path.join(maildir, sub)))
        except OSError as e:
            raise NoMaildir(maildir) from e
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError:
                continue  # vanished meanwhile
            rel = sub + "/" + entry.name
            found.append((_order(entry.name), Message(rel, uidOf(entry.name), st.st_size)))
    found.sort(key=lambda item: item[0])
    return [m for _, m in found]


def readMessage(maildir: str, message: Message) -> bytes:
    """
    The message's bytes.

    @raise OSError: the file vanished or cannot be read (C{-ERR unable to open that message}).
    """
    with open(os.path.join(maildir, message.path), "rb") as f:
        return f.read()


def transmit(data: bytes, limit: int | None = None) -> bytes:
    """
    qmail-pop3d's C{blast}: every line with CRLF, a leading C{.} doubled, and the terminator
    C{\\r\\n.\\r\\n} after the last line (so the data ends C{\\r\\n\\r\\n.\\r\\n}).

    @param limit: L{None} for RETR; for C{TOP i n}, n: the header, the empty line and the first
        n body lines.
    """
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final LF ends the last line; it does not start another
    out: list[bytes] = []
    inHeader = True
    body = 0
    for line in lines:
        if limit is not None and not inHeader:
            if body >= limit:
                break
            body += 1
        if not line:
            inHeader = False
        elif line[:1] == b".":
            out.append(b".")
        out.append(line)
        out.append(b"\r\n")
    out.append(b"\r\n.\r\n")
    return b"".join(out)


def finish(maildir: str, messages: list[Message], deleted: set[int]) -> bool:
    """
    QUIT: unlink the marked messages, move the others still in C{new/} to C{cur/NAME:2,}.

    @param deleted: indexes into C{messages}.
    @return: whether every unlink succeeded (else C{-ERR unable to unlink all deleted messages}).
    """
    ok = True
    for i, m in enumerate(messages):
        path = os.path.join(maildir, m.path)
        if i in deleted:
            try:
                os.unlink(path)
            except OSError:
                ok = False
        elif m.path.startswith("new/"):
            try:
                os.rename(path, os.path.join(maildir, "cur", m.path[4:] + ":2,"))
            except OSError:
                pass  # "if it fails, bummer" [qmail]
    return ok
