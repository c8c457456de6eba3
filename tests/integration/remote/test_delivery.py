"""
Remote delivery end to end on loopback: a twisted.names DNS server, SMTP and QMTP sinks, and
L{RemoteAgent} driven with L{DeliveryRequest}s (docs/behaviour/remote.md 11, qmtp.md 9.3; FAQ 2.2, 2.5, 8.1).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread

from qmtwist.context import Context, ControlCache
from qmtwist.dirwatch import DirWatches
from qmtwist.delivery import DeliveryRequest, Outcome, Report
from qmtwist.remote.agent import RemoteAgent
from qmtwist.remote.mx import makeResolver
from tests.dnsserver import LoopbackDNS
from tests.conftest import logLines
from tests.integration.remote.peers import (
    QMTPSinkFactory,
    SMTPSinkFactory,
    makeCertificates,
    stopAll,
)

RECEIVED = b"Received: (qmail 1 invoked by uid 0); 25 Nov 2026 09:00:00 -0000\n"
BODY = RECEIVED + b"Subject: hi\n\n.leading dot\nline\r\nend\n"
WIRE = (
    b"Received: (qmail 1 invoked by uid 0); 25 Nov 2026 09:00:00 -0000\r\n"
    b"Subject: hi\r\n\r\n..leading dot\r\nline\r\nend\r\n"
)
OK = b"Remote host said: 250 ok 1762326189 qp 7\n"


@pytest.fixture
def ports():
    opened: list = []
    yield opened
    pytest_twisted.blockon(stopAll(opened))


def control(home, name: str, text: bytes) -> None:
    with open(os.path.join(home.control, name), "wb") as f:
        f.write(text)


def message(tmp_path, data: bytes = BODY, name: str = "1") -> str:
    path = str(tmp_path / f"mess{name}")
    with open(path, "wb") as f:
        f.write(data)
    return path


def request(path: str, rcpt: bytes, sender: bytes = b"joe@test.example", pos: int = 0):
    return DeliveryRequest(1, path, sender, rcpt, pos, "1.1")


def agent(home, dns: LoopbackDNS | None, watches: DirWatches | None = None, **kw) -> RemoteAgent:
    ctx = Context(home, reactor, None, ControlCache(home, watches), deferToThread, watches=watches)
    resolver = makeResolver(reactor, dns.servers if dns else [("127.0.0.1", 9)])
    kw.setdefault("dnsTimeout", (0.5,))
    return RemoteAgent(ctx, resolver, **kw)


@pytest.fixture(params=["stat", "inotify"])
def watches(request):
    """Without and with the daemon's inotify watch of control/ (docs/behaviour/control.md 2.4)."""
    if request.param == "stat":
        yield None
        return
    w = DirWatches(reactor)
    yield w
    w.stopService()


def sinkOn(ports, factory, interface: str = "127.0.0.1", port: int = 0) -> int:
    p = reactor.listenTCP(port, factory, interface=interface)
    ports.append(p)
    return p.getHost().port


async def deliverAll(a: RemoteAgent, reqs) -> list[Report]:
    return list(await defer.gatherResults(a.deliver(reqs)))


@pytest_twisted.ensureDeferred
async def test_mxByPreferenceThenNext(home, tmp_path, loopbackDNS, ports) -> None:
    """Best MX first; when it refuses, the next one (docs/behaviour/remote.md 11.2, 11.3)."""
    first, second = SMTPSinkFactory(), SMTPSinkFactory()
    port = sinkOn(ports, first, "127.0.0.2")
    sinkOn(ports, second, "127.0.0.3", port)
    loopbackDNS.mx(b"example.net", [(20, b"mx2.example.net"), (10, b"mx1.example.net")])
    loopbackDNS.a(b"mx1.example.net", "127.0.0.2")
    loopbackDNS.a(b"mx2.example.net", "127.0.0.3")
    a = agent(home, loopbackDNS, mxPort=port)
    path = message(tmp_path)
    [r] = await deliverAll(a, [request(path, b"bob@example.net")])
    assert r == Report(Outcome.SUCCESS, b"127.0.0.2 accepted message.\n" + OK)
    [m] = first.messages
    assert (m.sender, m.recipients, m.raw) == (b"joe@test.example", [b"bob@example.net"], WIRE)
    assert first.commands[0] == b"EHLO test.example"
    await ports.pop(0).stopListening()
    a.scache.closeAll()  # the idle connection to mx1 would be reused (remote.md 11.8)
    [r] = await deliverAll(a, [request(path, b"bob@example.net")])
    assert r == Report(Outcome.SUCCESS, b"127.0.0.3 accepted message.\n" + OK)
    assert len(second.messages) == 1


