"""
The connection cache and client PIPELINING against real sockets (docs/behaviour/remote.md 11.8,
11.9): several messages on one connection, a stale cached connection replaced, TLS policy kept
apart, SMTPUTF8 per message, MAIL+RCPT+DATA in one write.
"""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from qmtwist.delivery import Outcome, Report
from tests.integration.remote.peers import SMTPSinkFactory, _SMTPSink, stopAll
from tests.integration.remote.test_delivery import (
    OK,
    WIRE,
    agent,
    control,
    deliverAll,
    message,
    request,
    sinkOn,
)


@pytest.fixture
def ports():
    opened: list = []
    yield opened
    pytest_twisted.blockon(stopAll(opened))


class _RecordingSink(_SMTPSink):
    def connectionMade(self) -> None:
        self.factory.protocols.append(self)
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        self.factory.reads.append(data)
        super().dataReceived(data)


class RecordingSink(SMTPSinkFactory):
    """The sink, keeping each connection's protocol and every chunk read."""

    protocol = _RecordingSink

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.protocols: list[_SMTPSink] = []
        self.reads: list[bytes] = []


def routed(home, ports, sink) -> None:
    port = sinkOn(ports, sink)
    control(home, "smtproutes", b":127.0.0.1:%d\n" % port)


async def until(pred) -> None:
    for _ in range(500):
        if pred():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not reached")


@pytest_twisted.ensureDeferred
async def test_messagesShareOneConnection(home, tmp_path, ports) -> None:
    sink = RecordingSink()
    routed(home, ports, sink)
    a = agent(home, None)
    path = message(tmp_path)
    reports = []
    for i in range(5):
        [r] = await deliverAll(a, [request(path, b"u%d@far.example" % i)])
        reports.append(r)
    assert sink.connections == 1
    assert [(m.sender, m.recipients, m.raw) for m in sink.messages] == [
        (b"joe@test.example", [b"u%d@far.example" % i], WIRE) for i in range(5)]
    assert reports[0] == Report.success(b"127.0.0.1 accepted message.\n" + OK)
    for n, r in enumerate(reports[1:], 2):
        assert r == Report.success(b"127.0.0.1 accepted message.\n" + OK
                                   + b"Reused connection to 127.0.0.1 (conn_use=%d).\n" % n)
    assert b"RSET" not in sink.commands
    a.scache.closeAll()  # QUIT on the idle connection (SIGHUP, stop)
    await until(lambda: sink.active == 0)
    assert sink.commands[-1] == b"QUIT"


@pytest_twisted.ensureDeferred
async def test_clientSocketHasNoDelay(home, tmp_path, ports) -> None:
    """
    The client turns Nagle's algorithm off (remote.md 11.9): with it on, the final dot written
    after the message waited for the peer's delayed ACK, 40 ms a message on a reused connection.
    """
    sink = RecordingSink()
    routed(home, ports, sink)
    a = agent(home, None)
    [r] = await deliverAll(a, [request(message(tmp_path), b"a@far.example")])
    assert r.outcome is Outcome.SUCCESS
    [(_key, proto)] = list(a.scache._idle)
    sock = proto.transport.getHandle()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    a.scache.closeAll()
    await until(lambda: sink.active == 0)


@pytest_twisted.ensureDeferred
async def test_concurrentMessagesFewerConnections(home, tmp_path, ports) -> None:
    sink = RecordingSink()
    routed(home, ports, sink)
    control(home, "concurrencyremote", b"3\n")
    a = agent(home, None)
    path = message(tmp_path)
    first = await deliverAll(a, [request(path, b"w@far.example")])
    batches = [a.deliver([request(path, b"v%d@far.example" % i)]) for i in range(3)]
    later = await defer.gatherResults([d for b in batches for d in b])
    assert all(r.outcome is Outcome.SUCCESS for r in [*first, *later])
    assert len(sink.messages) == 4
    assert sink.connections < 4
    assert sink.peak <= 3


@pytest_twisted.ensureDeferred
async def test_peerClosedIdleConnection(home, tmp_path, ports) -> None:
    sink = RecordingSink()
    routed(home, ports, sink)
    a = agent(home, None)
    path = message(tmp_path)
    await deliverAll(a, [request(path, b"a@far.example")])
    sink.protocols[0].transport.loseConnection()
    await until(lambda: len(a.scache) == 0)
    [r] = await deliverAll(a, [request(path, b"b@far.example")])
    assert r == Report.success(b"127.0.0.1 accepted message.\n" + OK)
    assert [m.recipients for m in sink.messages] == [[b"a@far.example"], [b"b@far.example"]]
    assert a.limiter.active == 1  # the new idle connection; the closed one gave its slot back


