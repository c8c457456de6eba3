"""
Reading one control file without ever blocking on it (docs/behaviour/control.md 2.1): the reader
L{qmtwist.control.load} uses for every file of C{HOME/control}, and the TLS certificate and
header tools use for theirs. A name that is not a regular file is never opened for reading and
counts as missing, with the warning of L{notRegularWarning}.
"""

from __future__ import annotations

import os
import stat


class NotRegularFile(Exception):
    """
    A control file is a FIFO, a device, a directory or a socket: it is never read.

    Not an L{OSError}, so that callers do not take it for an unreadable file (an alert); it
    counts as missing, with the warning of L{notRegularWarning}.
    """


def notRegularWarning(name: str) -> str:
    """The warning for a control file that is not a regular file (docs/behaviour/control.md 2.1)."""
    return f"warning: control/{name} is not a regular file; ignored"


def readControlFile(path: str) -> bytes | None:
    """
    The contents of one control file, or L{None} when it does not exist.

    A FIFO would block the reader forever (and a device may do anything when opened), so the
    file is checked with C{stat} before it is opened, opened with C{O_NONBLOCK} and checked
    again with C{fstat} (it may have been replaced in between) before anything is read.

    @raise NotRegularFile: it exists but is not a regular file.
    @raise OSError: it exists but cannot be read.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise NotRegularFile(path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(path)
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)