@pytest_twisted.ensureDeferred
async def test_aFallbackAndCNAME(home, tmp_path, loopbackDNS, ports) -> None:
    """No MX: the domain's A record; CNAMEs of recipient and sender hosts are canonicalised."""
    sink = SMTPSinkFactory()
    port = sinkOn(ports, sink, "127.0.0.2")
    loopbackDNS.cname(b"alias.example", b"real.example")
    loopbackDNS.a(b"real.example", "127.0.0.2")
    loopbackDNS.cname(b"sender.example", b"canon.example")
    loopbackDNS.a(b"canon.example", "127.0.0.9")
    a = agent(home, loopbackDNS, mxPort=port)
    [r] = await deliverAll(
        a, [request(message(tmp_path), b"bob@alias.example", sender=b"joe@sender.example")]
    )
    assert r.outcome is Outcome.SUCCESS
    assert r.text.startswith(b"127.0.0.2 accepted message.\n")
    assert b"MAIL FROM:<joe@canon.example>" in sink.commands
    assert b"RCPT TO:<bob@real.example>" in sink.commands


@pytest_twisted.ensureDeferred
async def test_aaaaFallback(home, tmp_path, loopbackDNS, ports) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    sink = SMTPSinkFactory()
    try:
        port = sinkOn(ports, sink, "::1")
    except Exception as e:  # pragma: no cover - depends on the host
        pytest.skip(f"cannot listen on ::1: {e}")
    loopbackDNS.aaaa(b"six.example", "::1")
    a = agent(home, loopbackDNS, mxPort=port)
    [r] = await deliverAll(a, [request(message(tmp_path), b"bob@six.example")])
    assert r == Report(Outcome.SUCCESS, b"::1 accepted message.\n" + OK)


@pytest_twisted.ensureDeferred
async def test_cnameTimeoutDefersThenSucceeds(home, tmp_path, loopbackDNS, ports) -> None:
    """FAQ 2.5: a silent DNS server defers with qmail's text; once it answers, mail goes."""
    sink = SMTPSinkFactory()
    port = sinkOn(ports, sink, "127.0.0.2")
    loopbackDNS.silence(b"slow.example")
    a = agent(home, loopbackDNS, mxPort=port, dnsTimeout=(0.2, 0.3))
    path = message(tmp_path)
    [r] = await deliverAll(a, [request(path, b"bob@slow.example")])
    assert r == Report.deferral(b"CNAME lookup failed temporarily. (#4.4.3)\n")
    loopbackDNS.unsilence(b"slow.example")
    loopbackDNS.a(b"slow.example", "127.0.0.2")
    [r] = await deliverAll(a, [request(path, b"bob@slow.example")])
    assert r.outcome is Outcome.SUCCESS


@pytest_twisted.ensureDeferred
async def test_dnsFailures(home, tmp_path, loopbackDNS) -> None:
    loopbackDNS.mx(b"nullmx.example", [(0, b"")])
    loopbackDNS.servfail(b"broken.example")
    a = agent(home, loopbackDNS)
    path = message(tmp_path)
    reports = await deliverAll(
        a,
        [
            request(path, b"a@nowhere.example", pos=0),
            request(path, b"b@nullmx.example", pos=1),
            request(path, b"c@broken.example", pos=2),
        ],
    )
    assert reports == [
        Report.failure("Sorry, I couldn't find any host named nowhere.example. (#5.1.2)"),
        Report.failure("Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)"),
        Report.deferral("CNAME lookup failed temporarily. (#4.4.3)"),
    ]


@pytest_twisted.ensureDeferred
async def test_nullClientRouteNoDNS(home, tmp_path, loopbackDNS, ports) -> None:
    """FAQ 2.2: `:relay` sends everything there without any DNS query (docs/behaviour/remote.md 11.1)."""
    sink = SMTPSinkFactory()
    port = sinkOn(ports, sink)
    control(home, "smtproutes", b":127.0.0.1:%d\n" % port)
    a = agent(home, loopbackDNS)
    path = message(tmp_path)
    reports = await deliverAll(
        a, [request(path, b"x@one.example"), request(path, b"y@two.example", pos=1)]
    )
    assert reports == [Report.success(b"127.0.0.1 accepted message.\n" + OK)] * 2
    assert loopbackDNS.queries == []
    assert sink.connections == 1
    assert sink.messages[0].recipients == [b"x@one.example", b"y@two.example"]


