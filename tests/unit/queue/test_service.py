"""
The queue service (qmail-send) driven with a Clock, synchronous file operations and spy agents
over a real queue directory.
"""

from __future__ import annotations

import os
import time

import pytest
from attrs import define, field
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from qmtwist.context import ControlCache
from qmtwist.delivery import DeliveryRequest, Report
from qmtwist.interfaces import IDeliveryAgent
from qmtwist.queue.commit import Injector
from qmtwist.queue.envelope import decodeChannel, decodeTodo
from qmtwist.queue.service import QueueService
from qmtwist.queue.store import inject
from tests.bounceparts import qsbmf
from tests.conftest import logLines


@implementer(IDeliveryAgent)
@define
class SpyAgent:
    """Records requests; answers with C{answer(request)} or holds the Deferred when it is None."""

    channel: str
    answer: object = None
    requests: list[DeliveryRequest] = field(factory=list)
    held: list[Deferred] = field(factory=list)
    reloads: int = 0

    def deliver(self, requests):
        out = []
        for r in requests:
            self.requests.append(r)
            if self.answer is None:
                d = Deferred()
                self.held.append(d)
                out.append(d)
            else:
                out.append(succeed(self.answer(r)))
        return out

    def reload(self):
        self.reloads += 1

    def stop(self):
        return succeed(None)


@define
class Harness:
    home: object
    clock: Clock
    injector: Injector
    service: QueueService
    local: SpyAgent
    remote: SpyAgent

    def inject(self, sender, recipients, body=b"Subject: t\n\nhello\n"):
        d = self.injector.inject(sender, recipients, body, b"by uid 0")
        return d.result

    def queueFiles(self):
        out = []
        for root, _, files in os.walk(self.home.queue.path):
            if "/lock" in root:
                continue
            out.extend(os.path.join(root, f) for f in files)
        return sorted(out)

    def todo(self):
        return sorted(int(n) for n in os.listdir(self.home.queue.sub("todo")))


def makeHarness(home, local=None, remote=None, start=True, runInThread=maybeDeferred) -> Harness:
    clock = Clock()
    clock.advance(time.time())
    localAgent = SpyAgent("local", local)
    remoteAgent = SpyAgent("remote", remote)
    holder: list[QueueService] = []
    injector = Injector(home.queue, home.control, clock, maybeDeferred,
                        onCommitted=lambda ids: holder[0].preprocess(ids))
    svc = QueueService(home.queue, ControlCache(home), clock, runInThread,
                       {"local": localAgent, "remote": remoteAgent}, injector)
    holder.append(svc)
    if start:
        svc.startService()
    return Harness(home, clock, injector, svc, localAgent, remoteAgent)


def ok(r):
    return Report.success(b"did 1+0+0\n")


def no(r):
    return Report.failure(b"Sorry, no mailbox here by that name. (#5.1.1)\n")


def later(r):
    return Report.deferral(b"Try again later. (#4.3.0)\n")


def test_agents_provide_interface():
    assert verifyObject(IDeliveryAgent, SpyAgent("local"))


def test_local_success_removes_everything_and_logs_qmail_send_lines(home, logEvents):
    h = makeHarness(home, local=ok)
    q = h.inject(b"joe@test.example", [b"fred@test.example"])
    assert h.queueFiles() == []
    [req] = h.local.requests
    assert req.recipient == b"fred@test.example"
    assert req.sender == b"joe@test.example"
    assert req.msgId == q.id and req.position == 0 and req.mayBeRepeat is False
    lines = [line for line in logLines(logEvents) if not line.startswith("status:")]
    assert lines[0] == f"new msg {q.id}"
    assert lines[1].startswith(f"info msg {q.id}: bytes ")
    assert lines[1].endswith(f" from <joe@test.example> qp {q.qp} uid 0")
    assert lines[2:5] == [
        f"starting delivery 1: msg {q.id} to local fred@test.example",
        f"delivery 1: msg {q.id}: success: did_1+0+0/",
        f"end msg {q.id}",
    ]


def test_info_line_reports_mess_size(home, logEvents):
    h = makeHarness(home, local=ok)
    q = h.inject(b"joe@test.example", [b"fred@test.example"])
    info = [line for line in logLines(logEvents) if line.startswith("info msg")]
    received = b"Received: (qmail %d invoked by uid 0); " % q.qp
    # DATE822 is 25 or 26 bytes depending on the day of the month.
    sizes = {len(received) + n + 1 + len(b"Subject: t\n\nhello\n") for n in (25, 26)}
    assert any(info[0] == f"info msg {q.id}: bytes {s} from <joe@test.example> qp {q.qp} uid 0"
               for s in sizes)