@pytest_twisted.ensureDeferred
async def test_staleConnectionReplacedWithoutDeferral(home, tmp_path, ports) -> None:
    """A 421 to MAIL on a cached connection: the message goes on a fresh one, exactly once."""
    sink = RecordingSink()
    routed(home, ports, sink)
    a = agent(home, None)
    path = message(tmp_path)
    await deliverAll(a, [request(path, b"a@far.example")])
    sink.replies[b"MAIL"] = b"421 shutting down"
    old = sink.protocols[0]
    # the fresh connection answers MAIL normally again
    orig = old.lineReceived

    def once(line: bytes) -> None:
        orig(line)
        if line.startswith(b"MAIL"):
            sink.replies.pop(b"MAIL", None)
            old.transport.loseConnection()

    old.lineReceived = once  # type: ignore[method-assign]
    [r] = await deliverAll(a, [request(path, b"b@far.example")])
    assert r == Report.success(b"127.0.0.1 accepted message.\n" + OK)
    assert sink.connections == 2
    assert [m.recipients for m in sink.messages] == [[b"a@far.example"], [b"b@far.example"]]


@pytest_twisted.ensureDeferred
async def test_tlsRequiredNeverReusesPlaintext(home, tmp_path, ports) -> None:
    sink = RecordingSink()
    port = sinkOn(ports, sink)
    control(home, "smtproutes", b"plain.example:127.0.0.1:%d\nsafe.example:127.0.0.1:%d\n"
            % (port, port))
    control(home, "tlsverify", b"safe.example\n")
    a = agent(home, None)
    path = message(tmp_path)
    [r] = await deliverAll(a, [request(path, b"a@plain.example")])
    assert r.outcome is Outcome.SUCCESS
    assert len(a.scache) == 1
    [r] = await deliverAll(a, [request(path, b"b@safe.example")])
    assert r == Report.deferral("TLS required but not verified for 127.0.0.1 at 127.0.0.1: "
                                "STARTTLS not offered. (#4.7.1)")
    assert sink.connections == 2
    assert [m.recipients for m in sink.messages] == [[b"a@plain.example"]]


UTF8_EHLO = b"250-sink.example\n250-PIPELINING\n250 SMTPUTF8"


@pytest_twisted.ensureDeferred
async def test_smtputf8DecidedPerMessageOnReusedConnection(home, tmp_path, ports) -> None:
    sink = RecordingSink(replies={b"EHLO": UTF8_EHLO})
    routed(home, ports, sink)
    a = agent(home, None)
    path = message(tmp_path)
    [r1] = await deliverAll(a, [request(path, b"a@far.example")])
    [r2] = await deliverAll(a, [request(path, "jösé@far.example".encode())])
    assert (r1.outcome, r2.outcome) == (Outcome.SUCCESS, Outcome.SUCCESS), r2.text
    assert sink.connections == 1
    mails = [c for c in sink.commands if c.startswith(b"MAIL")]
    assert mails == [b"MAIL FROM:<joe@test.example>", b"MAIL FROM:<joe@test.example> SMTPUTF8"]
    assert sink.messages[1].recipients == ["jösé@far.example".encode()]


@pytest_twisted.ensureDeferred
async def test_smtputf8NotOfferedOnReusedConnection(home, tmp_path, ports) -> None:
    sink = RecordingSink()
    routed(home, ports, sink)
    a = agent(home, None)
    path = message(tmp_path)
    [r1] = await deliverAll(a, [request(path, b"a@far.example")])
    [r2] = await deliverAll(a, [request(path, "jösé@far.example".encode())])
    assert r1.outcome is Outcome.SUCCESS
    assert r2.outcome is Outcome.FAILURE
    assert r2.text.startswith(b"Connected to 127.0.0.1 but it does not offer SMTPUTF8, needed "
                              b"for a UTF-8 address. (#5.6.7)\n")
    assert len(sink.messages) == 1


@pytest_twisted.ensureDeferred
async def test_pipeliningOneWriteAndReports(home, tmp_path, ports) -> None:
    replies = {b"x@far.example": b"451 try later", b"y@far.example": b"550 no such user"}
    sink = RecordingSink(rcptReply=lambda addr: replies.get(addr, b"250 ok"))
    routed(home, ports, sink)
    a = agent(home, None)
    path = message(tmp_path)
    reqs = [request(path, b"%s@far.example" % u, pos=i) for i, u in enumerate([b"w", b"x", b"y"])]
    reports = await deliverAll(a, reqs)
    assert reports == [
        Report.success(b"127.0.0.1 accepted message.\n" + OK),
        Report.deferral(b"127.0.0.1 does not like recipient.\nRemote host said: 451 try later\n"),
        Report.failure(b"127.0.0.1 does not like recipient.\nRemote host said: 550 no such user\n"),
    ]
    assert (b"MAIL FROM:<joe@test.example>\r\nRCPT TO:<w@far.example>\r\nRCPT TO:<x@far.example>"
            b"\r\nRCPT TO:<y@far.example>\r\nDATA\r\n") in sink.reads
    assert sink.messages[0].recipients == [b"w@far.example"]


@pytest_twisted.ensureDeferred
async def test_noPipeliningWhenNotOffered(home, tmp_path, ports) -> None:
    sink = RecordingSink(replies={b"EHLO": b"250-sink.example\n250 8BITMIME"})
    routed(home, ports, sink)
    [r] = await deliverAll(agent(home, None), [request(message(tmp_path), b"a@far.example")])
    assert r.outcome is Outcome.SUCCESS
    assert not any(b"MAIL" in chunk and b"RCPT" in chunk for chunk in sink.reads)
