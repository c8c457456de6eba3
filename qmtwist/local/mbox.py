"""
mbox delivery (qmail-local's mailfile, docs/behaviour/local.md 4.7), synchronous: run it on a thread or in the
per-user helper child.

The file is locked with C{flock} B{and} a POSIX C{fcntl} write lock [qmtwist], so procmail, mutt
and other readers using either kind are excluded. Lock waits poll without blocking the process's
other deliveries for more than one interval, and give up after 30 seconds with qmail's text.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import time
from typing import Callable, Iterable

from qmtwist.durable import writeAll
from qmtwist.errors import TemporaryFailure
from qmtwist.local.message import mboxQuoted

LOCK_TIMEOUT = 30.0


def quote(message: bytes) -> bytes:
    """mboxrd quoting: one C{>} before each line matching C{^>*From }, then the blank line."""
    return b"".join(mboxQuoted([message]))


def lock(fd: int, timeout: float = LOCK_TIMEOUT, clock: Callable[[], float] = time.monotonic,
         sleep: Callable[[float], None] = time.sleep) -> None:
    """
    Take C{flock} and C{fcntl} exclusive locks on C{fd}.

    @raise TemporaryFailure: C{File has been locked for 30 seconds straight. (#4.3.0)}.
    """
    deadline = clock() + timeout
    have = False
    while True:
        try:
            if not have:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                have = True
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except PermissionError:  # EACCES from fcntl on some systems means "held"
            pass
        if clock() >= deadline:
            if have:
                fcntl.flock(fd, fcntl.LOCK_UN)
            raise TemporaryFailure("File has been locked for 30 seconds straight. (#4.3.0)")
        sleep(0.02)


def deliver(path: bytes | str, prefix: Iterable[bytes], message: bytes | Iterable[bytes],
            timeout: float = LOCK_TIMEOUT) -> None:
    """
    Append one message to an mbox file.

    @param path: the file (absolute, or relative to the current directory).
    @param prefix: UFLINE, RPLINE and DTLINE.
    @param message: the message as queued (quoted here), whole or as chunks (streamed: memory
        stays a few chunks whatever the message size).
    @raise TemporaryFailure: with qmail's texts; a partial write is truncated away.
    """
    name = os.fsdecode(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOCTTY, 0o600)
    except OSError as e:
        raise TemporaryFailure(f"Unable to open {name}: {(e.strerror or str(e)).lower()}. (#4.2.1)")
    try:
        lock(fd, timeout)
        try:
            length = os.lseek(fd, 0, os.SEEK_END)
        except OSError as e:
            raise TemporaryFailure(f"Unable to write {name}: {e.strerror}. (#4.3.0)")
        try:
            chunks = [message] if isinstance(message, bytes) else message
            writeAll(fd, itertools.chain(prefix, mboxQuoted(chunks)))
            os.fsync(fd)
        except TemporaryFailure:  # the message could not be read: undo the partial append
            try:
                os.ftruncate(fd, length)
            except OSError:
                pass
            raise
        except OSError as e:
            try:
                os.ftruncate(fd, length)
            except OSError:
                pass
            raise TemporaryFailure(
                f"Unable to write {name}: {(e.strerror or str(e)).lower()}. (#4.3.0)")
    finally:
        os.close(fd)  # releases both locks
