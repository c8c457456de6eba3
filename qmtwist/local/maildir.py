"""
Maildir delivery (qmail-local's maildir.c, docs/behaviour/local.md 4.8), synchronous: run it on a thread or in
the per-user helper child.

File names [qmtwist]: docs/behaviour/local.md 4.8 suggests C{⟨sec⟩.M⟨usec⟩P⟨pid⟩Q⟨counter⟩.⟨host⟩}. A pid is
not
stable across restarts, so when the delivery has a stable key (L{qmtwist.delivery.DeliveryRequest.
uniqueKey}, built from the queued message's stamp and the recipient position) the name is
C{⟨sec⟩.M⟨usec⟩K⟨key⟩L⟨line⟩.⟨host⟩}, where C{line} is the number of the C{.qmail} line (two
Maildir lines of one file stay two copies). Before writing a repeated delivery, C{new/} and
C{cur/} are searched for a name containing C{K⟨key⟩L⟨line⟩.} (with any C{:2,...} suffix); if
one is found the delivery succeeds without writing (exactly once, docs/behaviour/local.md 4.8 item 4).
Without a key (standalone use) the name is the shape of docs/behaviour/local.md 4.8 with the pid and a
counter.
No part of a recipient address ever enters a name: the key is made of digits and C{.Q} only,
and anything else is replaced by C{_}.
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import socket
import stat
import time
from typing import Callable, Iterable, Sequence

from qmtwist.durable import syncDir, writeAll
from qmtwist.errors import TemporaryFailure

CHDIR = "Unable to chdir to maildir. (#4.2.1)"
TEMP = "Temporary error on maildir delivery. (#4.3.0)"
TIMEOUT = "Timeout on maildir delivery. (#4.3.0)"

_counter = itertools.count(1)
_UNSAFE = re.compile(rb"[^A-Za-z0-9._-]")


def hostPart(hostname: str | None = None) -> bytes:
    """The host name as a Maildir name part: C{/} as C{\\057}, C{:} as C{\\072}."""
    h = os.fsencode(hostname if hostname is not None else socket.gethostname())
    return h.replace(b"/", b"\\057").replace(b":", b"\\072")


#: (monotonic time of the lookup, the host part) of the last L{currentHostPart} lookup
_hostCache: tuple[float, bytes] | None = None
#: Seconds a looked-up host name serves (docs/behaviour/local.md 4.8).
HOST_INTERVAL = 1.0


def currentHostPart(clock: Callable[[], float] = time.monotonic) -> bytes:
    """L{hostPart} of the system's host name, looked up at most once every L{HOST_INTERVAL}
    seconds (one C{uname} call, not one per delivery)."""
    global _hostCache
    now = clock()
    cached = _hostCache
    if cached is not None and 0 <= now - cached[0] < HOST_INTERVAL:
        return cached[1]
    h = hostPart()
    _hostCache = (now, h)
    return h


def keyTag(key: str, line: int) -> bytes:
    """The stable part of a keyed name: C{K⟨key⟩L⟨line⟩.}"""
    return b"K" + _UNSAFE.sub(b"_", key.encode("ascii", "replace")) + b"L%d." % line


def uniqueName(now: float, tag: bytes | None, host: bytes) -> bytes:
    """A new file name (see the module docstring)."""
    sec = int(now)
    usec = int((now - sec) * 1e6)
    if tag is None:
        return b"%d.M%dP%dQ%d.%s" % (sec, usec, os.getpid(), next(_counter), host)
    return b"%d.M%d%s%s" % (sec, usec, tag, host)


def findEarlier(maildir: bytes, tag: bytes) -> bytes | None:
    """The name of an earlier copy with this tag in C{new/} or C{cur/}, if any."""
    for sub in (b"new", b"cur"):
        try:
            names = os.listdir(os.path.join(maildir, sub))
        except FileNotFoundError:
            continue
        for n in names:
            if tag in n.split(b":", 1)[0]:
                return os.path.join(sub, n)
    return None


def sameContent(path: bytes, data: Iterable[bytes]) -> bool:
    """
    Whether the file at C{path} holds exactly the bytes of C{data}, read piece by piece (never
    whole). An earlier copy whose data a crash cut short (its name reached the disk before its
    data did, docs/behaviour/local.md 4.8.1) does not count as that delivery.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        for piece in data:
            view = memoryview(piece)
            while view:
                got = os.read(fd, len(view))
                if not got or got != view[:len(got)]:
                    return False
                view = view[len(got):]
        return os.read(fd, 1) == b""
    except OSError:
        return False
    finally:
        os.close(fd)


