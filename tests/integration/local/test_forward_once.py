"""
Forwards (`&address` lines) are exactly-once across a crash (docs/behaviour/local.md 4.6,
docs/behaviour/queue.md 5.10): a delivery repeated after its forward was committed, but before
the queue recorded its result, finds the forward's record and does not queue it again.
"""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from attrs import define, field
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from zope.interface import implementer

from qmtwist.context import Context, ControlCache
from qmtwist.delivery import Outcome, Report
from qmtwist.interfaces import IDeliveryAgent
from qmtwist.local.agent import LocalAgent
from qmtwist.queue import fwd
from qmtwist.queue.commit import Injector
from qmtwist.queue.service import QueueService
from tests.integration.local.helpers import World, deliverOne, maildirFiles


@pytest.fixture
def world():
    w = World.make()
    yield w
    w.cleanup()


@pytest_twisted.ensureDeferred
async def test_repeated_delivery_does_not_forward_again(world):
    """The crash window: the forward is committed, the D mark never happens, the delivery runs
    again as a possible repeat. One forwarded copy, and the same report both times."""
    h = world.userHome("bob")
    world.dotqmail(h, ".qmail", b"./Maildir/\n&carol@test.example\n&dave@test.example\n")
    agent = world.agent()
    mess = world.mess()
    first = await deliverOne(agent, world.request(b"bob@test.example", mess))
    [(env, _)] = world.todo()
    again = await deliverOne(agent, world.request(b"bob@test.example", mess, repeat=True))
    assert len(world.todo()) == 1
    assert first == again == Report(Outcome.SUCCESS, b"did 1+2+0\nqp %d\n" % env.qp)
    assert len(maildirFiles(os.path.join(h, "Maildir"))) == 1
    # another recipient of the same message (another position) forwards on its own
    await deliverOne(agent, world.request(b"bob@test.example", mess, position=1))
    assert len(world.todo()) == 2
    await agent.stop()


@pytest_twisted.ensureDeferred
async def test_failed_forward_is_queued_by_the_retry(world):
    """No record without a commit: a forward that the queue refused is queued next time."""
    h = world.userHome("erin")
    world.dotqmail(h, ".qmail", b"&carol@test.example\n")
    agent = world.agent()
    mess = world.mess()
    todo = world.home.queue.sub("todo")
    os.rename(todo, todo + ".away")  # the todo link fails: qq trouble creating files (66)
    try:
        r = await deliverOne(agent, world.request(b"erin@test.example", mess))
    finally:
        os.rename(todo + ".away", todo)
    assert r == Report(Outcome.DEFERRAL, b"Unable to forward message: qq trouble creating files"
                                         b" in queue (#4.3.0).\n")
    assert os.listdir(world.home.queue.sub("fwd")) == []
    r = await deliverOne(agent, world.request(b"erin@test.example", mess, repeat=True))
    [(env, _)] = world.todo()
    assert r == Report(Outcome.SUCCESS, b"did 0+1+0\nqp %d\n" % env.qp)
    await agent.stop()


@implementer(IDeliveryAgent)
@define
class Crashing:
    """The real agent does all its work; its reports never reach the queue (the crash)."""

    agent: LocalAgent
    channel: str = "local"
    held: list[Deferred] = field(factory=list)

    def deliver(self, requests):
        for d in self.agent.deliver(requests):
            self.held.append(d)
        return [Deferred() for _ in requests]

    def reload(self):
        self.agent.reload()

    def stop(self):
        return self.agent.stop()


def daemon(home, crash: bool):
    """One life of the daemon's queue side: injector, queue service and the real LocalAgent,
    everything synchronous on a Clock (files are real)."""
    clock = Clock()
    clock.advance(time.time())
    holder: list[QueueService] = []
    injector = Injector(home.queue, home.control, clock, maybeDeferred,
                        onCommitted=lambda ids: holder[0].preprocess(ids))
    ctx = Context(home, clock, injector, ControlCache(home), maybeDeferred)
    local = LocalAgent(ctx, root=False)
    agent = Crashing(local) if crash else local
    svc = QueueService(home.queue, ctx.controls, clock, maybeDeferred,
                       {"local": agent, "remote": Crashing(local, "remote")}, injector)
    holder.append(svc)
    svc.startService()
    return svc, injector


def queueFiles(home) -> list[str]:
    out = []
    for root, _, files in os.walk(home.queue.path):
        if "/lock" not in root:
            out.extend(os.path.join(root, f) for f in files)
    return out


def test_restart_after_crash_between_forward_commit_and_done_mark(world):
    """The queue service is killed after bob's delivery queued its forward (and after carol
    got the forwarded copy) but before either result was recorded; after the restart every
    Maildir holds one copy and the queue, fwd/ included, is empty."""
    home = world.home
    bob, carol = world.userHome("bob"), world.userHome("carol")
    world.dotqmail(bob, ".qmail", b"./Maildir/\n&carol@test.example\n")
    svc, injector = daemon(home, crash=True)
    injector.inject(b"joe@far.example", [b"bob@test.example"], b"Subject: s\n\nonce\n",
                    b"by uid 0")
    assert len(maildirFiles(os.path.join(bob, "Maildir"))) == 1
    assert len(maildirFiles(os.path.join(carol, "Maildir"))) == 1
    records = [fwd.readRecord(home.queue, n) for n in os.listdir(home.queue.sub("fwd"))]
    os.close(svc._mutexFd)  # the process is gone: its lock with it
    svc2, _ = daemon(home, crash=False)
    assert len(maildirFiles(os.path.join(bob, "Maildir"))) == 1
    [copy] = maildirFiles(os.path.join(carol, "Maildir"))
    assert b"Delivered-To: bob@test.example\n" in copy and copy.endswith(b"\n\nonce\n")
    assert queueFiles(home) == []
    assert svc2.messages == {}
    # the record that did it, and which went with bob's D mark
    [record] = records
    assert copy.startswith(b"Return-Path: <joe@far.example>\nDelivered-To: carol@test.example\n"
                           b"Received: (qmail %d invoked by uid 0); " % record.qp)
