"""
Forward records (qmtwist/queue/fwd.py, docs/behaviour/queue.md 5.10): the commit round writes
C{fwd/<key>} between "files durable" and "todo link", start-up recovery completes an interrupted
commit, and records go once their delivery is recorded or their message is gone.
"""

from __future__ import annotations

import os
import time

import pytest

from qmtwist.errors import QQ_TODO, QueueError
from qmtwist.queue import clean, fwd
from qmtwist.queue.preprocess import messStamp
from qmtwist.queue.store import PendingMessage, Syncer, commitRound

KEY = "1700000000123456.P4242Q3"


class Crash(BaseException):
    """The process dies here: nothing after this point runs, nothing is cleaned up."""


def pending(home, key: str | None = KEY, body: bytes = b"Subject: f\n\nforwarded\n"):
    p = PendingMessage(home.queue, 777, b"by uid 0", 0, time.time())
    p.write(body)
    p.setEnvelope(b"joe@test.example", [b"carol@test.example"])
    p.onceKey = key
    return p


def original(home, key: str = KEY) -> str:
    """A mess file for the original message the key names, with the key's stamp."""
    stamp = key.rsplit("Q", 1)[0]
    n = int(stamp.split(".P")[1])
    path = home.queue.mess(n)
    with open(path, "wb") as f:
        f.write(b"original\n")
    us = int(stamp.split(".")[0])
    os.utime(path, ns=(us * 1000, us * 1000))
    assert messStamp(home.queue, n)[0] == stamp
    return path


def fwdNames(home) -> list[str]:
    return sorted(os.listdir(home.queue.sub("fwd")))


def test_setup_creates_fwd_directory(home):
    st = os.stat(home.queue.sub("fwd"))
    assert st.st_mode & 0o777 == 0o700
    assert home.queue.isComplete()
    os.rmdir(home.queue.sub("fwd"))
    assert not home.queue.isComplete()  # the daemon completes such a home at start


def test_commit_writes_record_before_todo_link(home, monkeypatch):
    p = pending(home)
    seen = []
    link = PendingMessage.linkTodo

    def spy(self):
        seen.append(fwd.readRecord(home.queue, KEY))
        link(self)

    monkeypatch.setattr(PendingMessage, "linkTodo", spy)
    syncer = Syncer()
    assert commitRound([p], syncer, home.control) == {}
    record = fwd.ForwardRecord(p.id, messStamp(home.queue, p.id)[0], 777)
    assert seen == [record]
    assert fwd.readRecord(home.queue, KEY) == record
    with open(home.queue.sub("fwd", KEY), "rb") as f:
        assert f.read() == b"%d %s 777\n" % (p.id, record.stamp.encode())
    assert os.path.exists(home.queue.todo(p.id))


def test_round_without_forwards_writes_no_record(home):
    p = pending(home, key=None)
    syncer = Syncer()
    assert commitRound([p], syncer, home.control) == {}
    assert fwdNames(home) == []


def test_crash_after_record_before_todo_link_is_committed_at_start(home, monkeypatch):
    original(home)
    p = pending(home)

    def crash(self):
        raise Crash()

    monkeypatch.setattr(PendingMessage, "linkTodo", crash)
    with pytest.raises(Crash):
        commitRound([p], Syncer(), home.control)
    monkeypatch.undo()
    assert not os.path.exists(home.queue.todo(p.id))
    scan = clean.recover(home.queue, time.time() + 40 * 3600)  # orphans would be old by now
    assert p.id in scan.todo
    assert os.path.exists(home.queue.todo(p.id))
    assert os.path.exists(home.queue.mess(p.id))
    # the record stays while the original may still be delivered again
    assert fwdNames(home) == [KEY]


def test_crash_before_record_is_durable_means_not_committed(home, monkeypatch):
    original(home)
    p = pending(home)

    def crash(batch, syncer, failed):
        open(home.queue.sub("fwd", KEY), "wb").close()  # created, no data reached the disk
        raise Crash()

    monkeypatch.setattr(fwd, "writeRecords", crash)
    with pytest.raises(Crash):
        commitRound([p], Syncer(), home.control)
    monkeypatch.undo()
    scan = clean.recover(home.queue, time.time())
    assert scan.todo == ()
    assert fwdNames(home) == []  # the delivery forwards again: nothing was committed
    assert fwd.readRecord(home.queue, KEY) is None


def test_failed_todo_link_removes_record_then_files(home, monkeypatch):
    p = pending(home)

    def refuse(self):
        assert os.path.exists(home.queue.sub("fwd", KEY))
        raise QueueError(QQ_TODO, "no room")

    monkeypatch.setattr(PendingMessage, "linkTodo", refuse)
    failed = commitRound([p], Syncer(), home.control)
    assert failed[p.id].code == QQ_TODO
    assert fwdNames(home) == []
    assert not os.path.exists(home.queue.mess(p.id))
    assert not os.path.exists(home.queue.intd(p.id))