@pytest_twisted.ensureDeferred
async def test_routeRelayByNameAndException(home, tmp_path, loopbackDNS, ports) -> None:
    """A relay name is resolved by A only; an empty value excepts a domain (goes by MX)."""
    relay, direct = SMTPSinkFactory(), SMTPSinkFactory()
    port = sinkOn(ports, relay, "127.0.0.2")
    sinkOn(ports, direct, "127.0.0.3", port)
    control(home, "smtproutes", b".af.mil:\n:heaven.af.mil:%d\n" % port)
    loopbackDNS.mx(b"heaven.af.mil", [(10, b"wrong.example")])
    loopbackDNS.a(b"heaven.af.mil", "127.0.0.2")
    loopbackDNS.a(b"x.af.mil", "127.0.0.3")
    a = agent(home, loopbackDNS, mxPort=port)
    path = message(tmp_path)
    reports = await deliverAll(
        a, [request(path, b"a@af.mil"), request(path, b"b@x.af.mil", pos=1)]
    )
    assert [r.text.split(b"\n")[0] for r in reports] == [
        b"127.0.0.2 accepted message.",
        b"127.0.0.3 accepted message.",
    ]
    assert (b"heaven.af.mil", 15) not in loopbackDNS.queries  # never MX for a relay


@pytest_twisted.ensureDeferred
async def test_perRecipientResultsOneConnection(home, tmp_path, ports) -> None:
    replies = {b"ok@x.example": b"250 ok", b"later@x.example": b"451 try later",
               b"never@x.example": b"550 no such user\x00here"}
    sink = SMTPSinkFactory(rcptReply=lambda a: replies[a])
    port = sinkOn(ports, sink)
    control(home, "smtproutes", b"x.example:127.0.0.1:%d\n" % port)
    a = agent(home, None)
    path = message(tmp_path)
    reports = await deliverAll(
        a, [request(path, r, pos=i) for i, r in enumerate(replies)]
    )
    assert reports == [
        Report.success(b"127.0.0.1 accepted message.\n" + OK),
        Report.deferral(b"127.0.0.1 does not like recipient.\nRemote host said: 451 try later\n"),
        Report.failure(
            b"127.0.0.1 does not like recipient.\nRemote host said: 550 no such user?here\n"
        ),
    ]
    assert sink.connections == 1


@pytest_twisted.ensureDeferred
async def test_noRecipientAccepted(home, tmp_path, ports) -> None:
    sink = SMTPSinkFactory(rcptReply=lambda a: b"550 go away")
    port = sinkOn(ports, sink)
    control(home, "smtproutes", b":127.0.0.1:%d\n" % port)
    [r] = await deliverAll(agent(home, None), [request(message(tmp_path), b"a@b.example")])
    assert r == Report.failure(
        b"127.0.0.1 does not like recipient.\nRemote host said: 550 go away\n"
        b"Giving up on 127.0.0.1.\n"
    )
    # The sink offers PIPELINING: DATA went out with MAIL and RCPT (RFC 2920, remote.md 11.9)
    # and was refused, so no message was taken.
    assert sink.messages == []


@pytest.mark.parametrize(
    "replies, expected",
    [
        ({"greeting": b"554 go away"}, Report.deferral(
            b"Connected to 127.0.0.1 but greeting failed.\nRemote host said: 554 go away\n")),
        ({b"EHLO": b"550 who", b"HELO": b"550 who"}, Report.deferral(
            b"Connected to 127.0.0.1 but my name was rejected.\nRemote host said: 550 who\n")),
        ({b"EHLO": b"502 no ehlo"}, Report.success(b"127.0.0.1 accepted message.\n" + OK)),
        ({b"MAIL": b"553 bad sender"}, Report.failure(
            b"Connected to 127.0.0.1 but sender was rejected.\n"
            b"Remote host said: 553 bad sender\n")),
        ({b"MAIL": b"451 later"}, Report.deferral(
            b"Connected to 127.0.0.1 but sender was rejected.\nRemote host said: 451 later\n")),
        ({"DATA": b"554 no data"}, Report.failure(
            b"127.0.0.1 failed on DATA command.\nRemote host said: 554 no data\n")),
        ({"dot": b"552-too\n552 big"}, Report.failure(
            b"127.0.0.1 failed after I sent the message.\nRemote host said: 552-too\n552 big\n")),
        ({"dot": b"451 disk"}, Report.deferral(
            b"127.0.0.1 failed after I sent the message.\nRemote host said: 451 disk\n")),
    ],
)
@pytest_twisted.ensureDeferred
async def test_dialogue(home, tmp_path, ports, replies, expected) -> None:
    greeting = replies.pop("greeting", b"220 sink.example ESMTP")
    sink = SMTPSinkFactory(greeting=greeting, replies=replies)
    port = sinkOn(ports, sink)
    control(home, "smtproutes", b":127.0.0.1:%d\n" % port)
    [r] = await deliverAll(agent(home, None), [request(message(tmp_path), b"a@b.example")])
    assert r == expected