def dropLeftovers(maildir: bytes, tag: bytes) -> int:
    """
    Remove the files under C{tmp/} whose name carries C{tag}: what an attempt of this very
    delivery (same message, recipient and line) left when a crash cut it off before its
    unlink. The queue never runs one delivery twice at once, so no live attempt owns them.

    @return: how many were removed.
    """
    tmpDir = os.path.join(maildir, b"tmp")
    removed = 0
    for n in os.listdir(tmpDir):
        if tag in n:
            try:
                os.unlink(os.path.join(tmpDir, n))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def deliver(
    maildir: bytes | str,
    data: Sequence[bytes] | Callable[[], Iterable[bytes]],
    key: str | None = None,
    line: int = 0,
    mayBeRepeat: bool = False,
    now: Callable[[], float] = time.time,
    host: bytes | None = None,
    deadline: float = 86400.0,
    syncNew: bool = True,
    lateDataOn: frozenset[int] = frozenset(),
    distrustEarlier: bool = False,
) -> bytes:
    """
    Write one message into a Maildir.

    @param maildir: the directory (absolute, or relative to the current directory).
    @param data: the byte strings that make the file (RPLINE, DTLINE, message), or a function
        that gives them afresh at each call (a possible repeat reads them twice: once to check
        an earlier copy, once to write).
    @param key: the stable delivery key, or C{None}.
    @param mayBeRepeat: remove this delivery's leftovers in C{tmp/} and look for an earlier
        copy first (only with a key).
    @param syncNew: fsync C{new/} after the link. With C{False} the file's data is durable
        but its name is not yet: the caller must sync the directory of the returned name
        before it reports the delivery done (L{qmtwist.local.dirsync}, docs/behaviour/local.md
        4.8.1). The same holds for an earlier copy that is returned.
    @param lateDataOn: devices (C{st_dev}) whose filesystems the caller syncs whole: with
        C{syncNew} C{False} and the Maildir on one of them, the file is not fsynced either and
        neither its data nor its name is durable yet; the caller makes both durable with one
        C{syncfs(2)} before it reports the delivery done (docs/behaviour/local.md 4.8.1).
    @param distrustEarlier: a sync of an earlier attempt failed: an earlier copy in C{new/}
        is removed and written again, whatever it holds (its pages may be cached but not on
        the disk).
    @return: the name under C{new/} (or of the earlier copy, C{new/...} or C{cur/...}).
    @raise TemporaryFailure: with qmail's texts.
    """
    md = os.fsencode(maildir)
    pieces: Callable[[], Iterable[bytes]] = data if callable(data) else (lambda: data)
    start = now()
    try:
        st = os.stat(md)
        if not os.path.isdir(md) or not os.access(md, os.X_OK):
            raise TemporaryFailure(CHDIR)
    except FileNotFoundError:
        raise TemporaryFailure(CHDIR)
    except PermissionError:
        raise TemporaryFailure(CHDIR)
    except OSError:
        raise TemporaryFailure(TEMP)
    del st
    tmpDir, newDir = os.path.join(md, b"tmp"), os.path.join(md, b"new")
    try:
        tmpStat = os.stat(tmpDir)
    except OSError:
        raise TemporaryFailure(TEMP)
    if not (stat.S_ISDIR(tmpStat.st_mode) and os.path.isdir(newDir)):
        raise TemporaryFailure(TEMP)
    syncData = syncNew or tmpStat.st_dev not in lateDataOn
    tag = keyTag(key, line) if key is not None else None
    if tag is not None and mayBeRepeat:
        try:
            dropLeftovers(md, tag)
            earlier = findEarlier(md, tag)
            if earlier is not None and (distrustEarlier or not sameContent(
                    os.path.join(md, earlier), pieces())):
                # cut short by a crash before its sync: not a copy; one in new/ is ours to
                # remove (nobody was told it was delivered), one in cur/ a reader has taken
                if earlier.startswith(b"new/"):
                    _unlink(os.path.join(md, earlier))
                earlier = None
        except OSError:
            raise TemporaryFailure(TEMP)
        if earlier is not None:
            return earlier
    h = currentHostPart() if host is None else host
    for _ in range(5):
        name = uniqueName(now(), tag, h)
        tmp = os.path.join(tmpDir, name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            time.sleep(0.002)  # a name reused within one microsecond: take the next one
        except OSError:
            raise TemporaryFailure(TEMP)
    else:
        raise TemporaryFailure(TEMP)
    try:
        try:
            writeAll(fd, pieces())
            if syncData:
                os.fsync(fd)
        finally:
            os.close(fd)
        if now() - start > deadline:
            raise TemporaryFailure(TIMEOUT)
        try:
            os.link(tmp, os.path.join(newDir, name))
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
        if syncNew:
            syncDir(newDir)
    except TemporaryFailure:
        _unlink(tmp)
        raise
    except OSError:
        _unlink(tmp)
        raise TemporaryFailure(TEMP)
    _unlink(tmp)
    return os.path.join(b"new", name)


def _unlink(path: bytes) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
