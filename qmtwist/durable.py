"""
The two system-call idioms every durable write here is made of (docs/behaviour/queue.md 5.1):
write a whole buffer to a descriptor, and fsync a directory so that a name made in it (a
create, link or rename) survives a crash. Blocking: callers run them on a thread.
"""

from __future__ import annotations

import ctypes
import os
from typing import Callable, Iterable


def writeAll(fd: int, data: bytes | Iterable[bytes]) -> None:
    """
    Write every byte of C{data} (one buffer or chunks in order) to C{fd}, however the
    kernel splits the writes (a short write is continued, never dropped).

    @raise OSError: the write failed; part of C{data} may be written.
    """
    for chunk in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def syncDir(path: str | bytes) -> None:
    """fsync the directory C{path}: the names made in it are durable when this returns."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _loadSyncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_SYNCFS = _loadSyncfs()


def canSyncFilesystem() -> bool:
    """Whether L{syncFilesystem} is available (Linux's syncfs(2))."""
    return _SYNCFS is not None


def syncFilesystem(fd: int) -> None:
    """
    syncfs(2) of the filesystem holding the open descriptor C{fd}: every file's data and every
    directory entry on it is durable when this returns.

    @raise OSError: the call failed (or reported a writeback error, Linux 5.8+).
    """
    if _SYNCFS is None:
        raise OSError(38, "syncfs is not available")
    if _SYNCFS(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
