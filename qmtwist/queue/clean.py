"""
Start-up recovery and removal of finished or abandoned files (qmail-clean, docs/behaviour/queue.md 5.10).

Everything here runs on a thread: it scans directories and unlinks files.
"""

from __future__ import annotations

import os
from typing import Iterable

from attrs import frozen

from qmtwist.queue import fwd, marks
from qmtwist.queue.envelope import ChannelEntry, CorruptQueueFile, decodeChannel, decodeInfo
from qmtwist.queue.layout import SPLIT, QueueLayout
from qmtwist.queue.preprocess import messStamp
from qmtwist.queue.state import Message

ORPHAN_AGE = 36 * 3600


@frozen
class LoadedChannel:
    entries: tuple[ChannelEntry, ...]
    scheduled: float


@frozen
class LoadedMessage:
    """A preprocessed message read back from disk at start-up."""

    id: int
    sender: bytes
    birth: float
    stamp: str
    size: int
    channels: dict[str, LoadedChannel]


def _ids(path: str) -> list[int]:
    out: list[int] = []
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return out
    for name in names:
        if name.isdigit():
            out.append(int(name))
    return out


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


#: The files of a message that may be missing when it finishes (all but mess and info), by name.
SideFiles = frozenset[str]
#: "hold" and "fwd" stand for the hold marker and the message's forward records
ALL_SIDE_FILES: SideFiles = frozenset(
    {"local", "remote", "todo", "intd", "bounce", "why", "hold", "fwd"})


def sideFiles(m: Message) -> SideFiles:
    """
    Which side files message C{m} may still have when it finishes (docs/behaviour/queue.md
    5.7): all of them for a message found at start. For one preprocessed by this run: the
    channel files it was given and has not removed yet (L{Message.channelFiles}); not its todo
    and intd entries (preprocessing removed them durably before the message was taken in);
    C{bounce/N} only if this run appended a failure (preprocessing removed any stale one);
    C{why/N} only if this run wrote a note (the removal of an earlier message with this number
    took its note before its mess file freed the number); C{hold/N} only if this run tried to
    hold it; C{fwd/} is looked at only for a message with local recipients. The others are not
    unlinked: no system call that can only fail with ENOENT.
    """
    if m.recovered:
        return ALL_SIDE_FILES
    return frozenset(m.channelFiles) | frozenset(
        name for name, present in (("bounce", m.bounced), ("why", m.noted),
                                   ("hold", m.holdTried), ("fwd", m.hadLocal)) if present)


def removeMessage(layout: QueueLayout, n: int, side: SideFiles = ALL_SIDE_FILES) -> None:
    """
    Remove every file of a finished message (its forward records first, its hold marker and
    deferral note before the mess file frees its number); info goes last. Of the side files,
    only those in C{side} are tried (L{sideFiles}).
    """
    if "fwd" in side:
        fwd.dropMessageRecords(layout, n)
    paths = [where(n) for name, where in (
        ("local", layout.local), ("remote", layout.remote), ("bounce", layout.bounce),
        ("todo", layout.todo), ("intd", layout.intd)) if name in side]
    for path in paths:
        _unlink(path)
    marks.dropFiles(layout, n, hold="hold" in side, why="why" in side)
    for path in (layout.mess(n), layout.info(n)):
        _unlink(path)