def test_local_and_remote_channels_and_status_lines(home, logEvents):
    h = makeHarness(home, local=ok, remote=later)
    q = h.inject(b"joe@test.example", [b"a@test.example", b"b@elsewhere.example"])
    assert [r.recipient for r in h.remote.requests] == [b"b@elsewhere.example"]
    lines = logLines(logEvents)
    assert "status: local 0/10 remote 0/20" in lines
    assert "status: local 1/10 remote 0/20" in lines
    assert any(line.startswith(f"delivery 2: msg {q.id}: deferral: Try_again_later._(#4.3.0)/")
               for line in lines)


def test_remote_retry_follows_qmail_schedule(home):
    h = makeHarness(home, remote=later)
    q = h.inject(b"joe@test.example", [b"b@elsewhere.example"])
    birth = os.stat(home.queue.info(q.id)).st_mtime
    assert len(h.remote.requests) == 1
    h.clock.advance(birth + 400 - h.clock.seconds() - 1)
    assert len(h.remote.requests) == 1
    h.clock.advance(1.5)
    assert len(h.remote.requests) == 2
    assert h.remote.requests[1].mayBeRepeat is True


def test_permanent_failure_bounces_to_sender_in_qsbmf(home, logEvents):
    h = makeHarness(home, local=no)
    h.local.answer = lambda r: ok(r) if r.recipient == b"joe@test.example" else no(r)
    q = h.inject(b"joe@test.example", [b"nobody@test.example"], b"Subject: lost\n\nbody\n")
    bounceReq = [r for r in h.local.requests if r.recipient == b"joe@test.example"]
    assert len(bounceReq) == 1
    assert bounceReq[0].sender == b""
    lines = logLines(logEvents)
    assert any(line.startswith(f"bounce msg {q.id} qp ") for line in lines)
    assert lines.index(f"end msg {q.id}") > [
        i for i, line in enumerate(lines) if line.startswith(f"bounce msg {q.id}")][0]
    assert h.queueFiles() == []


def test_bounce_text(home):
    captured = {}

    def answer(r):
        if r.recipient == b"nobody@test.example":
            return no(r)
        with open(r.messPath, "rb") as f:
            captured["bounce"] = f.read()
        return ok(r)

    h = makeHarness(home, local=answer)
    h.inject(b"joe@test.example", [b"nobody@test.example"], b"Subject: lost\n\nbody\n")
    text = captured["bounce"]
    header, _, body = text.partition(b"\n\n")
    assert header.startswith(b"Received: (qmail ")
    assert b"invoked for bounce); " in header
    assert b"\nFrom: MAILER-DAEMON@test.example\nTo: joe@test.example\nSubject: failure notice" \
        in header
    body = qsbmf(text)  # the first part of the report: qmail's text (queue.md 5.7.1)
    assert body.startswith(
        b"Hi. This is the qmail-send program at test.example.\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        b"<nobody@test.example>:\n"
        b"Sorry, no mailbox here by that name. (#5.1.1)\n\n"
        b"--- Below this line is a copy of the message.\n\n"
        b"Return-Path: <joe@test.example>\n"
        b"Received: (qmail ")
    assert body.endswith(b"\nSubject: lost\n\nbody\n")


def test_failed_bounce_becomes_double_bounce_then_triple_is_dropped(home, logEvents):
    h = makeHarness(home, local=no)
    q = h.inject(b"joe@test.example", [b"nobody@test.example"])
    recips = [(r.sender, r.recipient) for r in h.local.requests]
    assert recips == [
        (b"joe@test.example", b"nobody@test.example"),
        (b"", b"joe@test.example"),
        (b"#@[]", b"postmaster@test.example"),
    ]
    lines = logLines(logEvents)
    assert any(line.startswith("triple bounce: discarding bounce/") for line in lines)
    assert h.queueFiles() == []
    assert q.id


def test_doublebounceto_control(home):
    with open(os.path.join(home.control, "doublebounceto"), "wb") as f:
        f.write(b"admin\n")
    h = makeHarness(home, local=no)
    h.inject(b"", [b"nobody@test.example"])
    assert [r.recipient for r in h.local.requests][-1] == b"admin@test.example"


