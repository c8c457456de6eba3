"""
Remote deliveries per destination (docs/behaviour/queue.md 5.6, control.md 2.3): one slow domain
takes at most C{concurrencydestination} of the C{concurrencyremote} slots, so mail for the other
domains keeps flowing. The queue service runs with a Clock over a real queue directory; the remote
agent is a spy that holds every delivery until the test answers it.
"""

from __future__ import annotations

import os

from qmtwist.control import Control
from qmtwist.delivery import Report
from qmtwist.queue.dispatch import destination, destinationLimit
from tests.unit.queue.test_service import makeHarness

SLOW = b"slow.example"


def setControl(home, name: str, value: bytes) -> None:
    with open(os.path.join(home.control, name), "wb") as f:
        f.write(value)


class BatchSpy:
    """Wraps the harness's remote spy to record how many requests each deliver() call carried."""

    def __init__(self, spy) -> None:
        self.spy = spy
        self.calls: list[list[bytes]] = []

    def deliver(self, requests):
        self.calls.append([r.recipient for r in requests])
        return self.spy.deliver(requests)

    def reload(self):
        return self.spy.reload()

    def stop(self):
        return self.spy.stop()


def started(h) -> list[bytes]:
    return [r.recipient for r in h.remote.requests]


def answer(h, recipient: bytes, report: Report) -> None:
    i = started(h).index(recipient)
    h.remote.held[i].callback(report)


def test_destination_is_the_domain_without_case():
    assert destination(b"Bob@Slow.Example") == SLOW
    assert destination(b"a@b@Slow.EXAMPLE") == SLOW
    assert destination(b"nodomain") == b"nodomain"


def test_default_limit_is_half_the_remote_slots_at_least_one():
    assert destinationLimit(Control()) == 10
    assert destinationLimit(Control(concurrencyremote=1)) == 1
    assert destinationLimit(Control(concurrencyremote=20, concurrencydestination=3)) == 3
    assert destinationLimit(Control(concurrencyremote=20, concurrencydestination=50)) == 50


def test_a_slow_domain_does_not_hold_the_slots_of_a_fast_one(home):
    """
    A message with 100 recipients at a domain whose deliveries never end takes half of the 20
    remote slots; five messages to another domain then start at once and finish, while the slow
    domain still holds its ten.
    """
    h = makeHarness(home)  # the remote spy holds every delivery until answered
    h.inject(b"joe@test.example", [b"r%d@slow.example" % i for i in range(100)])
    assert len(started(h)) == 10 and all(r.endswith(b"@slow.example") for r in started(h))
    fast = [b"u%d@fast.example" % i for i in range(5)]
    for r in fast:
        h.inject(b"joe@test.example", [r])
    assert started(h)[10:] == fast
    assert h.service.active["remote"] == 15
    for r in fast:
        answer(h, r, Report.success(b"127.0.0.1 accepted message./Remote host said: 250 ok/"))
    assert h.service.active["remote"] == 10
    # the slow domain's share freed no slot for more of its own recipients meanwhile
    assert sum(r.endswith(b"@slow.example") for r in started(h)) == 10


def test_a_finished_delivery_starts_the_next_passed_over_one_in_order(home):
    h = makeHarness(home)
    setControl(home, "concurrencydestination", b"2\n")
    h.service.hup()
    h.inject(b"joe@test.example", [b"a%d@Slow.Example" % i for i in range(4)])
    h.inject(b"joe@test.example", [b"b0@slow.example"])  # same domain, other case
    assert started(h) == [b"a0@Slow.Example", b"a1@Slow.Example"]
    answer(h, b"a0@Slow.Example", Report.success(b"ok/"))
    assert started(h)[2:] == [b"a2@Slow.Example"]
    answer(h, b"a1@Slow.Example", Report.deferral(b"Try again later. (#4.3.0)/"))
    answer(h, b"a2@Slow.Example", Report.success(b"ok/"))
    assert started(h)[3:] == [b"a3@Slow.Example", b"b0@slow.example"]


def test_recipients_of_one_message_still_go_to_the_agent_together(home):
    """The agent gives recipients sharing a route one connection: the dispatcher keeps them in
    one call, cut only where a domain's share is used up."""
    h = makeHarness(home)
    spy = BatchSpy(h.remote)
    h.service.dispatch.agents["remote"] = spy
    setControl(home, "concurrencydestination", b"3\n")
    h.service.hup()
    h.inject(b"joe@test.example",
             [b"a@x.example", b"b@y.example", b"c@x.example", b"d@x.example", b"e@x.example",
              b"f@y.example"])
    assert spy.calls == [[b"a@x.example", b"b@y.example", b"c@x.example", b"d@x.example",
                          b"f@y.example"]]


def test_the_total_remote_limit_still_applies(home):
    h = makeHarness(home)
    setControl(home, "concurrencyremote", b"4\n")
    setControl(home, "concurrencydestination", b"4\n")
    h.service.hup()
    h.inject(b"joe@test.example", [b"a%d@one.example" % i for i in range(3)])
    h.inject(b"joe@test.example", [b"b%d@two.example" % i for i in range(3)])
    assert started(h) == [b"a0@one.example", b"a1@one.example", b"a2@one.example",
                          b"b0@two.example"]
    assert h.service.active["remote"] == 4
    answer(h, b"a0@one.example", Report.success(b"ok/"))
    assert started(h)[4:] == [b"b1@two.example"]
