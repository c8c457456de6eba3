"""The daemon's injector tells its observers of every commit round (docs/behaviour/queue.md 5.5)."""

from __future__ import annotations

import os
import time

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from qmtwist.interfaces import IInjector
from qmtwist.queue.commit import Injector


def makeInjector(home, **kw) -> Injector:
    clock = Clock()
    clock.advance(time.time())
    return Injector(home.queue, home.control, clock, maybeDeferred, **kw)


def test_provides_the_whole_interface(home):
    assert verifyObject(IInjector, makeInjector(home))


def test_observers_learn_each_round_before_the_committer(home):
    injector = makeInjector(home)
    events: list[tuple[str, object]] = []
    injector.addObserver(lambda ids: events.append(("first", ids)))
    injector.addObserver(lambda ids: events.append(("second", ids)))
    d = injector.inject(b"a@x.example", [b"b@y.example"], b"Subject: s\n\nbody\n", b"by uid 0")
    d.addCallback(lambda q: events.append(("queued", q.id)))
    ids = events[0][1]
    assert events == [("first", ids), ("second", ids), ("queued", ids[0])]


def test_a_failed_message_is_not_observed(home):
    injector = makeInjector(home)
    seen: list[list[int]] = []
    injector.addObserver(seen.append)
    w = injector.newMessage(b"by uid 0")
    w.write(b"Subject: s\n\n")
    todo = home.queue.sub("todo")
    mode = os.stat(todo).st_mode & 0o7777
    os.rmdir(todo)  # the todo link fails: qmail-queue's 66
    try:
        failures: list = []
        w.commit(b"a@x.example", [b"b@y.example"]).addErrback(failures.append)
    finally:
        os.mkdir(todo, mode)
        os.chmod(todo, mode)
    assert seen == [] and failures[0].value.code == 66


def test_onCommitted_is_a_first_observer(home):
    seen: list[str] = []
    injector = makeInjector(home, onCommitted=lambda ids: seen.append("given"))
    injector.addObserver(lambda ids: seen.append("added"))
    injector.inject(b"", [b"b@y.example"], b"x\n", b"by uid 0")
    assert seen == ["given", "added"]