def test_message_older_than_lifetime_bounces_at_next_retry(home):
    with open(os.path.join(home.control, "queuelifetime"), "wb") as f:
        f.write(b"3600\n")
    texts = []

    def keep(r):
        with open(r.messPath, "rb") as f:
            texts.append(f.read())
        return ok(r)

    h = makeHarness(home, remote=later, local=keep)
    q = h.inject(b"joe@test.example", [b"b@elsewhere.example"])
    info = home.queue.info(q.id)
    old = h.clock.seconds() - 4000
    os.utime(info, (old, old))
    h.service.alrm()
    assert h.remote.requests[-1].lastPass is True
    bounces = [r for r in h.local.requests if r.sender == b""]
    assert len(bounces) == 1
    [text] = texts
    assert (b"<b@elsewhere.example>:\nTry again later. (#4.3.0)\n"
            b"I'm not going to try again; this message has been in the queue too long.\n\n") in text


def test_touching_info_rejuvenates(home):
    with open(os.path.join(home.control, "queuelifetime"), "wb") as f:
        f.write(b"3600\n")
    h = makeHarness(home, remote=later, local=ok)
    q = h.inject(b"joe@test.example", [b"b@elsewhere.example"])
    info = home.queue.info(q.id)
    old = h.clock.seconds() - 4000
    os.utime(info, (old, old))
    os.utime(info, None)  # touch (FAQ 7.3)
    h.service.alrm()
    assert len(h.remote.requests) == 2
    assert h.remote.requests[-1].lastPass is False
    assert [r for r in h.local.requests if r.sender == b""] == []
    assert os.path.exists(info)


def test_hup_rereads_locals(home, logEvents):
    h = makeHarness(home, local=ok, remote=later)
    h.inject(b"joe@test.example", [b"boss@af.mil"])
    assert [r.recipient for r in h.remote.requests] == [b"boss@af.mil"]
    with open(os.path.join(home.control, "locals"), "ab") as f:
        f.write(b"af.mil\n")
    h.inject(b"joe@test.example", [b"boss@af.mil"])
    assert len(h.local.requests) == 0
    h.service.hup()
    assert "hup: reread control files, users and rules" in logLines(logEvents)
    h.inject(b"joe@test.example", [b"boss@af.mil"])
    assert [r.recipient for r in h.local.requests] == [b"boss@af.mil"]
    assert h.local.reloads == 1 and h.remote.reloads == 1


def test_malformed_control_keeps_last_good_value(home, logEvents):
    h = makeHarness(home, local=None)
    with open(os.path.join(home.control, "concurrencylocal"), "wb") as f:
        f.write(b"2\n")
    h.service.hup()
    with open(os.path.join(home.control, "concurrencylocal"), "wb") as f:
        f.write(b"lots\n")
    h.service.hup()
    assert ("warning: control/concurrencylocal line 1: not a number; keeping previous value 2"
            in logLines(logEvents))
    h.inject(b"joe@test.example", [b"a%d@test.example" % i for i in range(5)])
    assert len(h.local.requests) == 2
    assert h.service.active["local"] == 2
    h.local.held[0].callback(ok(None))
    assert len(h.local.requests) == 3


def test_concurrency_zero_holds_channel(home):
    with open(os.path.join(home.control, "concurrencyremote"), "wb") as f:
        f.write(b"0\n")
    h = makeHarness(home, remote=ok)
    h.inject(b"joe@test.example", [b"b@elsewhere.example"])
    assert h.remote.requests == []


def test_alrm_retries_deferred_now(home):
    h = makeHarness(home, remote=later)
    h.inject(b"joe@test.example", [b"b@elsewhere.example"])
    assert len(h.remote.requests) == 1
    h.clock.advance(5)
    h.service.alrm()
    h.clock.advance(0)
    assert len(h.remote.requests) == 2


def test_queueextra_adds_recipient_first(home):
    with open(os.path.join(home.control, "queueextra"), "wb") as f:
        f.write(b"log\n")
    h = makeHarness(home, local=ok)
    h.service.stopService()
    q = h.inject(b"joe@test.example", [b"fred@test.example"])
    with open(home.queue.todo(q.id), "rb") as f:
        env = decodeTodo(f.read())
    assert env.recipients == (b"log", b"fred@test.example")


