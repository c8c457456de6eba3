"""
The end of a message (qmtwist/queue/finish.py, docs/behaviour/queue.md 5.7): its one bounce is
queued through the injector's round and only then are its files removed; a triple bounce is
dropped; a bounce that cannot be queued leaves every file. Real files in a fresh queue; the
thread hops run inline (C{maybeDeferred}).
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from qmtwist.control import Control
from qmtwist.errors import QueueError
from qmtwist.queue.bounce import DOUBLE_BOUNCE_SENDER, paragraph
from qmtwist.queue.commit import Injector
from qmtwist.queue.envelope import decodeTodo, encodeChannel, encodeInfo
from qmtwist.queue import dsn, finish
from qmtwist.queue.finish import FileOps, finishMessage
from qmtwist.received import date822
from tests.bounceparts import qsbmf
from tests.conftest import logLines

NOW = 1762326189.0
ORIGINAL = b"Received: (qmail 77 invoked by uid 0); 5 Nov 2025 07:00:00 -0000\nSubject: hi\n\nbody\n"
FAILED = paragraph(b"nobody@test.example", b"Sorry, no mailbox here by that name. (#5.1.1)")


def control(**kw: bytes) -> Control:
    values = dict(me=b"test.example", bouncehost=b"test.example",
                  doublebouncehost=b"db.example", locals=frozenset([b"test.example"]))
    values.update(kw)
    return Control(**values)  # type: ignore[arg-type]


class World:
    """A queue with one finished message, N, and the injector and file operations of a daemon."""

    def __init__(self, home, sender: bytes, paragraphs: bytes | None = FAILED) -> None:
        self.home = home
        self.layout = home.queue
        self.sender = sender
        self.clock = Clock()
        self.clock.advance(NOW)
        self.committed: list[list[int]] = []
        self.injector = Injector(self.layout, home.control, self.clock, maybeDeferred,
                                 onCommitted=self.committed.append)
        self.ops = FileOps(maybeDeferred)
        # the original: a mess file named by its inode, as the queue makes it
        tmp = self.layout.sub("pid", "original")
        with open(tmp, "wb") as f:
            f.write(ORIGINAL)
        self.n = os.stat(tmp).st_ino
        os.rename(tmp, self.layout.mess(self.n))
        with open(self.layout.info(self.n), "wb") as f:
            f.write(encodeInfo(sender))
        with open(self.layout.local(self.n), "wb") as f:
            f.write(b"D" + encodeChannel([b"nobody@test.example"])[1:])
        if paragraphs is not None:
            with open(self.layout.bounce(self.n), "wb") as f:
                f.write(paragraphs)
        self.originalFiles = self.files()

    def finish(self, ctl: Control | None = None) -> list:
        """Run finishMessage to its end: C{[None]} or C{[Failure]}."""
        out: list = []
        d = finishMessage(self.layout, self.ops, ctl or control(), self.clock.seconds(),
                          self.injector, self.n, self.sender)
        d.addBoth(out.append)
        assert out, "finishMessage did not finish with every step inline"
        return out

    def files(self) -> list[str]:
        found = []
        for dirpath, _dirs, names in os.walk(self.layout.path):
            if os.path.basename(dirpath) in ("lock", "fwd"):
                continue
            found.extend(os.path.relpath(os.path.join(dirpath, x), self.layout.path)
                         for x in names)
        return sorted(found)

    def queued(self) -> list[tuple[int, object, bytes]]:
        """Every message in todo/: number, envelope, mess file."""
        out = []
        for name in sorted(os.listdir(self.layout.sub("todo"))):
            m = int(name)
            with open(self.layout.todo(m), "rb") as f:
                env = decodeTodo(f.read())
            with open(self.layout.mess(m), "rb") as f:
                out.append((m, env, f.read()))
        return out


def test_withoutBounceTheFilesGoAndNothingIsQueued(home, logEvents):
    w = World(home, b"joe@far.org", paragraphs=None)
    assert w.finish() == [None]
    assert w.files() == []
    assert w.queued() == []
    assert w.committed == []
    assert not any("bounce" in line for line in logLines(logEvents))


def test_bounceIsQueuedThenTheMessageRemoved(home, logEvents):
    w = World(home, b"joe@far.org")
    assert w.finish() == [None]
    [(m, env, mess)] = w.queued()
    assert m != w.n
    assert w.committed == [[m]]  # an ordinary round: the queue service preprocesses it
    assert (env.sender, env.recipients) == (b"", (b"joe@far.org",))
    assert env.qp and mess.startswith(
        b"Received: (qmail %d invoked for bounce); " % env.qp + date822(NOW) + b"\n")
    assert mess.split(b"\n", 1)[1].startswith(
        b"Date: " + date822(NOW) + b"\n"
        b"From: MAILER-DAEMON@test.example\n"
        b"To: joe@far.org\n"
        b"Subject: failure notice\n"
        b"Message-ID: <%d.%d.%d.qmail@test.example>\n" % (NOW, env.qp, w.n))
    # the first part is qmail's whole bounce body, byte for byte (docs/behaviour/queue.md 5.7.1)
    assert qsbmf(mess) == (
        b"Hi. This is the qmail-send program at test.example.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        + FAILED +
        b"--- Below this line is a copy of the message.\n\n"
        b"Return-Path: <joe@far.org>\n" + ORIGINAL)
    # of the original nothing is left; of the bounce, what a committed message has
    assert w.files() == sorted([f"mess/{m % 23}/{m}", f"intd/{m}", f"todo/{m}"])
    assert f"bounce msg {w.n} qp {env.qp}" in logLines(logEvents)


def test_bounceOfABounceGoesToDoublebounceto(home, logEvents):
    w = World(home, b"")
    assert w.finish(control(doublebounceto=b"boss")) == [None]
    [(m, env, mess)] = w.queued()
    assert (env.sender, env.recipients) == (DOUBLE_BOUNCE_SENDER, (b"boss@db.example",))
    assert b"\nTo: boss@db.example\n" in mess
    assert qsbmf(mess).endswith(b"but the bounce bounced!\n\n" + FAILED + (
        b"--- Below this line is the original bounce.\n\nReturn-Path: <>\n" + ORIGINAL))
    assert w.files() == sorted([f"mess/{m % 23}/{m}", f"intd/{m}", f"todo/{m}"])
    assert f"bounce msg {w.n} qp {env.qp}" in logLines(logEvents)


def test_tripleBounceIsDroppedAndTheMessageRemoved(home, logEvents):
    w = World(home, DOUBLE_BOUNCE_SENDER)
    assert w.finish() == [None]
    assert w.queued() == []
    assert w.committed == []
    assert w.files() == []
    lines = logLines(logEvents)
    assert f"triple bounce: discarding bounce/{w.n}" in lines
    assert not any(line.startswith("bounce msg") for line in lines)


def test_bounceOfAVerpSenderGoesToItsBase(home):
    w = World(home, b"list-@lists.example-@[]")
    assert w.finish() == [None]
    [(_m, env, mess)] = w.queued()
    assert env.recipients == (b"list-@lists.example",)
    assert b"\nReturn-Path: <list-@lists.example>\n" + ORIGINAL in mess


def test_aFailingCommitLeavesEveryFile(home, logEvents):
    # the round cannot read control/queueextra (a link to itself: ELOOP, even for root), so the
    # bounce's commit fails (55); the original must stay for the next attempt, and no part of
    # the bounce may stay behind
    w = World(home, b"joe@far.org")
    os.symlink("queueextra", os.path.join(home.control, "queueextra"))
    [result] = w.finish()
    assert result.check(QueueError)
    assert result.value.code == 55
    assert w.files() == w.originalFiles
    assert w.queued() == []
    assert os.listdir(w.layout.sub("pid")) == []
    with open(w.layout.bounce(w.n), "rb") as f:
        assert f.read() == FAILED
    assert not any(line.startswith("bounce msg") for line in logLines(logEvents))

    # once the round works again, the next attempt queues the one bounce and removes it all
    os.unlink(os.path.join(home.control, "queueextra"))
    assert w.finish() == [None]
    [(_m, env, _mess)] = w.queued()
    assert env.recipients == (b"joe@far.org",)
    assert len(w.files()) == 3


def test_aBounceThatCannotBeWrittenLeavesEveryFile(home, monkeypatch):
    # the original's mess file cannot be read for the copy: nothing is committed or removed
    w = World(home, b"joe@far.org")

    def failing(path, *a, **kw):
        if path == w.layout.mess(w.n):
            raise PermissionError(13, "Permission denied", path)
        return open(path, *a, **kw)  # bounce/N

    monkeypatch.setattr(finish, "open", failing, raising=False)
    monkeypatch.setattr(dsn, "open", failing, raising=False)  # the copies are read by dsn.py
    [result] = w.finish()
    assert result.check(PermissionError)
    assert w.files() == w.originalFiles
    assert os.listdir(w.layout.sub("pid")) == []
    assert w.committed == []


@pytest.mark.parametrize("sender", [b"joe@far.org", b"", DOUBLE_BOUNCE_SENDER])
def test_theMessageGoesOnlyAfterItsBounceIsCommitted(home, monkeypatch, sender):
    # two file operations, the bounce's preparation and then the removal; when the removal is
    # submitted, the bounce (unless dropped) is committed already: a crash in between can only
    # repeat a bounce, never lose one
    w = World(home, sender)
    todo: list[list[str]] = []
    submit = w.ops.submit

    def spy(op):
        todo.append(os.listdir(w.layout.sub("todo")))
        return submit(op)

    monkeypatch.setattr(w.ops, "submit", spy)
    assert w.finish() == [None]
    assert len(todo) == 2
    assert todo[0] == []
    assert len(todo[1]) == (0 if sender == DOUBLE_BOUNCE_SENDER else 1)
