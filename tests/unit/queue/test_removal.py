"""
The removal of a finished message (docs/behaviour/queue.md 5.7): a message preprocessed by this
run has only the files it is known to have unlinked, no bounce is looked for when nothing
failed, and every file is gone at the end; a message found at start gets every unlink. Real
queue files; every os.unlink of the run is recorded with whether its file existed.
"""

from __future__ import annotations

import os

import pytest

from qmtwist.delivery import Report
from qmtwist.queue import clean, finish, fwd
from qmtwist.queue.admin import QueueAdmin
from qmtwist.queue.state import Message
from tests.unit.queue.test_service import later, makeHarness, no, ok


@pytest.fixture
def unlinks(monkeypatch):
    """The unlinks made by L{clean.removeMessage}, each with whether its file existed."""
    calls: list[tuple[str, bool]] = []
    realUnlink, realRemove = os.unlink, clean.removeMessage
    removing = [False]

    def recording(path, *a, **kw):
        if removing[0]:
            calls.append((str(path), os.path.lexists(path)))
        return realUnlink(path, *a, **kw)

    def removal(*a, **kw):
        removing[0] = True
        try:
            return realRemove(*a, **kw)
        finally:
            removing[0] = False

    monkeypatch.setattr(os, "unlink", recording)
    monkeypatch.setattr(clean, "removeMessage", removal)
    return calls


@pytest.fixture
def bounceLooks(monkeypatch):
    calls: list[int] = []
    real = finish._prepareBounce

    def counting(layout, control, now, n, sender, qp):
        calls.append(n)
        return real(layout, control, now, n, sender, qp)

    monkeypatch.setattr(finish, "_prepareBounce", counting)
    return calls


def relative(home, path: str) -> str:
    return os.path.relpath(path, home.queue.path)


def test_a_delivered_message_costs_no_unlink_that_can_only_fail(home, unlinks, bounceLooks):
    h = makeHarness(home, local=ok, remote=ok)
    h.inject(b"joe@test.example", [b"fred@test.example", b"x@elsewhere.example"])
    assert h.queueFiles() == []
    assert bounceLooks == []
    missing = [relative(home, p) for p, existed in unlinks if not existed]
    assert missing == []  # never held: no hold marker is tried
    gone = {relative(home, p).split("/")[0] for p, existed in unlinks if existed}
    # the channel file that finished last, the message and its info
    assert gone in ({"remote", "mess", "info"}, {"local", "mess", "info"})


def test_a_failure_is_bounced_and_its_bounce_file_removed(home, unlinks, bounceLooks):
    h = makeHarness(home, local=no)
    q = h.inject(b"joe@test.example", [b"nobody@test.example"])
    assert bounceLooks[0] == q.id  # (then the bounce's own double bounce, and so on)
    assert not os.path.exists(home.queue.bounce(q.id))
    assert (home.queue.bounce(q.id), True) in unlinks
    assert not os.path.exists(home.queue.info(q.id)) and not os.path.exists(home.queue.mess(q.id))


def test_a_deferred_message_removes_its_note_when_it_finishes(home, unlinks):
    answers = iter([later, ok])
    h = makeHarness(home, local=lambda r: next(answers)(r))
    q = h.inject(b"joe@test.example", [b"fred@test.example"])
    why = os.path.join(home.queue.path, "why", str(q.id))
    assert os.path.exists(why)  # the deferral note (queue-control.md 17.7)
    h.clock.advance(200)  # the retry delivers
    assert [r.recipient for r in h.local.requests] == [b"fred@test.example"] * 2
    assert not os.path.exists(why)
    assert h.queueFiles() == []


def test_a_message_found_at_start_gets_every_unlink(home, unlinks):
    h = makeHarness(home, local=None)  # the delivery is held ...
    q = h.inject(b"joe@test.example", [b"fred@test.example"])
    h.service._exit()  # ... and the process dies with it (its lock goes)
    h2 = makeHarness(home, local=ok)  # a new run recovers the message and delivers it
    assert h2.local.requests and h2.queueFiles() == []
    tried = {relative(home, p).split("/")[0] for p, _ in unlinks if str(q.id) in p}
    assert {"todo", "intd", "bounce", "why", "remote", "local", "mess", "info"} <= tried


@pytest.fixture
def fwdLooks(monkeypatch):
    """The messages whose removal looked at fwd/ for forward records."""
    calls: list[int] = []
    real = fwd.dropMessageRecords

    def counting(layout, n):
        calls.append(n)
        return real(layout, n)

    monkeypatch.setattr(fwd, "dropMessageRecords", counting)
    return calls


def test_only_a_message_with_local_recipients_looks_at_fwd(home, fwdLooks):
    """Forward records come from local deliveries alone (queue.md 5.10)."""
    h = makeHarness(home, local=ok, remote=ok)
    h.inject(b"joe@test.example", [b"x@elsewhere.example"])
    assert h.queueFiles() == [] and fwdLooks == []
    near = h.inject(b"joe@test.example", [b"fred@test.example"])
    assert h.queueFiles() == []
    assert fwdLooks == [near.id]


def test_a_held_message_that_finishes_takes_its_hold_marker(home, unlinks):
    """Held while its delivery ran: the hold marker goes with the message, not left behind."""
    h = makeHarness(home)  # the agents keep every delivery running until told
    h.inject(b"joe@test.example", [b"x@elsewhere.example"])
    [m] = h.service.messages.values()
    assert QueueAdmin(h.service).hold([m.id]).result.errors == []
    hold = os.path.join(home.queue.path, "hold", str(m.id))
    assert os.path.exists(hold)
    h.remote.held[0].callback(Report.success(b"accepted\n"))
    h.clock.advance(0)
    assert h.queueFiles() == []
    assert (hold, True) in unlinks


def test_side_files_of_a_message_built_elsewhere_are_all_tried():
    """A Message made without the intake's knowledge keeps the conservative default."""
    m = Message(1, b"", 0.0, "s", 1, {})
    assert {"local", "remote", "fwd"} <= clean.sideFiles(m)
    assert clean.sideFiles(Message(1, b"", 0.0, "s", 1, {}, recovered=True)) == \
        clean.ALL_SIDE_FILES


def test_a_report_after_the_first_channel_removes_that_channel_file_alone(home, unlinks):
    h = makeHarness(home, local=ok, remote=None)
    q = h.inject(b"joe@test.example", [b"fred@test.example", b"x@elsewhere.example"])
    assert not os.path.exists(home.queue.local(q.id))  # finished first: removed then
    assert os.path.exists(home.queue.remote(q.id))
    h.remote.held[0].callback(Report.success(b"ok/"))
    assert h.queueFiles() == []
    removed = [p for p, _ in unlinks]
    assert home.queue.local(q.id) not in removed  # not tried a second time
    assert home.queue.remote(q.id) in removed