def test_restart_resumes_and_never_redelivers_done_recipients(home):
    h = makeHarness(home, local=None)
    q = h.inject(b"joe@test.example", [b"a@test.example", b"b@test.example"])
    first, second = h.local.held
    first.callback(ok(None))
    path = home.queue.local(q.id)
    with open(path, "rb") as f:
        assert [e.done for e in decodeChannel(f.read())] == [True, False]
    # The process dies with b in flight: a new service over the same queue.
    os.close(h.service._mutexFd)
    h2 = makeHarness(home, local=ok)
    assert [r.recipient for r in h2.local.requests] == [b"b@test.example"]
    assert h2.local.requests[0].mayBeRepeat is True
    assert h2.queueFiles() == []


def test_restart_preprocesses_todo_left_by_a_crash(home):
    h = makeHarness(home, local=ok, start=False)
    q = h.inject(b"joe@test.example", [b"a@test.example"])
    assert h.todo() == [q.id]
    h.service.startService()
    assert [r.recipient for r in h.local.requests] == [b"a@test.example"]
    assert h.queueFiles() == []


def test_second_service_cannot_start(home, logEvents):
    h = makeHarness(home)
    other = makeHarness(home, start=False).service
    with pytest.raises(RuntimeError):
        other.lockMutex()
    assert "alert: cannot start: qmail-send is already running" in logLines(logEvents)
    assert h.service.running


def test_stop_waits_for_deliveries_and_logs_exiting(home, logEvents):
    h = makeHarness(home, local=None)
    q = h.inject(b"joe@test.example", [b"a@test.example"])
    d = h.service.stopService()
    assert not d.called
    assert "status: local 1/10 remote 0/20 exitasap" in logLines(logEvents)
    h.local.held[0].callback(ok(None))
    assert d.called
    assert logLines(logEvents)[-1] == "status: exiting"
    assert f"end msg {q.id}" in logLines(logEvents)
    assert h.queueFiles() == []


def test_virtualdomain_prefix_removed_in_bounce(home):
    with open(os.path.join(home.control, "virtualdomains"), "wb") as f:
        f.write(b"nowhere.mil:bob\n")
    captured = []

    def answer(r):
        if r.recipient == b"bob-info@nowhere.mil":
            return no(r)
        with open(r.messPath, "rb") as f:
            captured.append(f.read())
        return ok(r)

    h = makeHarness(home, local=answer)
    h.inject(b"joe@test.example", [b"info@nowhere.mil"])
    assert b"\n<info@nowhere.mil>:\n" in captured[0]


def test_verp_sender_expanded_per_recipient(home):
    h = makeHarness(home, remote=ok)
    h.inject(b"list-owner@test.example-@[]", [b"box@dom.example"])
    assert h.remote.requests[0].sender == b"list-ownerbox=dom.example@test.example"


def test_status_line_shows_raised_concurrencyremote_after_hup(home, logEvents):
    """
    FAQ 8.1: echo 100 > control/concurrencyremote; HUP -> status lines say remote r/100. Two
    domains, as each may take half the slots (concurrencydestination's default).
    """
    h = makeHarness(home, remote=None)
    with open(os.path.join(home.control, "concurrencyremote"), "wb") as f:
        f.write(b"150\n")
    h.service.hup()
    h.inject(b"joe@test.example", [b"r%d@d%d.example" % (i, i % 2) for i in range(130)])
    assert len(h.remote.requests) == 130  # no ceiling of 120
    assert "status: local 0/10 remote 130/150" in logLines(logEvents)


def test_local_deferral_retried_after_100_seconds(home):
    """A local delivery that defers (a program exiting 111) is retried on qmail's local schedule."""
    h = makeHarness(home, local=later)
    q = h.inject(b"joe@test.example", [b"fred@test.example"])
    birth = os.stat(home.queue.info(q.id)).st_mtime
    h.clock.advance(birth + 100 - h.clock.seconds() - 1)
    assert len(h.local.requests) == 1
    h.clock.advance(1.5)
    assert len(h.local.requests) == 2
    h.local.answer = ok
    h.clock.advance(birth + 400 - h.clock.seconds() + 1)
    assert len(h.local.requests) == 3
    assert h.queueFiles() == []