def test_record_that_cannot_be_removed_keeps_files_for_recovery(home, monkeypatch):
    original(home)
    p = pending(home)

    def refuse(self):
        raise QueueError(QQ_TODO, "no room")

    monkeypatch.setattr(PendingMessage, "linkTodo", refuse)
    monkeypatch.setattr(fwd, "removeRecord", lambda path: False)
    assert p.id in commitRound([p], Syncer(), home.control)
    monkeypatch.undo()
    assert fwdNames(home) == [KEY]
    assert os.path.exists(home.queue.mess(p.id)) and os.path.exists(home.queue.intd(p.id))
    assert p.id in clean.recover(home.queue, time.time()).todo


def test_record_write_failure_fails_the_forward_and_leaves_nothing(home):
    p = pending(home)

    class FullDisk(Syncer):
        def fsync(self, fd):
            if os.readlink(f"/proc/self/fd/{fd}").endswith("/fwd/" + KEY):
                raise OSError(28, "No space left on device")
            super().fsync(fd)

    failed = commitRound([p], FullDisk(), home.control)
    assert failed[p.id].code == 53
    assert fwdNames(home) == []
    assert os.listdir(home.queue.sub("todo")) == []
    assert not os.path.exists(home.queue.mess(p.id))


def test_recovery_removes_records_of_finished_messages_and_truncated_ones(home):
    kept, gone, cut = KEY, "1700000000999999.P4243Q0", "1700000000123456.P4242Q4"
    original(home, kept)
    for key, data in ((kept, b"1 1.P1 5\n"), (gone, b"1 1.P1 5\n"), (cut, b"1 1.P")):
        with open(home.queue.sub("fwd", key), "wb") as f:
            f.write(data)
    with open(home.queue.sub("fwd", "README"), "wb") as f:
        f.write(b"not a record name\n")
    clean.recover(home.queue, time.time())
    assert fwdNames(home) == sorted([kept, "README"])


def test_recovery_compares_stamps_never_numbers_alone(home):
    """The forwarded number now names another message (inode reuse): that one is left alone."""
    original(home)
    p = pending(home, key=None)
    p.finishFiles(Syncer(), [])  # mess and intd, no todo: a message being injected right now
    with open(home.queue.sub("fwd", KEY), "wb") as f:
        f.write(b"%d 1600000000000000.P%d 5\n" % (p.id, p.id))
    scan = clean.recover(home.queue, time.time())
    assert scan.todo == ()
    assert not os.path.exists(home.queue.todo(p.id))
    assert fwdNames(home) == [KEY]


def test_recovery_creates_fwd_of_an_old_home(home):
    os.rmdir(home.queue.sub("fwd"))
    clean.recover(home.queue, time.time())
    assert os.path.isdir(home.queue.sub("fwd"))


def test_mark_done_drops_the_record(home):
    original(home)
    path = home.queue.local(4242)
    with open(path, "wb") as f:
        f.write(b"Tbob@test.example\0")
    with open(home.queue.sub("fwd", KEY), "wb") as f:
        f.write(b"1 1.P1 5\n")
    clean.markDone(path, [0], home.queue, [KEY])
    with open(path, "rb") as f:
        assert f.read() == b"Dbob@test.example\0"
    assert fwdNames(home) == []


@pytest.mark.parametrize("key", ["", "../todo/1", "a/b", "x\0y", "Q" * 300])
def test_keys_are_plain_names(home, key):
    with pytest.raises(ValueError):
        fwd.recordPath(home.queue, key)


def test_the_local_done_mark_drops_the_record_a_remote_one_does_not(home):
    """Local and remote positions both count from 0: only the local D is this record's."""
    from tests.unit.queue.test_service import makeHarness, ok

    h = makeHarness(home)  # both agents hold their reports
    h.inject(b"joe@test.example", [b"fred@test.example", b"x@far.example"])
    [req], [remote] = h.local.requests, h.remote.requests
    assert req.position == remote.position == 0
    record = home.queue.sub("fwd", req.uniqueKey)
    with open(record, "wb") as f:
        f.write(b"1 1.P1 5\n")
    h.remote.held[0].callback(ok(remote))
    assert os.path.exists(record)
    h.local.held[0].callback(ok(req))
    assert not os.path.exists(record)
    assert h.queueFiles() == []


def test_finished_message_takes_its_leftover_records_with_it(home):
    """A record whose unlink after the D mark was lost in a crash goes when its message does."""
    original(home)
    other = "1700000000999999.P4343Q0"
    for key in (KEY, KEY[:-1] + "7", other):
        with open(home.queue.sub("fwd", key), "wb") as f:
            f.write(b"1 x 2\n")
    clean.removeMessage(home.queue, 4242)
    assert fwdNames(home) == [other]