@pytest_twisted.ensureDeferred
async def test_bounceSenderAndQuoting(home, tmp_path, ports) -> None:
    sink = SMTPSinkFactory()
    port = sinkOn(ports, sink)
    control(home, "smtproutes", b":127.0.0.1:%d\n" % port)
    control(home, "helohost", b"helo.example\n")
    [r] = await deliverAll(
        agent(home, None), [request(message(tmp_path), b"a b@c.example", sender=b"")]
    )
    assert r.outcome is Outcome.SUCCESS
    assert sink.commands[:3] == [
        b"EHLO helo.example", b"MAIL FROM:<>", b'RCPT TO:<"a b"@c.example>'
    ]


@pytest_twisted.ensureDeferred
async def test_partialFinalLine(home, tmp_path) -> None:
    control(home, "smtproutes", b":127.0.0.1:9\n")
    [r] = await deliverAll(
        agent(home, None), [request(message(tmp_path, RECEIVED + b"no newline"), b"a@b.example")]
    )
    assert r == Report.failure("SMTP cannot transfer messages with partial final lines. (#5.6.2)")


@pytest_twisted.ensureDeferred
async def test_connectionRefused(home, tmp_path, ports) -> None:
    port = sinkOn(ports, SMTPSinkFactory())
    await ports.pop().stopListening()
    control(home, "smtproutes", b":127.0.0.1:%d\n" % port)
    [r] = await deliverAll(agent(home, None), [request(message(tmp_path), b"a@b.example")])
    assert r == Report.deferral("Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)")


@pytest_twisted.ensureDeferred
async def test_remoteTimeout(home, tmp_path, ports) -> None:
    held: list = []
    sink = SMTPSinkFactory(holdConnections=held)
    port = sinkOn(ports, sink)
    control(home, "smtproutes", b":127.0.0.1:%d\n" % port)
    control(home, "timeoutremote", b"1\n")
    [r] = await deliverAll(agent(home, None), [request(message(tmp_path), b"a@b.example")])
    assert r == Report.deferral("Connected to 127.0.0.1 but connection died. (#4.4.2)")
    assert len(held) == 1


@pytest_twisted.ensureDeferred
async def test_qmtproutes(home, tmp_path, ports) -> None:
    answers = {b"k@q.example": b"Kok 1762326189 qp 9", b"z@q.example": b"Zdisk full",
               b"d@q.example": b"Dno mailbox here by that name. (#5.1.1)"}
    qsink = QMTPSinkFactory(answer=lambda r: answers[r])
    qport = sinkOn(ports, qsink)
    smtp = SMTPSinkFactory()
    sport = sinkOn(ports, smtp)
    control(home, "qmtproutes", b"q.example:127.0.0.1:%d\n.s.example:\n" % qport)
    control(home, "smtproutes", b":127.0.0.1:%d\n" % sport)
    path = message(tmp_path)
    reqs = [request(path, r, pos=i) for i, r in enumerate(answers)]
    reqs.append(request(path, b"s@x.s.example", pos=3))
    reports = await deliverAll(agent(home, None), reqs)
    assert reports == [
        Report.success(b"127.0.0.1 accepted message.\nRemote host said: ok 1762326189 qp 9\n"),
        Report.deferral(b"127.0.0.1 does not like recipient.\nRemote host said: disk full\n"),
        Report.failure(b"127.0.0.1 does not like recipient.\n"
                       b"Remote host said: no mailbox here by that name. (#5.1.1)\n"),
        Report.success(b"127.0.0.1 accepted message.\n" + OK),
    ]
    assert qsink.packages == [(b"\n" + BODY, b"joe@test.example", list(answers))]
    assert smtp.messages[0].recipients == [b"s@x.s.example"]