def test_messages_committed_during_recovery_wait_for_it(home):
    """A new message must not be loaded twice (by the start-up scan and by preprocessing)."""
    h = makeHarness(home, local=None)
    old = h.inject(b"joe@test.example", [b"a@test.example"])
    os.close(h.service._mutexFd)  # the daemon dies with the delivery in flight
    held = []

    def holdFirst(f):
        if not held:
            d = Deferred()
            held.append((f, d))
            return d
        return maybeDeferred(f)

    h2 = makeHarness(home, local=ok, runInThread=holdFirst)
    new = h2.inject(b"joe@test.example", [b"b@test.example"])
    assert h2.local.requests == []  # waiting for the start-up scan
    f, d = held[0]
    d.callback(f())
    got = sorted((r.msgId, r.recipient) for r in h2.local.requests)
    assert got == sorted([(old.id, b"a@test.example"), (new.id, b"b@test.example")])
    assert h2.queueFiles() == []


def test_recovered_channel_with_every_recipient_done_finishes(home, logEvents):
    h = makeHarness(home, local=None)
    q = h.inject(b"joe@test.example", [b"a@test.example", b"b@test.example"])
    h.local.held[0].callback(ok(None))
    path = home.queue.local(q.id)
    with open(path, "r+b") as f:  # the second mark landed, the unlink did not: then a crash
        data = f.read()
        f.seek(data.index(b"\0Tb@") + 1)
        f.write(b"D")
    os.close(h.service._mutexFd)
    h2 = makeHarness(home, local=ok)
    assert h2.local.requests == []
    assert f"end msg {q.id}" in logLines(logEvents)
    assert h2.queueFiles() == []


def test_agent_answering_too_few_requests_defers_the_rest(home):
    class Short(SpyAgent):
        def deliver(self, requests):
            super().deliver(requests)
            return []

    h = makeHarness(home, local=ok)
    h.service.agents["local"] = Short("local", ok)
    h.inject(b"joe@test.example", [b"a@test.example"])
    assert h.service.active["local"] == 0
    assert h.service.stopService().called


def test_bounce_append_failure_is_retried_without_redelivery(home, monkeypatch, logEvents):
    from qmtwist.queue import bounce as qbounce

    real = qbounce.appendParagraph
    calls = []

    def flaky(path, para):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(28, "No space left on device")
        real(path, para)

    monkeypatch.setattr(qbounce, "appendParagraph", flaky)
    h = makeHarness(home, local=no)
    h.local.answer = lambda r: ok(r) if r.sender == b"" else no(r)
    h.inject(b"joe@test.example", [b"nobody@test.example"])
    assert "alert: unable to append to bounce message; HELP! sleeping..." in logLines(logEvents)
    assert len([r for r in h.local.requests if r.recipient == b"nobody@test.example"]) == 1
    h.clock.advance(10)
    assert len(calls) == 2
    assert len([r for r in h.local.requests if r.recipient == b"nobody@test.example"]) == 1
    assert [r.recipient for r in h.local.requests if r.sender == b""] == [b"joe@test.example"]
    assert h.queueFiles() == []


def test_second_term_abandons_deliveries_in_flight_and_records_nothing(home, logEvents):
    """docs/behaviour/queue.md 6.1: abandon() ends the wait; late reports change nothing."""
    h = makeHarness(home, local=None, remote=None)
    q = h.inject(b"joe@test.example", [b"a@test.example", b"b@test.example",
                                       b"c@elsewhere.example"])
    assert len(h.local.held) == 2 and len(h.remote.held) == 1
    stopped: list = []
    h.service.stopService().addBoth(stopped.append)
    assert stopped == []
    h.service.abandon()
    assert stopped == [None]
    lines = logLines(logEvents)
    assert lines.count("status: second TERM: abandoning 3 deliveries in flight") == 1
    assert lines[-1] == "status: exiting"
    # the reports arrive after all: a success, a permanent failure, a last-pass deferral
    h.local.held[0].callback(ok(None))
    h.local.held[1].callback(no(None))
    h.remote.held[0].callback(later(None))
    h.clock.advance(3600)
    assert logLines(logEvents)[len(lines):] == []
    for path in (home.queue.local(q.id), home.queue.remote(q.id)):
        with open(path, "rb") as f:
            assert not any(e.done for e in decodeChannel(f.read()))
    assert not os.path.exists(home.queue.bounce(q.id))
    # the restart delivers each recipient once, as possibly repeated
    h2 = makeHarness(home, local=ok, remote=ok)
    assert sorted(r.recipient for r in h2.local.requests + h2.remote.requests) == [
        b"a@test.example", b"b@test.example", b"c@elsewhere.example"]
    assert all(r.mayBeRepeat for r in h2.local.requests + h2.remote.requests)
    assert h2.queueFiles() == []


