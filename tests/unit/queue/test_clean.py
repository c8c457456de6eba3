"""
Start-up recovery and removal of queue files (qmtwist/queue/clean.py, docs/behaviour/queue.md
5.7 and 5.10), on real files in a fresh queue.
"""

from __future__ import annotations

import os

import pytest

from qmtwist.queue import clean
from qmtwist.queue.envelope import ChannelEntry, Envelope, encodeChannel, encodeInfo, encodeTodo

NOW = 1_800_000_000.0
OLD = NOW - clean.ORPHAN_AGE - 60  # a leftover old enough to go
YOUNG = NOW - clean.ORPHAN_AGE + 60  # one that stays


def put(path: str, data: bytes, mtime: float | None = None) -> str:
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def preprocessed(layout, n: int, sender: bytes = b"joe@far.org",
                 local: list[bytes] | None = None, remote: list[bytes] | None = None,
                 birth: float = NOW - 3600) -> None:
    """The files of message C{n} after preprocessing: mess, info, and its channel files."""
    put(layout.mess(n), b"Received: x\n\nbody\n")
    put(layout.info(n), encodeInfo(sender), birth)
    if local is not None:
        put(layout.local(n), encodeChannel(local), NOW + 60)
    if remote is not None:
        put(layout.remote(n), encodeChannel(remote), NOW + 120)


def committed(layout, n: int) -> None:
    """A message committed but not yet preprocessed: mess, intd and its todo link."""
    put(layout.mess(n), b"Received: x\n\nbody\n")
    put(layout.intd(n), encodeTodo(Envelope(b"s@x", (b"r@y",), 0, 1)))
    os.link(layout.intd(n), layout.todo(n))


def everyFile(layout) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(layout.path):
        if "lock" in dirpath.split(os.sep):
            continue
        out.extend(os.path.relpath(os.path.join(dirpath, f), layout.path) for f in files)
    return sorted(out)


@pytest.fixture
def layout(home):
    return home.queue


# -- recover ---------------------------------------------------------------------------------


def test_recoverOnAnEmptyQueueFindsNothing(layout):
    assert clean.recover(layout, NOW) == clean.Scan((), (), ())


def test_recoverListsTodoEntriesToPreprocessAgain(layout):
    for n in (1007, 23, 500):
        committed(layout, n)
    preprocessed(layout, 500, local=[b"a@test.example"])  # its info from an interrupted pass
    scan = clean.recover(layout, NOW)
    assert scan.todo == (23, 500, 1007)
    assert scan.messages == ()  # a todo entry is preprocessed from scratch, not resumed
    assert scan.problems == ()
    for n in (23, 500, 1007):  # nothing of theirs is removed, however old
        assert os.path.exists(layout.mess(n)) and os.path.exists(layout.intd(n))


def test_recoverResumesPreprocessedMessagesFromTheirFiles(layout):
    preprocessed(layout, 4242, sender=b"joe@far.org", local=[b"a@test.example"],
                 remote=[b"x@far.org", b"y@far.org"], birth=NOW - 7200)
    with open(layout.remote(4242), "r+b") as f:  # x@far.org was delivered before the crash
        f.write(b"D")
    os.utime(layout.remote(4242), (NOW + 120, NOW + 120))
    [m] = clean.recover(layout, NOW).messages
    assert (m.id, m.sender, m.birth) == (4242, b"joe@far.org", NOW - 7200)
    assert m.size == len(b"Received: x\n\nbody\n")
    assert m.stamp == f"{os.stat(layout.mess(4242)).st_mtime_ns // 1000}.P4242"
    assert set(m.channels) == {"local", "remote"}
    assert m.channels["local"].entries == (ChannelEntry(0, 0, b"a@test.example", False),)
    assert m.channels["local"].scheduled == NOW + 60
    assert m.channels["remote"].entries == (
        ChannelEntry(0, 0, b"x@far.org", True), ChannelEntry(1, 11, b"y@far.org", False))
    assert m.channels["remote"].scheduled == NOW + 120


def test_recoverLoadsOnlyTheChannelsThatAreLeft(layout):
    preprocessed(layout, 77, remote=[b"x@far.org"])
    [m] = clean.recover(layout, NOW).messages
    assert set(m.channels) == {"remote"}


def test_recoverRemovesTheRestOfAMessageWhoseMessFileIsGone(layout):
    # the message had finished: removal got as far as mess before the crash (info goes last)
    preprocessed(layout, 31, local=[b"a@test.example"])
    put(layout.bounce(31), b"<a@test.example>:\nno\n\n")
    os.unlink(layout.mess(31))
    scan = clean.recover(layout, NOW)
    assert scan == clean.Scan((), (), ())  # silently
    assert everyFile(layout) == []


def test_recoverReportsACorruptInfoFileAndLeavesTheMessage(layout):
    preprocessed(layout, 88, local=[b"a@test.example"])
    put(layout.info(88), b"Xnot an info record\0")
    scan = clean.recover(layout, NOW)
    assert scan.messages == ()
    assert scan.problems == ("warning: unknown record type in info/88!",)
    assert os.path.exists(layout.mess(88)) and os.path.exists(layout.local(88))


def test_recoverReportsAnUnreadableInfoFileAndLeavesTheMessage(layout):
    preprocessed(layout, 89, local=[b"a@test.example"])
    os.unlink(layout.info(89))
    os.mkdir(layout.info(89))  # open() fails with an OSError, even for root
    scan = clean.recover(layout, NOW)
    assert scan.messages == ()
    assert scan.problems == ("warning: trouble reading info/89; will try again later",)
    assert os.path.exists(layout.mess(89))