@pytest_twisted.ensureDeferred
async def test_qmtpConnectionClosesEarly(home, tmp_path, ports) -> None:
    qsink = QMTPSinkFactory(dropAfter=1)
    qport = sinkOn(ports, qsink)
    control(home, "qmtproutes", b":127.0.0.1:%d\n" % qport)
    path = message(tmp_path)
    reports = await deliverAll(
        agent(home, None), [request(path, b"a@b.example"), request(path, b"c@b.example", pos=1)]
    )
    assert reports == [
        Report.success(b"127.0.0.1 accepted message.\nRemote host said: ok 1762326189 qp 9\n"),
        Report.deferral("Connected to 127.0.0.1 but connection died. Possible duplicate! (#4.4.2)"),
    ]


@pytest_twisted.ensureDeferred
async def test_concurrencyremoteHonoured(home, tmp_path, ports) -> None:
    """FAQ 8.1: never more simultaneous connections than concurrencyremote, at the peer."""
    sink = SMTPSinkFactory(holdConnections=[])
    port = sinkOn(ports, sink)
    control(home, "smtproutes", b":127.0.0.1:%d\n" % port)
    control(home, "concurrencyremote", b"3\n")
    a = agent(home, None)
    path = message(tmp_path)
    pending = [d for i in range(8) for d in a.deliver([request(path, b"r%d@x.example" % i)])]
    done = defer.gatherResults(pending)
    deadline = reactor.seconds() + 20
    # connections carry several messages (remote.md 11.8): release until all are done
    while not done.called:
        assert reactor.seconds() < deadline, "waiting for held connections"
        assert sink.active <= 3
        if sink.holdConnections:
            conn = sink.holdConnections.pop(0)
            conn.reply(b"220 sink.example ESMTP")
        await task.deferLater(reactor, 0.01, lambda: None)
    reports = await done
    assert all(r.outcome is Outcome.SUCCESS for r in reports)
    assert sink.peak == 3
    assert a.limiter.highest == 3


# -- TLS ------------------------------------------------------------------------------------


def tlsSetup(home, loopbackDNS, ports, certNames, **sinkKw):
    caPEM, serverOptions = makeCertificates(certNames)
    with open(os.path.join(home.control, "ca.pem"), "wb") as f:
        f.write(caPEM)
    sink = SMTPSinkFactory(tlsOptions=serverOptions, **sinkKw)
    port = sinkOn(ports, sink, "127.0.0.2")
    loopbackDNS.mx(b"tls.example", [(10, b"mx.tls.example")])
    loopbackDNS.a(b"mx.tls.example", "127.0.0.2")
    return sink, port


@pytest_twisted.ensureDeferred
async def test_startTLSOpportunistic(home, tmp_path, loopbackDNS, ports) -> None:
    sink, port = tlsSetup(home, loopbackDNS, ports, ["someone.else"])
    [r] = await deliverAll(
        agent(home, loopbackDNS, mxPort=port), [request(message(tmp_path), b"a@tls.example")]
    )
    # the report names the TLS session (docs/behaviour/tls-policy.md 19.5)
    assert r.outcome is Outcome.SUCCESS
    assert re.fullmatch(rb"127\.0\.0\.2 accepted message\.\n" + re.escape(OK)
                        + rb"TLS: TLSv1\.[23] \S+, certificate not verified \(opportunistic\)\.\n",
                        r.text), r.text
    assert sink.messages[0].tls is True
    assert sink.commands[:3] == [b"EHLO test.example", b"STARTTLS", b"EHLO test.example"]


@pytest_twisted.ensureDeferred
async def test_tlsverifyVerified(home, tmp_path, loopbackDNS, ports) -> None:
    sink, port = tlsSetup(home, loopbackDNS, ports, ["mx.tls.example"])
    control(home, "tlsverify", b"tls.example:ca.pem\n")
    [r] = await deliverAll(
        agent(home, loopbackDNS, mxPort=port), [request(message(tmp_path), b"a@tls.example")]
    )
    assert r.outcome is Outcome.SUCCESS
    assert re.fullmatch(rb"127\.0\.0\.2 accepted message\.\n" + re.escape(OK)
                        + rb"TLS: TLSv1\.[23] \S+, certificate verified for mx\.tls\.example "
                        rb"\(control/tlsverify\)\.\n", r.text), r.text
    assert sink.messages[0].tls is True


