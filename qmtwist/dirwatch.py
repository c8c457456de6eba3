"""
Knowing without a thread job that a directory did not change: Linux inotify for the per-connection
and per-delivery checks of C{control/} and of the rules files (docs/behaviour/control.md 2.4).

L{qmtwist.context.ControlCache.refresh} and L{qmtwist.tcprules.RulesFile.refresh} must see every
edit whose C{write()}, C{rename()}, C{chmod()} or C{unlink()} returned before they were called
(control.md 2.2, "conn" and "deliv"). Their full check (a scan of C{control/}, a stat of the rules
file) runs on a thread. A L{DirWatch} lets them skip it: the kernel queues an inotify event before
such a system call returns, so when L{DirWatch.changed} (a non-blocking C{read()} of the inotify
descriptor, on the reactor thread: no file-system call) finds no event since the last full check
began, the values in force are the files as they are now.

The shape of a full check with a watch::

    token = watch.begin()           # reactor thread: take the events so far, before the scan
    # thread: token.arm() (add the watch when needed), then the scan
    watch.end(token, usable)        # reactor thread: the scan said whether the watch is enough

L{DirWatch.changed} answers "do the full check" (today's behaviour) unless the last full check
armed the watch, found it sufficient (C{usable}) and no event came since it began. It is not
sufficient (control.md 2.4) when inotify is unavailable (one warning, then the stat checks run as
before); when the directory is on a network or FUSE file system or has a mount inside it
(L{mountProblem}, one warning); after C{IN_Q_OVERFLOW}, C{IN_IGNORED}, C{IN_DELETE_SELF},
C{IN_MOVE_SELF} or C{IN_UNMOUNT} (the next full check watches the path again); and while the scan
(L{scanDirectory}, L{fileStamp}) finds a symbolic link, a file with several hard links or one on
another device (changed through another path: no event here), or the directory is a link.

Twisted's L{twisted.internet.inotify.INotify} is not the reader: its C{watch} adds the watch on
the calling thread (a path lookup: not for the reactor thread) and it drops the events of a watch
not registered yet, so an edit made while a watch added on a thread is registered would be lost.
Its ctypes layer, L{twisted.python._inotify}, does C{inotify_init} and C{inotify_add_watch}; the
daemon has one descriptor (L{DirWatches}), read and parsed here.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from typing import Any, Iterable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from zope.interface import implementer

# from linux/inotify.h (as twisted.internet.inotify, which needs no reactor to import)
IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_UNMOUNT, IN_Q_OVERFLOW, IN_IGNORED = (
    0x400, 0x800, 0x2000, 0x4000, 0x8000)
IN_ONLYDIR = 0x01000000

#: every way an admin changes a file in the directory, and the directory's own end
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_CREATE | IN_DELETE | IN_MOVED_FROM
        | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF)
#: events after which the watch no longer tells the whole story
BROKEN = IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT

_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len (struct inotify_event)

#: what a directory scan compares: (name, mtime_ns, size, inode) of each entry
Stamp = tuple[tuple[str, int, int, int], ...]


def scanDirectory(path: str) -> tuple[Stamp, bool]:
    """
    Blocking: the entries of C{path} (each stat-ed, symbolic links followed, so a link's target
    counts) and whether a watch on C{path} sees every change of them: no entry is a symbolic link,
    has more than one hard link or is on another file system (a mount), and C{path} is not a
    symbolic link itself.
    """
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
        here = os.lstat(path)
    except OSError:
        return (), False
    usable = not stat.S_ISLNK(here.st_mode)
    out = []
    for e in entries:
        try:
            st = e.stat()
            if e.is_symlink() or st.st_dev != here.st_dev or (
                    not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1):
                usable = False
            out.append((e.name, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            usable = False  # vanished or unreadable: let the next check look again
    return tuple(out), usable


def fileStamp(path: str, previous: object) -> tuple[object, bool]:
    """
    Blocking: C{(mtime_ns, size, inode)} of C{path} (symbolic links followed), L{None} when it
    is missing, C{previous} when it cannot be stat-ed; and whether a watch on its directory sees
    every change of it (not a symbolic link, one hard link, no mount, the directory not a link).
    """
    here: os.stat_result | None = None
    try:
        here = os.lstat(os.path.dirname(path) or ".")
        st = os.lstat(path)
        usable = not stat.S_ISLNK(here.st_mode) and st.st_dev == here.st_dev
        if stat.S_ISLNK(st.st_mode):
            usable = False
            st = os.stat(path)
    except FileNotFoundError:
        # missing: its creation is an event, if the directory is there and not a link
        return None, here is not None and not stat.S_ISLNK(here.st_mode) and not os.path.lexists(
            path)
    except OSError:
        return previous, False
    return (st.st_mtime_ns, st.st_size, st.st_ino), usable and st.st_nlink <= 1


#: file systems whose files change without a local system call (inotify sees nothing of it)
_REMOTE = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "ceph", "glusterfs", "afs",
                     "lustre", "gfs2", "ocfs2", "virtiofs", "davfs", "coda", "orangefs"})


def mountProblem(path: str, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """
    Blocking: why a watch on the directory C{path} cannot see every change made to its files,
    as far as the mounts tell: it is on a network or FUSE file system (C{"is on nfs4"}), or
    something is mounted inside it (C{"has a mount inside it"}: a bind-mounted file changes
    without events of C{path}). L{None} when neither, or when the mounts cannot be read.
    """
    real = os.path.realpath(path)
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().decode("utf-8", "surrogateescape").splitlines()
    except OSError:
        return None
    best, fsType = "", ""
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split(" ")
        if len(parts) < 5 or not rest:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
        if point.startswith(real.rstrip("/") + "/"):
            return "has a mount inside it"
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, fsType = point, rest.split(" ")[0]
    if fsType in _REMOTE or (fsType.startswith("fuse") and fsType != "fuseblk"):
        return f"is on {fsType}"
    return None


def _reason(e: Exception) -> str:
    """qmail-style reason text: C{Too many open files}, not C{[Errno 24] ...}."""
    return getattr(e, "strerror", None) or str(e) or e.__class__.__name__


@implementer(IReadDescriptor)
class DirWatches(Service):
    """
    The daemon's one inotify descriptor and its watches, made by L{directory}. Opened by the
    first check that needs it; closed when the service stops (afterwards every check is a full
    one). Logs the one warning when inotify is unavailable. The reactor reads the descriptor
    whenever it is readable (so the kernel's queue stays short), and every L{DirWatch.changed}
    reads it too, at once.
    """

    log = Logger(namespace="qmtwist.dirwatch")

    def __init__(self, reactor: IReactorFDSet) -> None:
        self.reactor = reactor
        self.unavailable: str | None = None
        self.closed = False
        self._watches: list[DirWatch] = []
        self._byWd: dict[int, list[DirWatch]] = {}
        self._fd = -1
        self._reading = False
        self._warned = False
        try:  # now (start-up): its import looks for the C library, which may run ldconfig
            from twisted.python import _inotify
            self._inotify: Any = _inotify
        except ImportError as e:  # not Linux, or a C library without inotify
            self._inotify, self.unavailable = None, _reason(e)

    def directory(self, path: str, names: Iterable[str] | None = None) -> DirWatch:
        """
        A watch on the directory C{path}; with C{names}, only events of those entries count
        (and those of the directory itself).
        """
        w = DirWatch(self, path, None if names is None else frozenset(names))
        self._watches.append(w)
        return w

    def descriptor(self) -> int:
        """The inotify descriptor, opened now if need be (reactor thread: no file-system call);
        -1 when inotify is unavailable or the service stopped."""
        if self._fd >= 0 or self.closed:
            return self._fd
        if self.unavailable is None:
            try:
                fd: int = self._inotify.init()
            except Exception as e:  # INotifyError, OSError (EMFILE, ENFILE, ENOMEM)
                self.unavailable = _reason(e)
        if self.unavailable is not None:
            if not self._warned:
                self._warned = True
                self.log.warn("warning: inotify is unavailable ({reason}): control/ and the "
                              "rules files are checked with stat before each connection and "
                              "delivery", reason=self.unavailable)
            return -1
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
        self._fd, self._reading = fd, True
        self.reactor.addReader(self)
        return fd

    def register(self, watch: DirWatch, wd: int) -> None:
        """C{watch}'s events are those of C{wd} from now on (several watches may share one)."""
        watches = self._byWd.setdefault(wd, [])
        if watch not in watches:
            watches.append(watch)

    def stopService(self) -> None:
        super().stopService()
        self.closed = True
        self._close()

    def _close(self) -> None:
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = -1
        self._byWd.clear()
        for w in self._watches:
            w.lost(rearm=True)

    # -- reading ---------------------------------------------------------------------------------

    def drain(self) -> None:
        """Read every pending event now (non-blocking; the reactor thread)."""
        while self._fd >= 0:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                self._close()
                return
            if not data:
                return
            self.events(data)

    def events(self, data: bytes) -> None:
        """Take in a buffer of C{struct inotify_event} records (as read from the descriptor)."""
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size:offset + _EVENT.size + size].split(b"\0", 1)[0]
            offset += _EVENT.size + size
            # a watch being added on a thread may have this wd already: count it in
            pending = [w for w in self._watches if w._wd is None]
            for w in pending:
                w._dirty = True
            if mask & IN_Q_OVERFLOW:  # events were lost: every watch needs a full check
                for w in self._watches:
                    w.lost(rearm=False)
                continue
            watches = self._byWd.get(wd, [])
            if mask & BROKEN:  # the directory is gone, moved or unmounted: watch it anew
                self._byWd.pop(wd, None)
                if not mask & IN_IGNORED:
                    self._inotify.remove(self._fd, wd)  # a moved directory would go on
                for w in watches + pending:
                    w.lost(rearm=True)
                continue
            for w in watches:
                w.event(name)

    def fileno(self) -> int:
        return self._fd

    def doRead(self) -> None:
        """The reactor saw events: take them in now."""
        self.drain()

    def connectionLost(self, reason: Failure) -> None:
        self._reading = False  # the reactor is letting go of us (shutdown)
        self.closed = True
        self._close()

    def logPrefix(self) -> str:
        return "dirwatch"