def test_recoverRemovesOnlyOldLeftoversOfUncommittedMessages(layout):
    put(layout.mess(100), b"never committed", OLD)  # neither todo nor info
    put(layout.mess(101), b"being written", YOUNG)
    put(layout.intd(102), b"u0\0p1\0Fs\0", OLD)  # no todo link
    put(layout.intd(103), b"u0\0p1\0Fs\0", YOUNG)
    put(layout.sub("pid", "4711.1.99"), b"", OLD)
    put(layout.sub("pid", "4711.2.99"), b"", YOUNG)
    preprocessed(layout, 104, local=[b"a@test.example"])
    os.utime(layout.mess(104), (OLD, OLD))  # old, but it has info: a live message
    committed(layout, 105)
    os.utime(layout.mess(105), (OLD, OLD))  # old, but it has todo
    scan = clean.recover(layout, NOW)
    assert scan.todo == (105,)
    assert [m.id for m in scan.messages] == [104]
    assert everyFile(layout) == sorted([
        f"mess/{101 % 23}/101", "intd/103", "pid/4711.2.99",
        f"mess/{104 % 23}/104", f"info/{104 % 23}/104", f"local/{104 % 23}/104",
        f"mess/{105 % 23}/105", "intd/105", "todo/105"])


def test_recoverIgnoresNamesThatAreNotMessageNumbers(layout):
    put(layout.sub("todo", ".nfs1234"), b"")
    put(layout.sub("info", 3, "junk"), b"")
    put(layout.sub("mess", 3, "junk"), b"", OLD)
    assert clean.recover(layout, NOW) == clean.Scan((), (), ())
    assert os.path.exists(layout.sub("mess", 3, "junk"))


def test_listTodo(layout):
    for n in (9, 1000, 55):
        committed(layout, n)
    put(layout.sub("todo", "tmp.x"), b"")
    assert clean.listTodo(layout) == [9, 55, 1000]


# -- removeMessage ---------------------------------------------------------------------------


def test_removeMessageRemovesEveryFileInfoLast(layout, monkeypatch):
    preprocessed(layout, 4000, local=[b"a@test.example"], remote=[b"x@far.org"])
    put(layout.bounce(4000), b"<x@far.org>:\nno\n\n")
    put(layout.intd(4000), b"u0\0p1\0Fs\0Tr\0")
    os.link(layout.intd(4000), layout.todo(4000))
    put(layout.sub("hold", 4000), b"1.P4000\n")  # queue-control.md: hold marker, note
    put(layout.sub("why", 4000), b"{}")
    removed: list[str] = []
    unlink = os.unlink

    def spy(path: str) -> None:
        removed.append(os.path.relpath(path, layout.path))
        unlink(path)

    monkeypatch.setattr(clean.os, "unlink", spy)
    clean.removeMessage(layout, 4000)
    assert everyFile(layout) == []
    assert removed[-1] == f"info/{4000 % 23}/4000"  # while info exists the message is live
    assert sorted(removed) == sorted([
        f"local/{4000 % 23}/4000", f"remote/{4000 % 23}/4000", "bounce/4000", "todo/4000",
        "intd/4000", f"mess/{4000 % 23}/4000", f"info/{4000 % 23}/4000", "hold/4000",
        "why/4000"])
    # the marks go before the mess file, whose removal frees the number for another message
    assert removed.index("why/4000") < removed.index(f"mess/{4000 % 23}/4000")


def test_removeMessageOfAPartlyRemovedMessage(layout):
    preprocessed(layout, 4001, local=[b"a@test.example"])
    os.unlink(layout.mess(4001))
    clean.removeMessage(layout, 4001)
    clean.removeMessage(layout, 4001)  # and again: nothing left, no error
    assert everyFile(layout) == []


def test_removeMessageLeavesOtherMessages(layout):
    preprocessed(layout, 10, local=[b"a@test.example"])
    preprocessed(layout, 33, local=[b"b@test.example"])  # 33 % 23 == 10: the same split dirs
    clean.removeMessage(layout, 10)
    assert everyFile(layout) == sorted(
        ["mess/10/33", "info/10/33", "local/10/33"])


# -- markDone --------------------------------------------------------------------------------


def test_markDoneTurnsTheGivenRecipientsDAndSyncs(layout, monkeypatch):
    preprocessed(layout, 500, remote=[b"x@far.org", b"yy@far.org", b"z@far.org"])
    path = layout.remote(500)
    offsets = [e.offset for e in clean.loadMessage(layout, 500).channels["remote"].entries]
    synced: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(clean.os, "fsync", lambda fd: (synced.append(fd), fsync(fd)))
    clean.markDone(path, [offsets[0], offsets[2]])
    with open(path, "rb") as f:
        assert f.read() == b"Dx@far.org\0Tyy@far.org\0Dz@far.org\0"
    assert len(synced) == 1  # durable before the caller counts them done
    [m] = clean.recover(layout, NOW).messages
    assert [e.done for e in m.channels["remote"].entries] == [True, False, True]


def test_markDoneOnAMissingFileRaises(layout):
    with pytest.raises(FileNotFoundError):
        clean.markDone(layout.remote(999), [0])

