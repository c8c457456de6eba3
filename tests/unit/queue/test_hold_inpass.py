"""
C{qmtwist ctl hold} while a pass of the message runs (docs/behaviour/queue-control.md 17.4), on
the queue service with a recording remote agent and concurrencyremote 1: the delivery already
handed over finishes and is recorded, the recipients waiting for the slot are taken back, the
pass ends, and release + retry deliver them.
"""

from __future__ import annotations

import os

from qmtwist.delivery import Report
from qmtwist.queue.admin import QueueAdmin
from tests.unit.queue.test_service import makeHarness


def test_hold_takes_back_the_waiting_recipients(home):
    with open(os.path.join(home.control, "concurrencyremote"), "wb") as f:
        f.write(b"1\n")
    h = makeHarness(home)  # the agents keep every delivery running until told
    h.inject(b"joe@test.example", [b"a@one.example", b"b@two.example", b"c@three.example"])
    [m] = h.service.messages.values()
    ch = m.channels["remote"]
    assert [r.recipient for r in h.remote.requests] == [b"a@one.example"]
    assert ch.inPass and ch.outstanding == 3

    admin = QueueAdmin(h.service)
    outcome = admin.hold([m.id]).result
    assert (outcome.done, outcome.errors) == ([m.id], [])
    assert os.path.exists(os.path.join(home.queue.path, "hold", str(m.id)))
    assert list(h.service.dispatch.ready["remote"]) == []
    assert ch.inPass and ch.outstanding == 1  # only the running delivery is left

    h.remote.held[0].callback(Report.success(b"accepted\n"))
    h.clock.advance(0)
    assert not ch.inPass
    assert [e.address for e in ch.undone()] == [b"b@two.example", b"c@three.example"]
    h.service.alrm()
    h.clock.advance(4000)  # past the next pass: held, nothing starts
    assert len(h.remote.requests) == 1

    assert admin.release([m.id]).result.errors == []
    assert admin.retry([m.id]).result.errors == []
    h.clock.advance(0)
    assert [r.recipient for r in h.remote.requests][1:] == [b"b@two.example"]
    h.remote.held[1].callback(Report.success(b"accepted\n"))
    h.clock.advance(0)
    assert [r.recipient for r in h.remote.requests][1:] == [b"b@two.example", b"c@three.example"]