def test_second_term_cuts_short_an_agent_that_does_not_stop(home, logEvents):
    h = makeHarness(home, local=ok)
    h.inject(b"joe@test.example", [b"a@test.example"])

    @implementer(IDeliveryAgent)
    class Stuck(SpyAgent):
        def stop(self):
            return Deferred()  # e.g. a .qmail program that ignores TERM

    h.service.agents["local"] = Stuck("local")
    stopped: list = []
    h.service.stopService().addBoth(stopped.append)
    assert stopped == []  # no delivery in flight, but the local agent has not stopped yet
    h.service.abandon()
    assert stopped == [None]
    lines = logLines(logEvents)
    assert "status: second TERM: abandoning 0 deliveries in flight" in lines
    assert lines[-1] == "status: exiting"
    assert h.service._mutexFd < 0


def test_second_term_still_waits_for_preprocessing(home, logEvents):
    """Preprocessing is short and crash-safe; its results are written before the exit."""
    held: list[Deferred] = []

    def runInThread(f):
        d: Deferred = Deferred()
        held.append(d)
        d.addCallback(lambda _: f())
        return d

    h = makeHarness(home, local=ok, start=False, runInThread=runInThread)
    h.service.startService()
    held.pop(0).callback(None)  # the start-up scan
    # another process's message (this process's own are preprocessed in their commit round,
    # queue.md 5.11): the service's intake preprocesses it on a hop of its own
    inject(home.queue, b"joe@test.example", [b"a@test.example"], b"Subject: t\n\nhello\n",
           b"by uid 0", controlDir=home.control)
    h.service.scanTodo()
    held.pop(0).callback(None)  # the look at todo/
    assert len(held) == 1  # the preprocessing of the new message
    stopped: list = []
    h.service.stopService().addBoth(stopped.append)
    h.service.abandon()
    assert stopped == []
    held.pop(0).callback(None)
    while held:
        held.pop(0).callback(None)
    assert stopped == [None]
    assert logLines(logEvents)[-1] == "status: exiting"
    assert h.local.requests == []
    assert h.todo() == []


def test_one_stuck_recipient_holds_at_most_its_share_of_local_slots(home):
    """
    A user whose deliveries never end (a program that hangs) takes at most
    concurrencyrecipient of the concurrencylocal slots; mail for everyone else still flows, and
    the passed-over deliveries start, in order, as slots of that address free up.
    """
    with open(os.path.join(home.control, "concurrencylocal"), "wb") as f:
        f.write(b"4\n")
    h = makeHarness(home)  # the local spy holds every delivery until answered
    for _ in range(6):
        h.inject(b"joe@test.example", [b"stuck@test.example"])
    h.inject(b"joe@test.example", [b"bob@test.example"])
    h.inject(b"joe@test.example", [b"carol@test.example"])
    started = [r.recipient for r in h.local.requests]
    assert started.count(b"stuck@test.example") == 2  # half of 4: the default share
    assert b"bob@test.example" in started and b"carol@test.example" in started
    assert h.service.active["local"] == 4
    stuck = [d for d, r in zip(h.local.held, h.local.requests) if r.recipient == b"stuck@test.example"]
    stuck[0].callback(Report.success(b"did 1+0+0\n"))  # one of them ends: the next one starts
    started = [r.recipient for r in h.local.requests]
    assert started.count(b"stuck@test.example") == 3
    assert h.service.active["local"] == 4


def test_concurrencyrecipient_control(home):
    for name, value in (("concurrencylocal", b"10\n"), ("concurrencyrecipient", b"1\n")):
        with open(os.path.join(home.control, name), "wb") as f:
            f.write(value)
    h = makeHarness(home)
    for _ in range(3):
        h.inject(b"joe@test.example", [b"Stuck@test.example"])
    h.inject(b"joe@test.example", [b"stuck@test.example"])  # the same address, other case
    assert [r.recipient.lower() for r in h.local.requests] == [b"stuck@test.example"]
