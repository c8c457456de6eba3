"""
Preprocessing (qmail-send's todo pass): C{todo/N} -> C{info/}, C{local/}, C{remote/}.

L{resolveRecipient} is docs/behaviour/queue.md 3.1 (envnoathost, percenthack, locals,
virtualdomains) as a pure function; L{writeFiles} writes one message's files from its envelope;
L{preprocessBatch} does that for several todo entries on a thread (numbers from C{lock/trigger},
the 25-minute scan, recovery), with one shared directory sync, before any todo entry is removed.
Messages committed by the daemon's own injector are preprocessed in their commit round instead
(L{qmtwist.queue.handoff}, docs/behaviour/queue.md 5.11).
"""

from __future__ import annotations

import os

from attrs import frozen

from qmtwist.address import splitAddress
from qmtwist.control import Control
from qmtwist.durable import writeAll
from qmtwist.queue.envelope import CorruptQueueFile, decodeTodo, encodeChannel, encodeInfo
from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.store import Syncer, stampOf


def _virtualKeys(domain: bytes) -> list[bytes]:
    keys = [domain]
    i = domain.find(b".")
    while i != -1:
        keys.append(domain[i:])
        i = domain.find(b".", i + 1)
    keys.append(b"")
    return keys


def resolveRecipient(control: Control, address: bytes) -> tuple[str, bytes]:
    """
    Decide the channel of one envelope recipient and rewrite it (docs/behaviour/queue.md 3.1).

    @return: C{("local"|"remote", address)}.
    """
    if b"@" not in address:
        address = address + b"@" + control.envnoathost
    local, domain = splitAddress(address)
    while domain.lower() in control.percenthack and b"%" in local:
        i = local.rfind(b"%")
        local, domain = local[:i], local[i + 1:]
        address = local + b"@" + domain
    lowered = domain.lower()
    if lowered in control.locals:
        return "local", address
    vd = control.virtualdomains
    whole = address.lower()
    if whole in vd:
        value = vd[whole]
    else:
        for key in _virtualKeys(lowered):
            if key in vd:
                value = vd[key]
                break
        else:
            return "remote", address
    if not value:
        return "remote", address
    return "local", value + b"-" + address


def unprefix(control: Control, address: bytes) -> bytes:
    """The recipient as the sender wrote it: the virtualdomains prefix removed (docs/behaviour/queue.md
    5.7)."""
    local, domain = splitAddress(address)
    if domain.lower() in control.locals:
        return address
    for key in _virtualKeys(domain.lower()):
        if key in control.virtualdomains:
            prefix = control.virtualdomains[key] + b"-"
            if prefix and address.startswith(prefix) and len(prefix) > 1:
                return address[len(prefix):]
            return address
    return address


@frozen
class Preprocessed:
    """A message whose todo entry became info/local/remote files."""

    id: int
    sender: bytes
    uid: int
    qp: int
    size: int
    birth: float
    stamp: str
    local: tuple[bytes, ...]
    remote: tuple[bytes, ...]


@frozen
class Problem:
    """A todo entry that could not be preprocessed now; C{line} is qmail's warning."""

    id: int
    line: str
    retry: bool


def _writeSynced(path: str, data: bytes, syncer: Syncer) -> float:
    """Write C{path} afresh (fsynced unless one syncfs will cover it); return its mtime."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        writeAll(fd, data)
        if not syncer.canGroup:
            syncer.fsync(fd)
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)


def writeFiles(
    layout: QueueLayout, n: int, sender: bytes, recipients: tuple[bytes, ...],
    control: Control, syncer: Syncer, dirs: set[str],
) -> tuple[tuple[bytes, ...], tuple[bytes, ...], float]:
    """
    Write message C{n}'s C{info/}, C{local/} and C{remote/} files from its envelope
    (docs/behaviour/queue.md 5.5): each recipient classified and rewritten by 3.1; a channel
    without recipients gets no file and a stale one of an earlier message with this number is
    removed, as is a stale C{bounce/N}. Nothing is made durable here except, without syncfs,
    each file's own data: the directories touched go into C{dirs}, for the caller's sync.

    @return: the local and remote addresses and the message's birth (the info file's mtime).
    @raise OSError: a file could not be written or removed.
    """
    channels: dict[str, list[bytes]] = {"local": [], "remote": []}
    for r in recipients:
        channel, address = resolveRecipient(control, r)
        channels[channel].append(address)
    info = layout.info(n)
    birth = _writeSynced(info, encodeInfo(sender), syncer)
    dirs.add(os.path.dirname(info))
    for name, addresses in channels.items():
        path = layout.channel(name, n)
        if addresses:
            _writeSynced(path, encodeChannel(addresses), syncer)
            dirs.add(os.path.dirname(path))
        else:
            # a stale file of an earlier message with this inode number must not
            # come back with its recipients
            try:
                os.unlink(path)
                dirs.add(os.path.dirname(path))
            except FileNotFoundError:
                pass
    try:
        os.unlink(layout.bounce(n))
        dirs.add(layout.sub("bounce"))
    except FileNotFoundError:
        pass
    return tuple(channels["local"]), tuple(channels["remote"]), birth


def messStamp(layout: QueueLayout, n: int) -> tuple[str, int]:
    """The message's stamp (unique for ever: mtime in ns and inode) and its size."""
    st = os.stat(layout.mess(n))
    return stampOf(st, n), st.st_size


def preprocessBatch(
    layout: QueueLayout, ids: list[int], control: Control, syncer: Syncer
) -> list[Preprocessed | Problem]:
    """
    Preprocess todo entries C{ids}; runs on a thread.

    Every info/local/remote file and their directories are durable before any todo entry is
    removed, so a crash at any point leaves the todo entry to be preprocessed again.
    """
    results: list[Preprocessed | Problem] = []
    done: list[Preprocessed] = []
    dirs: set[str] = set()
    for n in ids:
        todo = layout.todo(n)
        try:
            with open(todo, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        except OSError:
            results.append(Problem(n, f"warning: unable to open todo/{n}", True))
            continue
        try:
            env = decodeTodo(data)
        except (CorruptQueueFile, ValueError):
            results.append(Problem(n, f"warning: unknown record type in todo/{n}", False))
            continue
        try:
            stamp, size = messStamp(layout, n)
        except FileNotFoundError:
            # Never committed (an injector crashed between its link and its sync).
            for p in (todo, layout.intd(n)):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
            continue
        try:
            local, remote, birth = writeFiles(layout, n, env.sender, env.recipients, control,
                                              syncer, dirs)
        except OSError:
            results.append(Problem(n, f"warning: trouble writing to info/{n}", True))
            continue
        done.append(Preprocessed(n, env.sender, env.uid, env.qp, size, birth, stamp, local,
                                 remote))
    if done:
        try:
            if syncer.canGroup:
                syncer.syncFilesystem(layout.path)
            else:
                syncer.syncDirs(dirs)
        except OSError:
            return results + [
                Problem(p.id, f"warning: trouble fsyncing info/{p.id}", True) for p in done]
        for p in done:
            for path in (layout.todo(p.id), layout.intd(p.id)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        try:
            syncer.syncDirs([layout.sub("todo")])
        except OSError:
            pass
    return results + list(done)
