"""
Injection into qmail's queue: the synchronous steps of qmail-queue (docs/behaviour/queue.md 5.1-5.4).

A message goes C{pid/} -> C{mess/N/<inode>} (named by its inode) -> envelope in C{intd/<inode>}
-> hard link C{todo/<inode>}, the commit point. L{commitRound} finishes several messages at once
so that they share the directory syncs (group commit); the daemon runs it on a thread
(L{qmtwist.queue.commit}). The public ways in: L{writeMessage} streams a message and its envelope
into a L{PendingMessage} (committed later, as the daemon's bounces are), and L{injectStream} and
L{inject} (qmail-queue and the tools) stream one and run a round of one. Every sync goes
through a L{Syncer}, which counts them.

Durability order: message and envelope files are fsynced before the todo link exists, and the
directory entries (C{mess/N}, C{todo}) are synced before anyone is told "queued". C{intd/} needs
no directory sync: the todo link names the same inode, and intd entries are scratch. A forward
queued by local delivery also gets its C{fwd/} record (L{qmtwist.queue.fwd}) between the two:
after its files are durable, before its todo link.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Callable, Iterable, Iterator, Protocol

from attrs import define, field, frozen

from qmtwist.durable import canSyncFilesystem, syncFilesystem, writeAll
from qmtwist.errors import (
    QQ_INTD, QQ_MESS, QQ_PID, QQ_QUEUE_DIR, QQ_READ_ERROR, QQ_TODO, QQ_WRITE_ERROR, QueueError)
from qmtwist.queue import fwd
from qmtwist.queue.commitround import commitRound, readQueueExtra
from qmtwist.queue.envelope import Envelope, checkAddress, encodeTodo
from qmtwist.queue.layout import QueueLayout
from qmtwist.received import queueReceived

__all__ = ["PendingMessage", "Queued", "Syncer", "commitRound", "inject", "injectStream",
           "pokeTrigger", "readQueueExtra", "writeMessage"]
#: C{(sender, recipients)}, asked for once the message bytes are all written.
EnvelopeSource = Callable[[], tuple[bytes, list[bytes]]]


@frozen
class Queued:
    """What an injector learns on success: the message number, its qp, and when."""

    id: int
    qp: int
    time: float


@define
class Syncer:
    """
    Makes files and directory entries durable, and counts every sync call it makes.

    With C{syncfs} (Linux) a round whose entries span several directories uses one C{syncfs} of
    the queue's filesystem for all of them instead of one fsync per directory.
    """

    useSyncfs: bool = True
    fileSyncs: int = 0
    dirSyncs: int = 0
    fsSyncs: int = 0
    _fds: dict[str, int] = field(factory=dict, repr=False, eq=False)
    # the counts are exact although two rounds may sync at once (qmtwist.queue.commit)
    _lock: threading.Lock = field(factory=threading.Lock, repr=False, eq=False)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)
        with self._lock:
            self.fileSyncs += 1

    @property
    def canGroup(self) -> bool:
        """Whether one L{syncFilesystem} can stand for the fsyncs of many files."""
        return self.useSyncfs and canSyncFilesystem()

    def watch(self, path: str) -> int:
        """
        Keep a descriptor of C{path} open for L{syncFilesystem}: syncfs(2) reports a writeback
        error of the filesystem that happened since the previous call on the same descriptor
        (Linux 5.8+), so holding it from before the first write means no error goes unseen.
        """
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        return fd

    def syncFilesystem(self, path: str) -> None:
        """syncfs(2): file data and directory entries of the whole filesystem, in one call."""
        syncFilesystem(self.watch(path))
        with self._lock:
            self.fsSyncs += 1

    def syncDirs(self, paths: Iterable[str]) -> None:
        paths = sorted(set(paths))
        if self.canGroup and len(paths) > 1:
            self.syncFilesystem(paths[0])
            return
        for p in paths:
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
                with self._lock:
                    self.dirSyncs += 1
            finally:
                os.close(fd)

    @property
    def total(self) -> int:
        return self.fileSyncs + self.dirSyncs + self.fsSyncs

    def close(self) -> None:
        """Let go of the descriptors L{watch} keeps."""
        fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)




def stampOf(st: os.stat_result, n: int) -> str:
    """
    A message's stamp from its mess file's status: unique for ever (mtime in microseconds and
    inode), the key of its forward records and hold marker (docs/behaviour/queue.md 5.10).
    """
    return f"{st.st_mtime_ns // 1000}.P{n}"


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class PendingMessage:
    """
    One message being written into C{mess/}; not visible to the queue service until committed.

    @ivar id: the message number (inode of the mess file).
    """

    def __init__(self, layout: QueueLayout, qp: int, how: bytes, uid: int, now: float) -> None:
        self.layout = layout
        self.qp = qp
        self.uid = uid
        self.time = now
        self.size = 0
        self.envelope: Envelope | None = None
        # set by finishFiles: the envelope as committed (queueextra added), and the mess
        # file's stamp and size from an fstat of its descriptor (the in-round preprocessing,
        # docs/behaviour/queue.md 5.11, needs no stat of its own)
        self.committed: Envelope | None = None
        self.stamp = ""
        self.messSize = 0
        self._linked = False
        # a forward's delivery key and, once written, its fwd/ record (docs/behaviour/queue.md 5.10)
        self.onceKey: str | None = None
        self.record: str | None = None
        pidPath = layout.sub("pid", f"{os.getpid()}.{qp}.{time.monotonic_ns()}")
        try:
            self._fd = os.open(pidPath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise QueueError(QQ_PID if e.errno != errno.ENOENT else QQ_QUEUE_DIR, str(e))
        try:
            self.id = os.fstat(self._fd).st_ino
            self.messPath = layout.mess(self.id)
            try:
                os.link(pidPath, self.messPath)
            except FileExistsError:
                # A stale entry from a crash: a live mess file would own this inode.
                _unlink(self.messPath)
                os.link(pidPath, self.messPath)
        except OSError as e:
            os.close(self._fd)
            _unlink(pidPath)
            raise QueueError(QQ_MESS, str(e))
        _unlink(pidPath)
        try:
            self.write(queueReceived(qp, how, now), count=False)
        except QueueError:
            self.discard()
            raise

    def write(self, data: bytes, count: bool = True) -> None:
        """@raise QueueError: 53 on a write error such as a full disk."""
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError as e:
            raise QueueError(QQ_WRITE_ERROR, str(e))
        if count:
            self.size += len(data)

    def setEnvelope(self, sender: bytes, recipients: list[bytes]) -> None:
        """Validate the envelope now, so a bad address fails before any sync (91 or 11)."""
        checkAddress(sender)
        for r in recipients:
            checkAddress(r)
        self.envelope = Envelope(sender, tuple(recipients), self.uid, self.qp)

    def finishFiles(self, syncer: Syncer, extra: list[bytes]) -> None:
        """Sync the message, write and sync the envelope (thread side of a round)."""
        assert self.envelope is not None
        env = self.envelope
        if extra:
            env = Envelope(env.sender, tuple(extra) + env.recipients, env.uid, env.qp)
        data = encodeTodo(env)
        self.committed = env
        group = syncer.canGroup
        try:
            if not group:
                syncer.fsync(self._fd)
            st = os.fstat(self._fd)
            self.stamp, self.messSize = stampOf(st, self.id), st.st_size
            os.close(self._fd)
            self._fd = -1
        except OSError as e:
            raise QueueError(QQ_WRITE_ERROR, str(e))
        intd = self.layout.intd(self.id)
        try:
            try:
                fd = os.open(intd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                _unlink(intd)
                fd = os.open(intd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            raise QueueError(QQ_INTD, str(e))
        try:
            writeAll(fd, data)
            if not group:
                syncer.fsync(fd)
        except OSError as e:
            raise QueueError(QQ_WRITE_ERROR, str(e))
        finally:
            os.close(fd)

    def linkTodo(self) -> None:
        todo = self.layout.todo(self.id)
        try:
            try:
                os.link(self.layout.intd(self.id), todo)
            except FileExistsError:
                _unlink(todo)
                os.link(self.layout.intd(self.id), todo)
        except OSError as e:
            raise QueueError(QQ_TODO, str(e))
        self._linked = True

    def discard(self) -> None:
        """Remove every file of this message (before it was acknowledged)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.record is not None:
            # The record is the forward's commit point: it goes first, durably. If it cannot,
            # the files stay and recovery completes the commit the record stands for.
            if not fwd.removeRecord(self.record):
                return
            self.record = None
        if self._linked:
            _unlink(self.layout.todo(self.id))
        _unlink(self.layout.intd(self.id))
        _unlink(self.messPath)

    def queued(self) -> Queued:
        return Queued(self.id, self.qp, self.time)


