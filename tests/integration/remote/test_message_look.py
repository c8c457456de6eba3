"""
The remote agent looks at a message file once per delivery, in one thread job (remote.md 11.4,
dkim.md 18.2): the partial-last-line check, the DKIM signature and, for a message of at most
C{INLINE_LIMIT} bytes, the message itself, which then goes out with its final dot in one write.
A larger message is streamed from the file. A real sink on loopback; the context's thread runner
counts the jobs.
"""

from __future__ import annotations

import threading

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread

from qmtwist.context import Context, ControlCache
from qmtwist.delivery import Report
from qmtwist.dkim import delivery as dkimDelivery
from qmtwist.remote import smtpclient
from qmtwist.remote.agent import RemoteAgent
from qmtwist.remote.mx import makeResolver
from tests.integration.remote.peers import SMTPSinkFactory
from tests.integration.remote.test_delivery import (  # noqa: F401
    OK, WIRE, BODY, control, message, ports, request, sinkOn)


def _counting(monkeypatch):
    """A thread runner numbering its jobs, and the looks at the message recorded per job."""
    jobs = threading.local()
    counter: list = [0]  # the number of jobs, then each job's function
    looks: list[tuple[str, int]] = []

    def runInThread(f):
        counter[0] += 1
        number = counter[0]
        counter.append(repr(f))  # the job's function: a partial names the file it opens

        def job():
            jobs.number = number
            return f()

        return deferToThread(job)

    realLook, realSign = smtpclient.lookAtMessage, dkimDelivery.signFile

    def look(path, *a):
        looks.append(("look", jobs.number))
        return realLook(path, *a)

    def sign(*a, **kw):
        looks.append(("sign", jobs.number))
        return realSign(*a, **kw)

    monkeypatch.setattr(smtpclient, "lookAtMessage", look)
    monkeypatch.setattr(dkimDelivery, "signFile", sign)
    return runInThread, counter, looks


async def _deliverOne(home, ports, runInThread, path):  # noqa: F811
    sink = SMTPSinkFactory()
    port = sinkOn(ports, sink)
    control(home, "smtproutes", b":127.0.0.1:%d\n" % port)
    ctx = Context(home, reactor, None, ControlCache(home), runInThread)
    agent = RemoteAgent(ctx, makeResolver(reactor, [("127.0.0.1", 9)]), dnsTimeout=(0.5,))
    [report] = await defer.gatherResults(agent.deliver([request(path, b"bob@far.example")]))
    await agent.stop()
    return report, sink


@pytest_twisted.ensureDeferred
async def test_small_message_takes_one_thread_job(home, tmp_path, ports, monkeypatch) -> None:  # noqa: F811
    """Partial-line check, signing and the message read share one job; nothing opens it again."""
    runInThread, counter, looks = _counting(monkeypatch)
    path = message(tmp_path)
    report, sink = await _deliverOne(home, ports, runInThread, path)
    assert report == Report.success(b"127.0.0.1 accepted message.\n" + OK)
    assert [what for what, _ in looks] == ["look", "sign"]
    assert looks[0][1] == looks[1][1], looks
    later = counter[1 + looks[0][1]:]
    assert not [j for j in later if path in j], f"the message opened again after the look: {later}"
    assert [m.raw for m in sink.messages] == [WIRE]


@pytest_twisted.ensureDeferred
async def test_large_message_is_streamed(home, tmp_path, ports, monkeypatch) -> None:  # noqa: F811
    """Above INLINE_LIMIT the message is not held in memory: it is opened and streamed."""
    runInThread, counter, looks = _counting(monkeypatch)
    line = b"x" * 99 + b"\n"
    big = BODY + line * (smtpclient.INLINE_LIMIT // len(line) + 10)
    path = message(tmp_path, big)
    report, sink = await _deliverOne(home, ports, runInThread, path)
    assert report == Report.success(b"127.0.0.1 accepted message.\n" + OK)
    assert looks[0][1] == looks[1][1], looks
    later = counter[1 + looks[0][1]:]
    assert [j for j in later if path in j], f"the large message was not opened to stream: {later}"
    lines = smtpclient.INLINE_LIMIT // len(line) + 10
    assert [m.raw for m in sink.messages] == [WIRE + (b"x" * 99 + b"\r\n") * lines]