@pytest_twisted.ensureDeferred
async def test_tlsverifyMismatchDefers(home, tmp_path, loopbackDNS, ports) -> None:
    sink, port = tlsSetup(home, loopbackDNS, ports, ["someone.else"])
    control(home, "tlsverify", b".tls.example:ca.pem\ntls.example:ca.pem\n")
    [r] = await deliverAll(
        agent(home, loopbackDNS, mxPort=port), [request(message(tmp_path), b"a@tls.example")]
    )
    assert r.outcome is Outcome.DEFERRAL
    assert r.text.startswith(b"TLS required but not verified for mx.tls.example at 127.0.0.2: ")
    assert r.text.endswith(b". (#4.7.1)\n")
    assert sink.messages == []
    assert sink.connections == 1  # no plaintext fallback


@pytest_twisted.ensureDeferred
async def test_brokenTLSFallsBackToPlaintext(home, tmp_path, loopbackDNS, ports, watches) -> None:
    sink, port = tlsSetup(home, loopbackDNS, ports, ["mx.tls.example"], brokenTLS=True)
    a = agent(home, loopbackDNS, watches, mxPort=port)
    [r] = await deliverAll(a, [request(message(tmp_path), b"a@tls.example")])
    assert r == Report.success(b"127.0.0.2 accepted message.\n" + OK)
    assert (sink.connections, sink.messages[0].tls) == (2, False)
    assert b"STARTTLS" not in sink.commands[3:]
    control(home, "tlsverify", b"tls.example:ca.pem\n")
    [r] = await deliverAll(a, [request(message(tmp_path), b"a@tls.example")])
    assert r.outcome is Outcome.DEFERRAL
    assert r.text.startswith(b"TLS required but not verified for mx.tls.example at 127.0.0.2: ")
    assert sink.connections == 3


@pytest_twisted.ensureDeferred
async def test_startTLSResponseInjectionDiscarded(home, tmp_path, loopbackDNS, ports, logEvents) -> None:
    """
    Replies received in plaintext after the 220 to STARTTLS are discarded, not read as answers
    inside TLS: otherwise every later reply is read one step late and a 550 after DATA passes
    for success (the client side of CVE-2011-0411).
    """
    sink, port = tlsSetup(home, loopbackDNS, ports, ["mx.tls.example"],
                          injectAfterSTARTTLS=b"250 injected\r\n250 injected\r\n250 injected\r\n"
                                              b"354 injected\r\n250 injected\r\n",
                          replies={"dot": b"550 no thanks"})
    control(home, "tlsverify", b"tls.example:ca.pem\n")
    [r] = await deliverAll(
        agent(home, loopbackDNS, mxPort=port), [request(message(tmp_path), b"a@tls.example")]
    )
    assert r.outcome is Outcome.FAILURE
    assert r.text.startswith(b"127.0.0.2 failed after I sent the message.\n"
                             b"Remote host said: 550 no thanks\nTLS: TLSv1.")
    assert sink.commands[:3] == [b"EHLO test.example", b"STARTTLS", b"EHLO test.example"]
    assert any(re.search(r"TLS to 127.0.0.2: discarded \d+ bytes received in plaintext", line)
               for line in logLines(logEvents))


@pytest_twisted.ensureDeferred
async def test_tlsverifyNotOffered(home, tmp_path, loopbackDNS, ports) -> None:
    sink = SMTPSinkFactory()
    port = sinkOn(ports, sink, "127.0.0.2")
    loopbackDNS.a(b"tls.example", "127.0.0.2")
    control(home, "tlsverify", b"tls.example\n")
    [r] = await deliverAll(
        agent(home, loopbackDNS, mxPort=port), [request(message(tmp_path), b"a@tls.example")]
    )
    assert r == Report.deferral(
        "TLS required but not verified for tls.example at 127.0.0.2: STARTTLS not offered. (#4.7.1)"
    )


@pytest_twisted.ensureDeferred
async def test_selfCheck(home, tmp_path, loopbackDNS, ports) -> None:
    """Only MXes better than the best one that is this host are used (docs/behaviour/remote.md 11.2)."""
    sink = SMTPSinkFactory()
    port = sinkOn(ports, sink, "127.0.0.2")
    loopbackDNS.mx(b"self.example", [(10, b"test.example"), (20, b"other.example")])
    loopbackDNS.a(b"test.example", "127.0.0.5")
    loopbackDNS.a(b"other.example", "127.0.0.2")
    loopbackDNS.mx(b"mixed.example", [(5, b"lower.example"), (10, b"mine.example")])
    loopbackDNS.a(b"lower.example", "127.0.0.2")
    loopbackDNS.a(b"mine.example", "127.0.0.7")
    loopbackDNS.mx(b"onlyme.example", [(10, b"mine.example")])
    a = agent(home, loopbackDNS, mxPort=port, localAddresses=lambda: ["127.0.0.7"])
    path = message(tmp_path)
    reports = await deliverAll(a, [
        request(path, b"a@self.example"),
        request(path, b"b@mixed.example", pos=1),
        request(path, b"c@onlyme.example", pos=2),
    ])
    selfText = (
        "Sorry. Although I'm listed as a best-preference MX or A for that host,\n"
        "it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)"
    )
    assert reports == [
        Report.failure(selfText),
        Report.success(b"127.0.0.2 accepted message.\n" + OK),
        Report.failure(selfText),
    ]


