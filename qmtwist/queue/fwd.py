"""
Forward records: what makes a C{.qmail} forward exactly-once across a crash
(docs/behaviour/queue.md 5.10, docs/behaviour/local.md 4.6).

A delivery that forwards queues a new message, and only afterwards does the queue service mark
the recipient C{D}. A crash between the two would repeat the delivery and queue the forward a
second time. So the forward's own commit writes C{fwd/<key>}, where C{key} is the delivery's
L{qmtwist.delivery.DeliveryRequest.uniqueKey} (the original message's stamp and the recipient's
position): the record names the forwarded message (number, stamp, qp). It is made durable after
the forwarded message's files and before its todo link, so it is the forward's commit point:

 - no durable record: the forward was not committed (no todo link was ever made); its files are
   orphans (removed after 36 hours) and the repeated delivery forwards again;
 - a durable record: the forward is committed. If the crash came before the todo link,
   L{recoverRecords} makes the link at start-up; a repeated delivery finds the record and does
   not forward again (L{readRecord}).

A record is removed once the recipient's C{D} is durable (L{dropRecord}), and at start-up when
its original message has gone. Numbers are inodes and are reused, so a message is recognised
only by its stamp, never by its number alone.

Everything here blocks: it runs on a thread (the commit round, the service's file operations,
the start-up scan, the local agent's C{runInThread}).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from attrs import frozen

from qmtwist.durable import syncDir, writeAll
from qmtwist.errors import QQ_WRITE_ERROR, QueueError
from qmtwist.queue.layout import QueueLayout

if TYPE_CHECKING:
    from qmtwist.queue.store import PendingMessage, Syncer

FWD_DIR = "fwd"
_SAFE_KEY = re.compile(r"[0-9A-Za-z.]{1,200}")
# <original's stamp: mtime in microseconds, ".P", inode> "Q" <recipient position>
_KEY = re.compile(r"(?P<stamp>[0-9]+\.P(?P<id>[0-9]+))Q[0-9]+")
_RECORD = re.compile(rb"(?P<id>[0-9]+) (?P<stamp>[0-9]+\.P[0-9]+) (?P<qp>[0-9]+)\n")


@frozen
class ForwardRecord:
    """The message a forward queued: its number, its stamp (for ever unique) and its qp."""

    id: int
    stamp: str
    qp: int


def encodeRecord(record: ForwardRecord) -> bytes:
    """C{<id> <stamp> <qp>} and LF, in ASCII."""
    return b"%d %s %d\n" % (record.id, record.stamp.encode("ascii"), record.qp)


def decodeRecord(data: bytes) -> ForwardRecord | None:
    """The record, or L{None} for anything else (a record cut short by a crash)."""
    m = _RECORD.fullmatch(data)
    if m is None:
        return None
    return ForwardRecord(int(m["id"]), m["stamp"].decode("ascii"), int(m["qp"]))


def recordPath(layout: QueueLayout, key: str) -> str:
    """
    C{fwd/<key>}.

    @raise ValueError: C{key} is not a plain file name (never true of a queue stamp).
    """
    if not _SAFE_KEY.fullmatch(key):
        raise ValueError(f"unusable forward key {key!r}")
    return layout.sub(FWD_DIR, key)


def messageStamp(layout: QueueLayout, n: int) -> str | None:
    """The stamp of message C{n} as the queue service computes it; L{None} when it is gone."""
    # preprocess imports store, which imports this module
    from qmtwist.queue.preprocess import messStamp

    try:
        return messStamp(layout, n)[0]
    except FileNotFoundError:
        return None


def readRecord(layout: QueueLayout, key: str) -> ForwardRecord | None:
    """
    The forward already committed for the delivery C{key}, or L{None}.

    @raise OSError: the record exists but cannot be read (the caller defers).
    """
    try:
        with open(recordPath(layout, key), "rb") as f:
            data = f.read(4096)
    except FileNotFoundError:
        return None
    return decodeRecord(data)


def writeRecords(batch: list[PendingMessage], syncer: Syncer,
                 failed: dict[int, QueueError]) -> None:
    """
    The commit round's step between "message files durable" and "todo link": write and fsync
    C{fwd/<key>} for each message of C{batch} that has a C{onceKey}, then fsync C{fwd/}.

    A message whose record cannot be made durable goes into C{failed} (53); its partial
    record is removed with its files (L{qmtwist.queue.store.PendingMessage.discard}).
    """
    written: list[PendingMessage] = []
    for p in batch:
        if p.onceKey is None or p.id in failed:
            continue
        try:
            path = recordPath(p.layout, p.onceKey)
            stamp = messageStamp(p.layout, p.id)
            if stamp is None:
                raise FileNotFoundError(f"mess/{p.id} is gone")
            data = encodeRecord(ForwardRecord(p.id, stamp, p.qp))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            p.record = path
            try:
                writeAll(fd, data)
                syncer.fsync(fd)
            finally:
                os.close(fd)
        except (OSError, ValueError) as e:
            failed[p.id] = QueueError(QQ_WRITE_ERROR, str(e))
            continue
        written.append(p)
    if written:
        try:
            syncer.syncDirs([written[0].layout.sub(FWD_DIR)])
        except OSError as e:
            for p in written:
                failed[p.id] = QueueError(QQ_WRITE_ERROR, str(e))


def removeRecord(path: str) -> bool:
    """
    Remove a record whose forward was not committed, durably (before its message's files go).

    @return: whether it is gone for good; if not, the caller keeps the message's files, so
        that recovery completes the commit the record stands for.
    """
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    try:
        syncDir(os.path.dirname(path))
    except OSError:
        return False
    return True


def dropRecord(layout: QueueLayout, key: str) -> None:
    """
    After the recipient's C{D} is durable: its record is no longer needed. Not synced: a record
    that comes back after a crash is removed at a later start, once its message is gone.
    """
    try:
        os.unlink(recordPath(layout, key))
    except (FileNotFoundError, ValueError):
        pass


def dropMessageRecords(layout: QueueLayout, n: int) -> None:
    """
    When message C{n} is finished (every recipient C{D}): remove any record of its deliveries
    still there, e.g. because a crash lost the unlink after a C{D} mark. Not synced, for the
    same reason as L{dropRecord}. C{fwd/} holds only the few forwards between their commit and
    their C{D} mark, so listing it is cheap.
    """
    stamp = messageStamp(layout, n)
    if stamp is None:
        return
    prefix = stamp + "Q"
    try:
        names = os.listdir(layout.sub(FWD_DIR))
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(prefix):
            _unlink(layout.sub(FWD_DIR, name))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _completeCommit(layout: QueueLayout, record: ForwardRecord) -> bool:
    """
    Link C{todo/} for a forwarded message that has its files but lost its todo link in a
    crash. C{False} when there is nothing to do: it is committed or preprocessed already, or
    it has gone (delivered and removed; its number may now belong to another message).
    """
    if messageStamp(layout, record.id) != record.stamp:
        return False
    if os.path.exists(layout.todo(record.id)) or os.path.exists(layout.info(record.id)):
        return False
    try:
        os.link(layout.intd(record.id), layout.todo(record.id))
    except FileNotFoundError:
        return False
    except FileExistsError:
        return False
    return True


@frozen
class Recovered:
    """
    What L{recoverRecords} found.

    @ivar problems: lines to log.
    @ivar keep: forwarded messages whose commit could not be completed now: not orphans, so
        the orphan sweep leaves them for the next start.
    """

    problems: tuple[str, ...]
    keep: frozenset[int]


def recoverRecords(layout: QueueLayout) -> Recovered:
    """
    At start-up, before any delivery: complete the commit of every recorded forward that a
    crash interrupted between its record and its todo link, and remove records whose original
    message has gone. Creates C{fwd/} when it is missing (a home made before it existed).

    @raise OSError: C{fwd/} cannot be listed or created (the scan is retried).
    """
    d = layout.sub(FWD_DIR)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        os.mkdir(d, 0o700)
        syncDir(layout.path)
        return Recovered((), frozenset())
    problems: list[str] = []
    keep: set[int] = set()
    linked = False
    for name in sorted(names):
        m = _KEY.fullmatch(name)
        if m is None:
            continue  # not a name a delivery makes: left alone
        path = os.path.join(d, name)
        record = None
        try:
            with open(path, "rb") as f:
                record = decodeRecord(f.read(4096))
            if record is None:
                # cut short by a crash: never durable, so no todo link was made after it
                _unlink(path)
                continue
            if _completeCommit(layout, record):
                linked = True
            if messageStamp(layout, int(m["id"])) != m["stamp"]:
                _unlink(path)  # the original has finished: its delivery never runs again
        except OSError as e:
            problems.append(f"warning: trouble recovering fwd/{name}: {e.strerror or e}")
            if record is not None:
                keep.add(record.id)
    if linked:
        syncDir(layout.sub("todo"))
    return Recovered(tuple(problems), frozenset(keep))
