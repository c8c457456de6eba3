"""
The intake's bookkeeping of message numbers (docs/behaviour/queue.md 5.5): a number is the inode
of a mess file, so a new message may take the number of one that just went away. Whatever order
the scans of todo/, the batches and the removals come in, a todo entry the intake has seen is
read again once its number is free, and nothing is read twice without need. Real queue files; the
thread hops are held (L{HeldRunner}) so each interleaving is chosen by the test.
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock

from qmtwist.context import ControlCache
from qmtwist.queue import clean
from qmtwist.queue.intake import Intake
from qmtwist.queue.store import Syncer, inject
from tests.support import HeldRunner


def makeIntake(home):
    runner = HeldRunner()
    adopted: list[int] = []
    intake = Intake(home.queue, ControlCache(home), Clock(), runner, Syncer(),
                    onMessage=lambda m: adopted.append(m.id), onSettled=lambda: None)
    intake.open([])
    return intake, runner, adopted


def queued(home) -> int:
    return inject(home.queue, b"joe@test.example", [b"bob@test.example"], b"Subject: t\n\nhi\n",
                  b"by uid 0", uid=0, qp=1).id


def hideTodo(home, n: int) -> list[tuple[str, str]]:
    """Move message C{n}'s todo and intd entries aside (as if not written yet)."""
    moved = []
    for path in (home.queue.todo(n), home.queue.intd(n)):
        os.rename(path, path + ".aside")
        moved.append((path + ".aside", path))
    return moved


def test_a_todo_entry_seen_during_a_batch_that_found_none_is_read_again(home):
    """
    A batch reads number N and finds no todo entry (the number is free: a removal just
    finished); meanwhile a new message takes inode N and a scan reports todo/N. When the batch
    ends, N is read again and the new message is taken in (before, it waited for the 25-minute
    sweep).
    """
    intake, runner, adopted = makeIntake(home)
    n = queued(home)
    moved = hideTodo(home, n)
    intake.add([n])
    [(_, _)] = runner.pending
    job, d = runner.pending.pop(0)
    result = job()  # the batch reads todo/N: nothing there
    for src, dst in moved:
        os.rename(src, dst)  # the new message's entries appear ...
    intake.add([n])  # ... and a scan reports them while the batch is still running
    d.callback(result)
    assert adopted == []
    assert len(runner.pending) == 1, "N is read again"
    runner.runOne()
    assert adopted == [n]
    assert not os.path.exists(home.queue.todo(n))


def test_a_scan_during_the_batch_that_takes_the_message_in_causes_no_second_read(home):
    """The scan saw the message's own todo entry: after its removal nothing is read again."""
    intake, runner, adopted = makeIntake(home)
    n = queued(home)
    intake.add([n])
    intake.add([n])  # a scan listing todo/ while the batch runs
    runner.runOne()
    assert adopted == [n]
    clean.removeMessage(home.queue, n)  # the message is delivered and removed
    intake.forget(n)
    assert runner.pending == []
    assert n not in intake.known


def test_a_scan_while_a_held_message_is_removed_reads_its_number_after_the_removal(home):
    """The inode-reuse case qmail-send handles: a known message's number in todo/ is looked at
    again once its files are gone."""
    intake, runner, adopted = makeIntake(home)
    n = queued(home)
    intake.add([n])
    runner.runOne()
    assert adopted == [n]
    intake.add([n])  # a new message with the same number, before forget
    assert runner.pending == []
    intake.forget(n)
    assert len(runner.pending) == 1


def test_a_number_seen_while_claimed_is_read_again_when_its_commit_is_dropped(home):
    """A commit round claimed N and failed (the number is free again); a scan reported todo/N
    meanwhile: it is read once the round gives the number back."""
    intake, runner, adopted = makeIntake(home)
    n = queued(home)
    claim = intake.claim([n])
    assert claim is not None and claim[1] == {n}
    intake.add([n])  # ignored while claimed ...
    assert runner.pending == []
    intake.adopt([], dropped=[n])  # ... and read when the claim ends without a message
    assert len(runner.pending) == 1
    runner.runOne()
    assert adopted == [n]


def test_a_number_seen_while_claimed_and_preprocessed_is_not_read_again(home):
    from qmtwist.queue.preprocess import Preprocessed

    intake, runner, adopted = makeIntake(home)
    n = queued(home)
    intake.claim([n])
    intake.add([n])
    intake.adopt([Preprocessed(n, b"joe@test.example", 0, 1, 10, 0.0, "0.0", (b"bob@test.example",), ())])
    assert adopted == [n]
    assert runner.pending == []


def test_looks_at_todo_asked_for_during_a_listing_share_one_listing_after_it(home):
    """Triggers from busy front ends: one listing at a time, and one more after it for every
    request made meanwhile, which sees the entries committed before those requests."""
    intake, runner, adopted = makeIntake(home)
    seen: list[list[int]] = []
    first = intake.scan(seen.append)
    assert len(runner.pending) == 1
    job, d = runner.pending.pop(0)
    listed = job()  # the first listing: an empty todo/
    n = queued(home)  # committed after it ...
    later = [intake.scan(seen.append) for _ in range(3)]  # ... and three triggers
    assert runner.pending == []  # no second listing while the first runs
    fired: list[object] = []
    for w in [first, *later]:
        w.addCallback(fired.append)
    d.callback(listed)
    assert seen == [[]] and len(fired) == 1
    assert len(runner.pending) == 1  # one listing for the three requests
    runner.runOne()
    assert seen == [[], [n]] and len(fired) == 4
    assert runner.pending == []