def pokeTrigger(layout: QueueLayout) -> None:
    """Wake a queue service in another process through C{lock/trigger} (never blocks)."""
    try:
        fd = os.open(layout.trigger, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, b"\0")
    except OSError:
        pass
    finally:
        os.close(fd)


def writeMessage(
    layout: QueueLayout, chunks: Iterable[bytes], envelope: EnvelopeSource, how: bytes,
    uid: int, qp: int, now: float,
) -> PendingMessage:
    """
    Stream a message into C{mess/} and validate its envelope, without committing it: the
    caller commits it with L{commitRound} (or through the daemon's injector) or discards it.

    @param chunks: the message bytes, read one chunk at a time (memory does not grow with the
        message); an error raised while reading them removes the message.
    @param envelope: asked for once the bytes are written (qmail-queue reads descriptor 1 only
        after descriptor 0 ended, docs/behaviour/queue.md 5.3).
    @raise QueueError: nothing is left in the queue.
    """
    p = PendingMessage(layout, qp, how, uid, now)
    try:
        for chunk in chunks:
            p.write(chunk)
        sender, recipients = envelope()
        p.setEnvelope(sender, recipients)
    except BaseException:
        p.discard()
        raise
    return p


class Readable(Protocol):
    """What a message is read from: a binary file, or a stream standing in for one."""

    def read(self, n: int = -1, /) -> bytes:
        """Up to C{n} bytes (all that is left when C{n} < 0)."""


