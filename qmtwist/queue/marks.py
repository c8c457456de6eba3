"""
Per-message marks kept beside qmail's queue, outside its commit story
(docs/behaviour/queue-control.md 17.4, 17.7): hold markers and deferral notes.

C{hold/N} holds message N: the queue service starts no delivery pass for it until it is released.
The marker is durable (its file and the directory are fsynced before C{qmtwist ctl hold} answers),
so a hold survives a crash or a restart. It holds the message's stamp (the mess file's mtime and
inode, as C{fwd/} records do): numbers are inodes and are reused, so a marker whose stamp is not
the message's is stale and is ignored (and removed) at start-up.

C{why/N} is a cache: the last deferral text and the next attempt of each recipient of message N,
written (never fsynced) after each pass that ends with deferrals, so that C{mailq} in another
process can show them. It may be missing or one pass old after a crash; nothing depends on it.

Both go with the message (L{qmtwist.queue.clean.removeMessage} removes them before the mess
file). Everything here blocks: it runs on a thread.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.state import Message

HOLD_DIR = "hold"
WHY_DIR = "why"


def _syncDir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hold(layout: QueueLayout, n: int, stamp: str) -> None:
    """Write C{hold/N} (the message's stamp) and make it durable."""
    path = layout.sub(HOLD_DIR, n)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, stamp.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _syncDir(layout.sub(HOLD_DIR))


def release(layout: QueueLayout, n: int) -> None:
    """Remove C{hold/N} durably (a missing marker is fine)."""
    try:
        os.unlink(layout.sub(HOLD_DIR, n))
    except FileNotFoundError:
        return
    _syncDir(layout.sub(HOLD_DIR))


def heldStamps(layout: QueueLayout) -> dict[int, str]:
    """Every hold marker: message number -> the stamp it was written for."""
    out: dict[int, str] = {}
    try:
        names = os.listdir(layout.sub(HOLD_DIR))
    except FileNotFoundError:
        return out
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(layout.sub(HOLD_DIR, name), "rb") as f:
                out[int(name)] = f.read().decode("ascii", "replace").strip()
        except OSError:
            continue
    return out


def loadHeld(layout: QueueLayout, stamps: dict[int, str]) -> set[int]:
    """
    The held messages among C{stamps} (number -> stamp of each message in the queue); a marker
    for another message (or none) is stale and removed.
    """
    held = set()
    for n, stamp in heldStamps(layout).items():
        if stamps.get(n) == stamp:
            held.add(n)
        else:
            dropFiles(layout, n)
    return held


def isHeld(layout: QueueLayout, n: int) -> bool:
    """Whether C{hold/N} exists (for C{mailq} reading the queue directly)."""
    return os.path.exists(layout.sub(HOLD_DIR, n))


def writeNote(layout: QueueLayout, n: int, note: dict[str, Any]) -> None:
    """Replace C{why/N} with C{note} (JSON); not fsynced: a cache."""
    path = layout.sub(WHY_DIR, n)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(note, f)
    os.replace(tmp, path)


def readNote(layout: QueueLayout, n: int, stamp: str | None = None) -> dict[str, Any]:
    """
    C{why/N} as written by L{writeNote}, or an empty dict when it is missing, unreadable or
    (given C{stamp}) written for another message.
    """
    try:
        with open(layout.sub(WHY_DIR, n)) as f:
            note = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(note, dict) or (stamp is not None and note.get("stamp") != stamp):
        return {}
    return note


def makeNote(stamp: str, channels: Iterable[tuple[str, float, dict[int, bytes]]]) -> dict[str, Any]:
    """
    The note of one message: for each channel C{(name, next attempt, {position: last deferral
    text})}.
    """
    return {"stamp": stamp, "channels": {
        name: {"next_attempt": when,
               "reasons": {str(p): text.decode("utf-8", "replace") for p, text in reasons.items()}}
        for name, when, reasons in channels}}


def noteOf(m: Message) -> dict[str, Any]:
    """The note of message C{m} as the queue service holds it (L{makeNote})."""
    return makeNote(m.stamp, [(c.name, c.scheduled, c.reasons) for c in m.channels.values()])


def noteFor(note: dict[str, Any], channel: str, position: int) -> tuple[str | None, float | None]:
    """The last deferral text and next attempt a note records for one recipient."""
    ch = note.get("channels", {}).get(channel)
    if not isinstance(ch, dict):
        return None, None
    reason = ch.get("reasons", {}).get(str(position))
    when = ch.get("next_attempt")
    return (reason if isinstance(reason, str) else None,
            float(when) if isinstance(when, (int, float)) else None)


def dropFiles(layout: QueueLayout, n: int, hold: bool = True, why: bool = True) -> None:
    """Remove (with C{hold}) C{hold/N} and (with C{why}) C{why/N}; no sync: the message's own
    removal follows."""
    for d in (HOLD_DIR,) * hold + (WHY_DIR,) * why:
        try:
            os.unlink(layout.sub(d, n))
        except FileNotFoundError:
            pass
