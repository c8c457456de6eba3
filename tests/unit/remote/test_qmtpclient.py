"""The QMTP client on fakes: one package, K/D/Z answers, losses and deadlines (docs/behaviour/qmtp.md 9.3)."""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from qmtwist.context import Context, ControlCache
from qmtwist.delivery import DeliveryRequest, Report
from qmtwist.netstring import encode, encodeList
from qmtwist.remote.agent import RemoteAgent
from qmtwist.remote.qmtpclient import QMTPClientProtocol, transact

BODY = b"Received: (qmail 1 invoked by uid 0); 25 Nov 2026 09:00:00 -0000\n\nhi\n"
RCPTS = [b"k@x.example", b"d@x.example", b"z@x.example"]
PACKAGE = b"%d:\n%s," % (len(BODY) + 1, BODY) + encode(b"a@test.example") + encodeList(RCPTS)
DIED = Report.deferral("Connected to 10.0.0.1 but connection died. (#4.4.2)")
DUPLICATE = Report.deferral(
    "Connected to 10.0.0.1 but connection died. Possible duplicate! (#4.4.2)")


class AbortingTransport(StringTransport):
    """A StringTransport whose abort ends the connection, as a real one does."""

    def __init__(self, protocol) -> None:
        super().__init__()
        self.protocol = protocol

    def abortConnection(self) -> None:
        super().abortConnection()
        self.protocol.connectionLost(Failure(error.ConnectionAborted()))


def pump(transport: StringTransport) -> None:
    """Let the file producer write the whole message (a peer that reads everything)."""
    while transport.producer is not None:
        transport.producer.resumeProducing()


def answers(*texts: bytes) -> bytes:
    return b"".join(encode(t) for t in texts)


def started(tmp_path, timeout: float = 1200) -> tuple:
    """A package under way on a StringTransport: (protocol, transport, clock, reports)."""
    path = tmp_path / "mess"
    path.write_bytes(BODY)
    clock = Clock()
    proto = QMTPClientProtocol(clock, timeout)
    transport = AbortingTransport(proto)
    proto.makeConnection(transport)
    got: list = []
    d = defer.ensureDeferred(
        transact(proto, "10.0.0.1", b"a@test.example", RCPTS, str(path), defer.maybeDeferred))
    d.addBoth(got.append)
    return proto, transport, clock, got


def test_answersKDZ(tmp_path) -> None:
    proto, transport, _clock, got = started(tmp_path)
    pump(transport)
    assert transport.value() == PACKAGE
    proto.dataReceived(answers(b"Kok 1762326189 qp 7", b"Dno such user"))
    assert got == []
    proto.dataReceived(answers(b"Zdisk full")[:5])
    assert got == []
    proto.dataReceived(answers(b"Zdisk full")[5:])
    assert got == [[
        Report.success(b"10.0.0.1 accepted message.\nRemote host said: ok 1762326189 qp 7\n"),
        Report.failure(b"10.0.0.1 does not like recipient.\nRemote host said: no such user\n"),
        Report.deferral(b"10.0.0.1 does not like recipient.\nRemote host said: disk full\n"),
    ]]
    assert transport.disconnecting


def test_lostMidPackage(tmp_path) -> None:
    proto, transport, _clock, got = started(tmp_path)
    transport.producer.resumeProducing()  # the message is on the wire; the envelope is not
    assert transport.value() == b"%d:\n%s" % (len(BODY) + 1, BODY)
    assert got == []
    transport.producer.stopProducing()  # what a transport does to its producer on loss
    proto.connectionLost(Failure(error.ConnectionLost()))
    assert got == [[DIED, DIED, DIED]]
    assert transport.value() == b"%d:\n%s" % (len(BODY) + 1, BODY)


def test_lostAfterThePackage(tmp_path) -> None:
    proto, transport, _clock, got = started(tmp_path)
    pump(transport)
    proto.dataReceived(answers(b"Kok"))
    proto.connectionLost(Failure(error.ConnectionLost()))
    assert got == [[
        Report.success(b"10.0.0.1 accepted message.\nRemote host said: ok\n"),
        DUPLICATE, DUPLICATE,
    ]]


def test_eachSilenceHasADeadline(tmp_path) -> None:
    proto, transport, clock, got = started(tmp_path, timeout=30)
    pump(transport)
    clock.advance(29)
    proto.dataReceived(answers(b"Kok"))
    clock.advance(29)  # the answer rearmed the deadline
    assert got == []
    clock.advance(1)
    assert got[0][1:] == [DUPLICATE, DUPLICATE]
    assert transport.disconnecting
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("garbage", [b"x:abc,", b"6000:"])
def test_malformedAnswerAborts(tmp_path, garbage: bytes) -> None:
    proto, transport, _clock, got = started(tmp_path)
    pump(transport)
    proto.dataReceived(answers(b"Kok") + garbage)
    assert got[0][1:] == [DUPLICATE, DUPLICATE]
    assert transport.disconnecting


def test_unreadableMessage(tmp_path) -> None:
    clock = Clock()
    proto = QMTPClientProtocol(clock, 30)
    transport = StringTransport()
    proto.makeConnection(transport)
    got: list = []
    defer.ensureDeferred(transact(proto, "10.0.0.1", b"", [b"a@b"], str(tmp_path / "gone"),
                                  defer.maybeDeferred)).addBoth(got.append)
    assert got == [[Report.deferral("Unable to read message. (#4.3.0)")]]
    assert transport.value() == b"" and transport.disconnecting


def test_agentOverQmtproutes(home, tmp_path) -> None:
    """The agent's QMTP route on a MemoryReactorClock: port 209, one package, K D Z."""
    with open(os.path.join(home.control, "qmtproutes"), "wb") as f:
        f.write(b":10.0.0.1\n")
    reactor = MemoryReactorClock()
    ctx = Context(home, reactor, None, ControlCache(home), defer.maybeDeferred)
    agent = RemoteAgent(ctx, resolver=object())
    path = tmp_path / "mess"
    path.write_bytes(BODY)
    reqs = [DeliveryRequest(1, str(path), b"a@test.example", r, i, "1.1")
            for i, r in enumerate(RCPTS)]
    got: list = []
    for d in agent.deliver(reqs):
        d.addBoth(got.append)
    host, port, factory, timeout, _bind = reactor.tcpClients[-1]
    assert (host, port, timeout) == ("10.0.0.1", 209, 60)
    proto = factory.buildProtocol(None)
    transport = AbortingTransport(proto)
    proto.makeConnection(transport)
    pump(transport)
    assert transport.value() == PACKAGE
    proto.dataReceived(answers(b"Kok", b"Dno", b"Zlater"))
    assert transport.disconnecting
    assert got == []  # the slot is held until the connection is gone (FAQ 8.1)
    proto.connectionLost(Failure(error.ConnectionDone()))
    assert [r.outcome.value for r in got] == ["success", "failure", "deferral"]
    assert got[2] == Report.deferral(b"10.0.0.1 does not like recipient.\nRemote host said: later\n")