# -- the next MX after a failed greeting (docs/behaviour/remote.md 11.3) -----------------------


def twoMX(ports, loopbackDNS, best: SMTPSinkFactory) -> tuple[SMTPSinkFactory, int]:
    second = SMTPSinkFactory()
    port = sinkOn(ports, best, "127.0.0.2")
    sinkOn(ports, second, "127.0.0.3", port)
    loopbackDNS.mx(b"busy.example", [(10, b"mx1.busy.example"), (20, b"mx2.busy.example")])
    loopbackDNS.a(b"mx1.busy.example", "127.0.0.2")
    loopbackDNS.a(b"mx2.busy.example", "127.0.0.3")
    return second, port


@pytest_twisted.ensureDeferred
async def test_busyBestMXThenSecondAtOnce(home, tmp_path, loopbackDNS, ports, logEvents) -> None:
    """A best MX that greets with 421 does not block the domain: the next MX, same attempt."""
    best = SMTPSinkFactory(greeting=b"421 mx1.busy.example too busy")
    second, port = twoMX(ports, loopbackDNS, best)
    [r] = await deliverAll(agent(home, loopbackDNS, mxPort=port),
                           [request(message(tmp_path), b"bob@busy.example")])
    assert r == Report.success(b"127.0.0.3 accepted message.\n" + OK)
    assert best.connections == 1 and best.commands == [b"QUIT"]
    assert second.messages[0].recipients == [b"bob@busy.example"]
    assert ("delivery to 127.0.0.2 failed: greeting 421 mx1.busy.example too busy; "
            "trying next MX") in logLines(logEvents)


@pytest_twisted.ensureDeferred
async def test_silentBestMXThenSecond(home, tmp_path, loopbackDNS, ports, logEvents) -> None:
    """A best MX that never greets: the next MX once timeoutremote has passed."""
    held: list = []
    best = SMTPSinkFactory(holdConnections=held)
    second, port = twoMX(ports, loopbackDNS, best)
    control(home, "timeoutremote", b"1\n")
    [r] = await deliverAll(agent(home, loopbackDNS, mxPort=port),
                           [request(message(tmp_path), b"bob@busy.example")])
    assert r == Report.success(b"127.0.0.3 accepted message.\n" + OK)
    assert len(held) == 1 and best.messages == []
    assert len(second.messages) == 1
    assert ("delivery to 127.0.0.2 failed: no greeting within 1 s; trying next MX"
            in logLines(logEvents))


@pytest_twisted.ensureDeferred
async def test_everyMXBusyKeepsTheLastReport(home, tmp_path, loopbackDNS, ports) -> None:
    best = SMTPSinkFactory(greeting=b"421 busy")
    second, port = twoMX(ports, loopbackDNS, best)
    second.greeting = b"451 also busy"
    [r] = await deliverAll(agent(home, loopbackDNS, mxPort=port),
                           [request(message(tmp_path), b"bob@busy.example")])
    assert r == Report.deferral(
        b"Connected to 127.0.0.3 but greeting failed.\nRemote host said: 451 also busy\n")
    assert (best.connections, second.connections) == (1, 1)


# -- tlsverify with recipients of several domains on one route (remote.md 11.5) ------------


@pytest_twisted.ensureDeferred
async def test_tlsverifyPerDomainOnASharedRoute(home, tmp_path, ports) -> None:
    """
    A tlsverify domain never rides along on the connection of a domain without it: the route
    groups recipients by their TLS policy, so the secure recipient is not sent in plaintext.
    """
    sink = SMTPSinkFactory()  # no STARTTLS
    port = sinkOn(ports, sink)
    control(home, "smtproutes", b":127.0.0.1:%d\n" % port)
    control(home, "tlsverify", b"secure.example\n")
    path = message(tmp_path)
    reports = await deliverAll(agent(home, None), [
        request(path, b"a@plain.example"),
        request(path, b"b@secure.example", pos=1),
        request(path, b"c@other.example", pos=2),
    ])
    assert reports == [
        Report.success(b"127.0.0.1 accepted message.\n" + OK),
        Report.deferral("TLS required but not verified for 127.0.0.1 at 127.0.0.1: "
                        "STARTTLS not offered. (#4.7.1)"),
        Report.success(b"127.0.0.1 accepted message.\n" + OK),
    ]
    assert [m.recipients for m in sink.messages] == [[b"a@plain.example", b"c@other.example"]]


