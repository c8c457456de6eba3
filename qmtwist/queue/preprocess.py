"""
Preprocessing (qmail-send's todo pass): C{todo/N} -> C{info/}, C{local/}, C{remote/}.

L{resolveRecipient} is docs/behaviour/queue.md 3.1 (envnoathost, percenthack, locals, virtualdomains) as a
pure
function; L{preprocessBatch} does the file work for several todo entries on a thread, with one
shared directory sync, before any todo entry is removed.
"""

from __future__ import annotations

import os

from attrs import frozen

from qmtwist.address import splitAddress
from qmtwist.control import Control
from qmtwist.durable import writeAll
from qmtwist.queue.envelope import CorruptQueueFile, decodeTodo, encodeChannel, encodeInfo
from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.store import Syncer


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


def _writeSynced(path: str, data: bytes, syncer: Syncer) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        writeAll(fd, data)
        if not syncer.canGroup:
            syncer.fsync(fd)
    finally:
        os.close(fd)


def messStamp(layout: QueueLayout, n: int) -> tuple[str, int]:
    """The message's stamp (unique for ever: mtime in ns and inode) and its size."""
    st = os.stat(layout.mess(n))
    return f"{st.st_mtime_ns // 1000}.P{n}", st.st_size


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
        channels: dict[str, list[bytes]] = {"local": [], "remote": []}
        for r in env.recipients:
            channel, address = resolveRecipient(control, r)
            channels[channel].append(address)
        try:
            info = layout.info(n)
            _writeSynced(info, encodeInfo(env.sender), syncer)
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
            birth = os.stat(info).st_mtime
        except OSError:
            results.append(Problem(n, f"warning: trouble writing to info/{n}", True))
            continue
        p = Preprocessed(
            n, env.sender, env.uid, env.qp, size, birth, stamp,
            tuple(channels["local"]), tuple(channels["remote"]))
        done.append(p)
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