def deleteMessage(layout: QueueLayout, n: int) -> None:
    """
    Delete a preprocessed message with no bounce (C{qmtwist ctl delete},
    docs/behaviour/queue-control.md 17.5): the mess file goes first and its directory is synced,
    which is the delete's commit point (a message whose mess file is gone is removed whole by
    L{recover} at the next start, never delivered or bounced); then L{removeMessage}.
    """
    _unlink(layout.mess(n))
    fd = os.open(os.path.dirname(layout.mess(n)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    removeMessage(layout, n)


def loadMessage(layout: QueueLayout, n: int) -> LoadedMessage | None:
    """Read a preprocessed message; L{None} when its mess file is gone (it had finished)."""
    try:
        stamp, size = messStamp(layout, n)
    except FileNotFoundError:
        removeMessage(layout, n)
        return None
    info = layout.info(n)
    with open(info, "rb") as f:
        sender = decodeInfo(f.read())
    birth = os.stat(info).st_mtime
    channels = {}
    for name in ("local", "remote"):
        path = layout.channel(name, n)
        try:
            with open(path, "rb") as f:
                data = f.read()
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            continue
        channels[name] = LoadedChannel(tuple(decodeChannel(data)), mtime)
    return LoadedMessage(n, sender, birth, stamp, size, channels)


@frozen
class Scan:
    todo: tuple[int, ...]
    messages: tuple[LoadedMessage, ...]
    problems: tuple[str, ...]
    held: frozenset[int] = frozenset()  # messages with a valid hold marker (marks.loadHeld)


def recover(layout: QueueLayout, now: float) -> Scan:
    """
    Scan the queue at start-up: forwards whose commit a crash interrupted are completed first
    (L{qmtwist.queue.fwd.recoverRecords}), then todo entries to preprocess, preprocessed
    messages to resume, and orphans older than 36 hours removed.
    """
    forwards = fwd.recoverRecords(layout)
    todo = set(_ids(layout.sub("todo")))
    messages: list[LoadedMessage] = []
    problems: list[str] = list(forwards.problems)
    infos: set[int] = set()
    for i in range(SPLIT):
        for n in _ids(layout.sub("info", i)):
            infos.add(n)
            if n in todo:
                continue
            try:
                m = loadMessage(layout, n)
            except (CorruptQueueFile, ValueError):
                problems.append(f"warning: unknown record type in info/{n}!")
                continue
            except OSError:
                problems.append(f"warning: trouble reading info/{n}; will try again later")
                continue
            if m is not None:
                messages.append(m)
    for i in range(SPLIT):
        for n in _ids(layout.sub("mess", i)):
            if n in todo or n in infos or n in forwards.keep:
                continue
            _removeIfOld(layout.mess(n), now)
    for n in _ids(layout.sub("intd")):
        if n not in todo and n not in forwards.keep:
            _removeIfOld(layout.intd(n), now)
    try:
        for name in os.listdir(layout.sub("pid")):
            _removeIfOld(layout.sub("pid", name), now)
    except FileNotFoundError:
        pass
    held = marks.loadHeld(layout, {m.id: m.stamp for m in messages})
    return Scan(tuple(sorted(todo)), tuple(messages), tuple(problems), frozenset(held))


def _removeIfOld(path: str, now: float) -> None:
    try:
        if os.stat(path).st_mtime < now - ORPHAN_AGE:
            os.unlink(path)
    except FileNotFoundError:
        pass


def listTodo(layout: QueueLayout) -> list[int]:
    """The ids waiting in todo/ (a wake-up from another process's trigger)."""
    return sorted(_ids(layout.sub("todo")))


def writeDone(path: str, offsets: list[int]) -> int:
    """
    Overwrite the C{T} of each recipient at C{offsets} with C{D}, not synced: the caller syncs
    the returned open descriptor's file (or the filesystem) and closes it
    (L{qmtwist.queue.fileops.FileOps.submitDurable}).
    """
    fd = os.open(path, os.O_WRONLY)
    try:
        for off in offsets:
            os.pwrite(fd, b"D", off)
    except BaseException:
        os.close(fd)
        raise
    return fd


def markDone(path: str, offsets: list[int], layout: QueueLayout | None = None,
             forwardKeys: Iterable[str] = ()) -> None:
    """
    Overwrite the C{T} of each recipient at C{offsets} with C{D}, then fsync; then remove the
    C{fwd/} records of C{forwardKeys} (those deliveries' keys), which the durable C{D} makes
    unnecessary: the delivery never runs again.
    """
    fd = writeDone(path, offsets)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if layout is not None:
        for key in forwardKeys:
            fwd.dropRecord(layout, key)
