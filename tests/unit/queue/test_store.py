"""Synchronous injection into the queue (docs/behaviour/queue.md 5.1-5.4)."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat
import threading

import pytest

from qmtwist import durable
from qmtwist.durable import canSyncFilesystem
from qmtwist.errors import QueueError
from qmtwist.home import Home
from qmtwist.queue import store
from qmtwist.queue.store import Queued, Syncer, inject, pokeTrigger, readQueueExtra
from qmtwist.received import date822


def readBytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def queueFiles(layout) -> list[str]:
    """Every file under pid/ mess/ intd/ todo/ (what a failed injection must not leave)."""
    out = []
    for top in ("pid", "mess", "intd", "todo"):
        for dirpath, _dirs, files in os.walk(layout.sub(top)):
            out.extend(os.path.join(dirpath, f) for f in files)
    return sorted(out)


@pytest.fixture
def layout(home: Home):
    return home.queue


def test_injectCreatesMessIntdTodo(layout):
    q = inject(layout, b"joe@far.org", [b"a@test.example", b"b@far.org"],
               b"Subject: x\n\nbody\n", b"by uid 1000", uid=1000, qp=4242)
    assert isinstance(q, Queued)
    assert q.qp == 4242
    n = q.id
    assert os.stat(layout.mess(n)).st_ino == n
    assert layout.mess(n) == layout.sub("mess", n % 23, n)
    assert readBytes(layout.mess(n)) == (
        b"Received: (qmail 4242 invoked by uid 1000); " + date822(q.time) + b"\n"
        b"Subject: x\n\nbody\n")
    envelope = b"u1000\0p4242\0Fjoe@far.org\0Ta@test.example\0Tb@far.org\0"
    assert readBytes(layout.todo(n)) == envelope
    assert os.path.samefile(layout.todo(n), layout.intd(n))
    assert queueFiles(layout) == sorted([layout.mess(n), layout.intd(n), layout.todo(n)])
    assert os.listdir(layout.sub("pid")) == []
    assert os.stat(layout.intd(n)).st_mode & 0o777 == 0o600
    assert os.stat(layout.mess(n)).st_mode & 0o777 == 0o644


def test_injectReceivedLineShape(layout):
    q = inject(layout, b"", [b"r@x"], b"", b"from network", uid=0, qp=1)
    line = readBytes(layout.mess(q.id))
    assert line == b"Received: (qmail 1 invoked from network); " + date822(q.time) + b"\n"
    assert readBytes(layout.todo(q.id)) == b"u0\0p1\0F\0Tr@x\0"


def test_injectDefaultsUidAndQpFromProcess(layout):
    q = inject(layout, b"s", [b"r"], b"m\n", b"by uid %d" % os.getuid())
    assert q.qp == os.getpid()
    assert readBytes(layout.todo(q.id)) == b"u%d\0p%d\0Fs\0Tr\0" % (os.getuid(), os.getpid())


def test_injectFromFileObject(layout):
    data = b"x" * 200000 + b"\n"
    q = inject(layout, b"s", [b"r"], io.BytesIO(data), b"by uid 0", uid=0, qp=2)
    mess = readBytes(layout.mess(q.id))
    assert mess.endswith(b"\n" + data)
    assert mess.startswith(b"Received: (qmail 2 invoked by uid 0); ")
    received = b"Received: (qmail 2 invoked by uid 0); " + date822(q.time) + b"\n"
    assert mess == received + data


def test_queueextraRecipientsFirst(layout, home):
    with open(os.path.join(home.control, "queueextra"), "wb") as f:
        f.write(b"log\n# comment\n\narchive@far.org \t\n")
    q = inject(layout, b"s@o", [b"r1@x", b"r2@y"], b"m\n", b"by uid 0", uid=0, qp=3,
               controlDir=home.control)
    assert readBytes(layout.todo(q.id)) == (
        b"u0\0p3\0Fs@o\0Tlog\0Tarchive@far.org\0Tr1@x\0Tr2@y\0")


def test_queueextraIgnoredWithoutControlDir(layout, home):
    with open(os.path.join(home.control, "queueextra"), "wb") as f:
        f.write(b"log\n")
    q = inject(layout, b"s@o", [b"r@x"], b"m\n", b"by uid 0", uid=0, qp=3)
    assert readBytes(layout.todo(q.id)) == b"u0\0p3\0Fs@o\0Tr@x\0"


def test_readQueueExtra(tmp_path):
    assert readQueueExtra(None) == []
    assert readQueueExtra(str(tmp_path)) == []
    (tmp_path / "queueextra").write_bytes(b"a\r\n#x\n\nb\0c\nd")
    assert readQueueExtra(str(tmp_path)) == [b"a", b"d"]


def test_eachInjectionGetsItsOwnNumber(layout):
    ids = {inject(layout, b"s", [b"r"], b"m%d\n" % i, b"by uid 0", uid=0, qp=i).id
           for i in range(5)}
    assert len(ids) == 5
    assert sorted(os.listdir(layout.sub("todo"))) == sorted(str(i) for i in ids)


# --- failures leave nothing -------------------------------------------------------------------


@pytest.mark.parametrize("sender, recipients, code", [
    (b"s", [b"a\0b"], 91),
    (b"s", [b"ok", b"a\nb"], 91),
    (b"s\n", [b"r"], 91),
    (b"s", [b"r" * 1003], 11),
    (b"s" * 1003, [b"r"], 11),
])
def test_badAddressLeavesNothing(layout, sender, recipients, code):
    with pytest.raises(QueueError) as e:
        inject(layout, sender, recipients, b"m\n", b"by uid 0", uid=0, qp=1)
    assert e.value.code == code
    assert queueFiles(layout) == []


class _FakeOs:
    """The C{os} module as qmtwist.queue.store sees it, with some functions replaced."""

    def __init__(self, **replace):
        self.__dict__.update(replace)

    def __getattr__(self, name):
        return getattr(os, name)


def _enospc(*a, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_messageBodyWriteErrorIs53AndLeavesNothing(layout, monkeypatch):
    calls = []
    realWrite = os.write

    def write(fd, data):
        calls.append(fd)
        if len(calls) > 1:      # the queue's Received line is written; the body is not
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return realWrite(fd, data)

    monkeypatch.setattr(store, "os", _FakeOs(write=write))
    monkeypatch.setattr(durable, "os", _FakeOs(write=write))  # store writes through durable
    with pytest.raises(QueueError) as e:
        inject(layout, b"s", [b"r"], b"message\n", b"by uid 0", uid=0, qp=1)
    monkeypatch.undo()
    assert e.value.code == 53
    assert e.value.text == "qq write error or disk full (#4.3.0)"
    assert queueFiles(layout) == []


def test_everyWriteFailsIs53AndLeavesNothing(layout, monkeypatch):
    monkeypatch.setattr(store, "os", _FakeOs(write=_enospc))
    with pytest.raises(QueueError) as e:
        inject(layout, b"s", [b"r"], b"message\n", b"by uid 0", uid=0, qp=1)
    monkeypatch.undo()
    assert e.value.code == 53
    assert queueFiles(layout) == []


def test_envelopeWriteErrorIs53AndLeavesNothing(layout, monkeypatch):
    realWrite = os.write

    def write(fd, data):
        if bytes(data[:1]) == b"u":         # the intd envelope
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return realWrite(fd, data)

    monkeypatch.setattr(store, "os", _FakeOs(write=write))
    monkeypatch.setattr(durable, "os", _FakeOs(write=write))  # store writes through durable
    with pytest.raises(QueueError) as e:
        inject(layout, b"s", [b"r"], b"message\n", b"by uid 0", uid=0, qp=1)
    monkeypatch.undo()
    assert e.value.code == 53
    assert queueFiles(layout) == []


def test_fileFsyncErrorIs53AndLeavesNothing(layout, monkeypatch):
    monkeypatch.setattr(store, "os", _FakeOs(fsync=_enospc))
    with pytest.raises(QueueError) as e:
        inject(layout, b"s", [b"r"], b"message\n", b"by uid 0", uid=0, qp=1,
               syncer=Syncer(useSyncfs=False))
    monkeypatch.undo()
    assert e.value.code == 53
    assert queueFiles(layout) == []


class FailingDirSyncer(Syncer):
    def syncDirs(self, paths):
        raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_messageDirectorySyncFailureIs53AndLeavesNothing(layout):
    # without syncfs the mess/N directories are synced before the todo link: nothing committed
    with pytest.raises(QueueError) as e:
        inject(layout, b"s", [b"r"], b"message\n", b"by uid 0", uid=0, qp=1,
               syncer=FailingDirSyncer(useSyncfs=False))
    assert e.value.code == 53
    assert queueFiles(layout) == []


def test_todoDirectorySyncFailureIs53AndKeepsTheLinkedMessage(layout):
    # after the link the queue service may already be working on it: report 53 and leave it
    # (as qmail-queue: at worst a duplicate, never a loss)
    syncer = FailingDirSyncer()
    if not syncer.canGroup:
        pytest.skip("no syncfs(2) here: the first directory sync is before the link")
    with pytest.raises(QueueError) as e:
        inject(layout, b"s", [b"r"], b"message\n", b"by uid 0", uid=0, qp=1, syncer=syncer)
    assert e.value.code == 53
    [todo] = os.listdir(layout.sub("todo"))
    assert os.path.exists(layout.mess(int(todo)))


def test_messageReadErrorIs54AndLeavesNothing(layout):
    class Broken(io.RawIOBase):
        def readable(self):
            return True

        def read(self, n=-1):
            raise OSError(errno.EIO, "read error")

    with pytest.raises(QueueError) as e:
        inject(layout, b"s", [b"r"], Broken(), b"by uid 0", uid=0, qp=1)
    assert e.value.code == 54
    assert queueFiles(layout) == []


def test_missingQueueIs62(tmp_path):
    from qmtwist.queue.layout import QueueLayout

    with pytest.raises(QueueError) as e:
        inject(QueueLayout(str(tmp_path / "nope")), b"s", [b"r"], b"m", b"by uid 0", uid=0, qp=1)
    assert e.value.code == 62


# --- Syncer -----------------------------------------------------------------------------------


def test_syncerCountsPerDirectory(layout):
    syncer = Syncer(useSyncfs=False)
    inject(layout, b"s", [b"r"], b"m\n", b"by uid 0", uid=0, qp=1, syncer=syncer)
    # message and envelope files; then mess/N and todo/
    assert (syncer.fileSyncs, syncer.dirSyncs, syncer.fsSyncs) == (2, 2, 0)
    assert syncer.total == 4


@pytest.mark.skipif(not canSyncFilesystem(), reason="no syncfs(2) in this libc")
def test_groupCommitIsOneSyncfsThenTodoDirectory(layout):
    syncer = Syncer()
    if not syncer.canGroup:
        pytest.skip("no syncfs(2) on this system")
    inject(layout, b"s", [b"r"], b"m\n", b"by uid 0", uid=0, qp=1, syncer=syncer)
    assert (syncer.fileSyncs, syncer.dirSyncs, syncer.fsSyncs) == (0, 1, 1)
    assert syncer.total == 2


def test_withoutSyncfsEveryFileAndDirectoryIsFsynced(layout):
    syncer = Syncer(useSyncfs=False)
    inject(layout, b"s", [b"r"], b"m\n", b"by uid 0", uid=0, qp=1, syncer=syncer)
    # mess and intd files; then the mess/N and todo directories
    assert (syncer.fileSyncs, syncer.dirSyncs, syncer.fsSyncs) == (2, 2, 0)


def test_syncerSingleDirectoryIsPlainFsync(tmp_path):
    syncer = Syncer()
    syncer.syncDirs([str(tmp_path), str(tmp_path)])
    assert (syncer.fileSyncs, syncer.dirSyncs, syncer.fsSyncs) == (0, 1, 0)
    fd = os.open(str(tmp_path / "f"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        syncer.fsync(fd)
    finally:
        os.close(fd)
    assert syncer.fileSyncs == 1
    assert syncer.total == 2


# --- trigger ----------------------------------------------------------------------------------


def test_injectPokesTrigger(layout):
    fd = os.open(layout.trigger, os.O_RDONLY | os.O_NONBLOCK)
    try:
        inject(layout, b"s", [b"r"], b"m\n", b"by uid 0", uid=0, qp=1)
        assert os.read(fd, 10) == b"\0"
    finally:
        os.close(fd)


def test_pokeTriggerWithoutReaderDoesNotBlock(layout):
    # Opening a FIFO for writing blocks until it has a reader, unless O_NONBLOCK (then ENXIO):
    # a poke from a tool must come back at once, without an error, when no daemon listens.
    assert stat.S_ISFIFO(os.stat(layout.trigger).st_mode)
    errors: list[BaseException] = []

    def poke() -> None:
        try:
            pokeTrigger(layout)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=poke, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # it blocks in open(2): give it its reader so the thread can end
        os.close(os.open(layout.trigger, os.O_RDONLY | os.O_NONBLOCK))
        pytest.fail("pokeTrigger blocked on lock/trigger without a reader")
    assert errors == []
    assert stat.S_ISFIFO(os.stat(layout.trigger).st_mode)  # still the FIFO the daemon opens


def test_pokeTriggerWithAFullFifoDoesNotBlock(layout):
    # a reader that does not read: the pipe fills, and the poke is dropped, not waited for
    fd = os.open(layout.trigger, os.O_RDONLY | os.O_NONBLOCK)
    w = os.open(layout.trigger, os.O_WRONLY | os.O_NONBLOCK)
    try:
        size = fcntl.fcntl(w, fcntl.F_GETPIPE_SZ)
        os.write(w, b"\0" * size)
        with pytest.raises(BlockingIOError):
            os.write(w, b"\0")
        pokeTrigger(layout)
        assert len(os.read(fd, size + 10)) == size
    finally:
        os.close(w)
        os.close(fd)


def test_unreadableQueueextraIs55AndLeavesNothing(layout, home):
    # a link to itself exists but cannot be read, even by root (ELOOP); a directory would
    # count as missing (not a regular file)
    os.symlink("queueextra", os.path.join(home.control, "queueextra"))
    with pytest.raises(QueueError) as e:
        inject(layout, b"s", [b"r"], b"m\n", b"by uid 0", uid=0, qp=1, controlDir=home.control)
    assert e.value.code == 55
    assert e.value.text == "qq unable to read configuration (#4.3.0)"
    assert queueFiles(layout) == []


def test_injectLeavesNoDescriptorOpen(layout):
    """inject() with no syncer of its own makes one, whose syncfs descriptor it closes: a
    process that queues many messages (a bench, a tool looping) must not run out of files."""
    inject(layout, b"a@b", [b"c@d"], b"warm-up\n", b"by uid 0")
    before = len(os.listdir("/proc/self/fd"))
    for i in range(50):
        inject(layout, b"a@b", [b"c@d"], b"m %d\n" % i, b"by uid 0")
    assert len(os.listdir("/proc/self/fd")) == before


def test_syncerCloseLetsGoOfWatchedDescriptors(layout):
    s = Syncer()
    fd = s.watch(layout.path)
    assert s.watch(layout.path) == fd
    s.close()
    with pytest.raises(OSError):
        os.fstat(fd)