def readChunks(source: Readable | int, size: int = 65536) -> Iterator[bytes]:
    """
    The bytes of a file object or a descriptor, C{size} at a time, to the end.

    @raise QueueError: 54 on a read error.
    """
    while True:
        try:
            chunk = os.read(source, size) if isinstance(source, int) else source.read(size)
        except OSError as e:
            raise QueueError(QQ_READ_ERROR, str(e))
        if not chunk:
            return
        yield chunk


def injectStream(
    layout: QueueLayout,
    chunks: Iterable[bytes],
    envelope: EnvelopeSource,
    how: bytes,
    uid: int | None = None,
    qp: int | None = None,
    controlDir: str | None = None,
    syncer: Syncer | None = None,
) -> Queued:
    """
    Queue one message synchronously, streamed (what C{qmail-queue} does): L{writeMessage},
    then a commit round of one, then a byte to C{lock/trigger}.

    @raise QueueError: nothing was queued.
    """
    own = syncer is None
    syncer = syncer or Syncer()
    try:
        if syncer.canGroup:
            try:
                syncer.watch(layout.path)
            except OSError as e:
                raise QueueError(QQ_QUEUE_DIR, str(e))
        p = writeMessage(layout, chunks, envelope, how, os.getuid() if uid is None else uid,
                         os.getpid() if qp is None else qp, time.time())
        failed = commitRound([p], syncer, controlDir)
    finally:
        if own:
            syncer.close()  # the descriptor watch() kept (one per call would leak)
    if p.id in failed:
        raise failed[p.id]
    pokeTrigger(layout)
    return p.queued()


def inject(
    layout: QueueLayout,
    sender: bytes,
    recipients: list[bytes],
    message: bytes | Readable,
    how: bytes,
    uid: int | None = None,
    qp: int | None = None,
    controlDir: str | None = None,
    syncer: Syncer | None = None,
) -> Queued:
    """
    Queue one message synchronously, its envelope known at the start; used by tools and
    children (L{injectStream}).

    @raise QueueError: nothing was queued.
    """
    chunks = [message] if isinstance(message, bytes) else readChunks(message)
    return injectStream(layout, chunks, lambda: (sender, recipients), how, uid, qp,
                        controlDir, syncer)