class Token:
    """One full check's part of a L{DirWatch}: see the module docstring."""

    def __init__(self, inotify: Any, path: str, fd: int, add: bool, forced: bool,
                 epoch: int) -> None:
        self._inotify = inotify
        self.path = path
        self.fd = fd
        self.add = add
        #: events were seen by a valid watch: reread even if the stamps look the same (a
        #: rewrite within the file system's timestamp granularity keeps the mtime)
        self.forced = forced
        self.epoch = epoch
        self.wd: int | None = None
        self.error: str | None = None
        self.mounts: str | None = None

    def arm(self) -> None:
        """Blocking (the check's thread): add the watch when this check has to, and look at
        the mounts then (L{mountProblem})."""
        if not self.add:
            return
        try:
            self.wd = self._inotify.add(self.fd, FilePath(self.path), MASK | IN_ONLYDIR)
        except Exception as e:  # INotifyError (ENOSPC: max_user_watches; ENOENT; EACCES)
            # a missing directory is no news (a rules file may be absent); anything else is
            if os.path.isdir(self.path):
                self.error = _reason(e)
            return
        self.mounts = mountProblem(self.path)


class DirWatch:
    """One directory's watch and what its events say; see the module docstring."""

    def __init__(self, owner: DirWatches, path: str, names: frozenset[str] | None) -> None:
        self.owner = owner
        self.path = path
        self._names = None if names is None else frozenset(os.fsencode(n) for n in names)
        self._wd: int | None = None
        self._valid = False
        self._dirty = False
        self._epoch = 0  # bumped by whatever makes a running check's view of the watch stale
        self._mounts: str | None = None  # mountProblem when the watch was added
        self._warned = False

    def changed(self) -> bool:
        """Whether the caller must run its full check: the watch is not in force, or an event
        came since the last full check began."""
        self.owner.drain()
        return self._dirty or not self._valid

    def begin(self) -> Token:
        """A full check starts: the events so far are its business (forgotten here)."""
        self.owner.drain()
        forced = self._dirty and self._valid
        self._dirty = False
        fd = self.owner.descriptor()
        return Token(self.owner._inotify, self.path, fd, fd >= 0 and self._wd is None, forced,
                     self._epoch)

    def end(self, token: Token, usable: bool) -> None:
        """The full check of C{token} is done; C{usable}: its scan found the watch sufficient."""
        if token.epoch != self._epoch or token.fd != self.owner.fileno() or token.fd < 0:
            self._valid = False  # broken or closed meanwhile: the next check starts afresh
            return
        if token.add:
            if token.wd is None:
                if token.error is not None:
                    self._warnOnce(f"unable to watch {self.path} with inotify ({token.error}):")
                self._valid = False
                return
            self._wd, self._mounts = token.wd, token.mounts
            self.owner.register(self, token.wd)
            if self._mounts is not None:
                self._warnOnce(f"{self.path} {self._mounts}: inotify does not see every change "
                               "there;")
        self._valid = usable and self._wd is not None and self._mounts is None

    def _warnOnce(self, why: str) -> None:
        """The one warning of this watch: C{why} stat checks are used for it instead."""
        if not self._warned:
            self._warned = True
            self.owner.log.warn("warning: {why} it is checked with stat before each connection "
                                "and delivery", why=why)

    def event(self, name: bytes) -> None:
        """An event of this watch's directory, about the entry C{name} (empty: the directory)."""
        if not name or self._names is None or name in self._names:
            self._dirty = True

    def lost(self, rearm: bool) -> None:
        """Events may have been missed: a full check next; with C{rearm}, the watch is gone and
        that check adds it again."""
        self._valid, self._dirty = False, True
        self._epoch += 1
        if rearm:
            self._wd = None
