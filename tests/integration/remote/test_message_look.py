"""
The remote agent looks at a message file once per delivery on a thread: the partial-last-line
check (remote.md 11.4) and the DKIM signature (dkim.md 18.2) share one thread job. A real sink on
loopback; the context's thread runner records which job each look ran in.
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
    OK, control, message, ports, request, sinkOn)


@pytest_twisted.ensureDeferred
async def test_partial_line_check_and_signing_run_in_one_thread_job(
        home, tmp_path, ports, monkeypatch) -> None:  # noqa: F811
    sink = SMTPSinkFactory()
    port = sinkOn(ports, sink)
    control(home, "smtproutes", b":127.0.0.1:%d\n" % port)
    jobs = threading.local()
    counter = [0]
    looks: list[tuple[str, int]] = []

    def runInThread(f):
        counter[0] += 1
        number = counter[0]

        def job():
            jobs.number = number
            return f()

        return deferToThread(job)

    realPartial, realSign = smtpclient.hasPartialFinalLine, dkimDelivery.signFile

    def partial(path):
        looks.append(("partial", jobs.number))
        return realPartial(path)

    def sign(*a, **kw):
        looks.append(("sign", jobs.number))
        return realSign(*a, **kw)

    monkeypatch.setattr(smtpclient, "hasPartialFinalLine", partial)
    monkeypatch.setattr(dkimDelivery, "signFile", sign)
    ctx = Context(home, reactor, None, ControlCache(home), runInThread)
    agent = RemoteAgent(ctx, makeResolver(reactor, [("127.0.0.1", 9)]), dnsTimeout=(0.5,))
    [report] = await defer.gatherResults(
        agent.deliver([request(message(tmp_path), b"bob@far.example")]))
    await agent.stop()
    assert report == Report.success(b"127.0.0.1 accepted message.\n" + OK)
    assert [what for what, _ in looks] == ["partial", "sign"]
    assert looks[0][1] == looks[1][1], looks