# -- the self check with a wildcard listener (docs/behaviour/remote.md 11.2) -------------------

SPARE_LOOPBACK = "127.0.83.9"  # loopback, but no interface has it unless a test adds it
SPARE_EXTERNAL = "198.51.100.25"  # TEST-NET-2, added to lo as a non-loopback interface address
IP_COMMAND = shutil.which("ip", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
SELF_TEXT = Report.failure(
    "Sorry. Although I'm listed as a best-preference MX or A for that host,\n"
    "it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)")


@pytest.fixture
def interfaceAddress():
    """Adds an address to lo for the test (root and iproute2 needed); removed afterwards."""
    ip = IP_COMMAND
    if os.getuid() != 0 or ip is None:
        pytest.skip("needs root and ip(8) to add an interface address")
    added: list[str] = []

    def add(address: str) -> None:
        done = subprocess.run([ip, "addr", "add", f"{address}/32", "dev", "lo"],
                              capture_output=True, text=True)
        assert done.returncode == 0 or "File exists" in done.stderr, done.stderr
        added.append(address)

    yield add
    for address in added:
        subprocess.run([ip, "addr", "del", f"{address}/32", "dev", "lo"], capture_output=True)


def globalAddresses() -> list[str]:
    """This machine's non-loopback IPv4 addresses as `ip -o addr` lists them."""
    ip = IP_COMMAND
    if ip is None:
        return []
    out = subprocess.run([ip, "-o", "-4", "addr", "show", "scope", "global"],
                         capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]


@pytest_twisted.ensureDeferred
async def test_selfCheckWildcardSparesLoopbackNonInterface(home, tmp_path, loopbackDNS, ports) -> None:
    """
    `--smtp tcp:25`: an MX on a 127/8 address that no interface has is someone else (here a
    sink), not "me": the wildcard listener stands for the interface addresses, not all of 127/8.
    """
    sink = SMTPSinkFactory()
    port = sinkOn(ports, sink, SPARE_LOOPBACK)
    loopbackDNS.mx(b"loop.example", [(10, b"mx.loop.example")])
    loopbackDNS.a(b"mx.loop.example", SPARE_LOOPBACK)
    a = agent(home, loopbackDNS, mxPort=port, localAddresses=("0.0.0.0",))
    [r] = await deliverAll(a, [request(message(tmp_path), b"bob@loop.example")])
    assert r == Report.success(SPARE_LOOPBACK.encode() + b" accepted message.\n" + OK)


@pytest_twisted.ensureDeferred
async def test_selfCheckWildcardCountsInterfaceAddresses(
    home, tmp_path, loopbackDNS, ports, interfaceAddress
) -> None:
    """
    `--smtp tcp:25`: an MX on any interface address of this machine is "me" (qmail's ipme), a
    non-loopback one included; a listener bound to one address still counts that one only.
    """
    await deferToThread(interfaceAddress, SPARE_LOOPBACK)
    await deferToThread(interfaceAddress, SPARE_EXTERNAL)
    sink = SMTPSinkFactory()
    port = sinkOn(ports, sink, SPARE_LOOPBACK)
    mine = [SPARE_LOOPBACK, SPARE_EXTERNAL, *await deferToThread(globalAddresses)]
    path = message(tmp_path)
    reqs = []
    for i, address in enumerate(mine):
        loopbackDNS.mx(b"d%d.example" % i, [(10, b"mx.d%d.example" % i)])
        loopbackDNS.a(b"mx.d%d.example" % i, address)
        reqs.append(request(path, b"bob@d%d.example" % i, pos=i))
    wildcard = agent(home, loopbackDNS, mxPort=port, localAddresses=("0.0.0.0",))
    assert await deliverAll(wildcard, reqs) == [SELF_TEXT] * len(mine)
    assert sink.connections == 0
    bound = agent(home, loopbackDNS, mxPort=port, localAddresses=("127.0.0.1",))
    [r] = await deliverAll(bound, reqs[:1])
    assert r == Report.success(SPARE_LOOPBACK.encode() + b" accepted message.\n" + OK)
