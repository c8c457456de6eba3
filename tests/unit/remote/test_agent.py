"""RemoteAgent on a MemoryReactorClock: connect timeouts, tcpto skipping, stop, limits."""

from __future__ import annotations

import os

import pytest
from twisted.internet import defer, error
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from qmtwist.context import Context, ControlCache
from qmtwist.delivery import DeliveryRequest, Report
from qmtwist.interfaces import IDeliveryAgent
from qmtwist.remote import tcpto
from qmtwist.remote.agent import NO_CONNECTION, Limiter, RemoteAgent, descriptorWarning
from tests.conftest import logLines

BODY = b"Received: (qmail 1 invoked by uid 0); 25 Nov 2026 09:00:00 -0000\n\nhi\n"


class AbortingTransport(StringTransport):
    def __init__(self, protocol) -> None:
        super().__init__()
        self.protocol = protocol

    def abortConnection(self) -> None:
        super().abortConnection()
        self.protocol.connectionLost(Failure(error.ConnectionAborted()))


def setUp(home, tmp_path, routes: bytes = b":10.0.0.1\n"):
    with open(os.path.join(home.control, "smtproutes"), "wb") as f:
        f.write(routes)
    reactor = MemoryReactorClock()
    reactor.advance(1_000_000)
    ctx = Context(home, reactor, None, ControlCache(home), defer.maybeDeferred)
    agent = RemoteAgent(ctx, resolver=object())
    path = tmp_path / "mess"
    path.write_bytes(BODY)
    req = DeliveryRequest(1, str(path), b"a@test.example", b"b@x.example", 0, "1.1")
    return agent, reactor, req


def results(ds: list) -> list:
    out: list = []
    for d in ds:
        d.addBoth(out.append)
    return out


def test_interface(home, tmp_path) -> None:
    agent, _r, _q = setUp(home, tmp_path)
    assert verifyObject(IDeliveryAgent, agent)
    assert agent.channel == "remote"


def test_connectTimeoutsThenSkip(home, tmp_path) -> None:
    agent, reactor, req = setUp(home, tmp_path)
    for n in (1, 2):
        got = results(agent.deliver([req]))
        host, port, factory, timeout, _bind = reactor.tcpClients[-1]
        assert (host, port, timeout) == ("10.0.0.1", 25, 60)
        factory.clientConnectionFailed(reactor.connectors[-1], Failure(error.TimeoutError()))
        assert got == [Report.deferral(NO_CONNECTION)]
        assert tcpto.read(home.queue.tcpto)["10.0.0.1"].count == n
        reactor.advance(121)
    attempts = len(reactor.tcpClients)
    got = results(agent.deliver([req]))
    assert got == [Report.deferral(NO_CONNECTION)]
    assert len(reactor.tcpClients) == attempts  # skipped, no connection tried
    reactor.advance(3840 + 1984)
    got = results(agent.deliver([req]))
    assert len(reactor.tcpClients) == attempts + 1
    _h, _p, factory, _t, _b = reactor.tcpClients[-1]
    factory.clientConnectionFailed(reactor.connectors[-1], Failure(error.ConnectionRefusedError()))
    assert got == [Report.deferral(NO_CONNECTION)]
    assert tcpto.read(home.queue.tcpto) == {}  # a refusal resets the counter


def test_timeoutconnectControl(home, tmp_path) -> None:
    agent, reactor, req = setUp(home, tmp_path, b":[10.0.0.5]:2525\n")
    with open(os.path.join(home.control, "timeoutconnect"), "wb") as f:
        f.write(b"7\n")
    agent.deliver([req])
    host, port, _f, timeout, _b = reactor.tcpClients[-1]
    assert (host, port, timeout) == ("10.0.0.5", 2525, 7)


def test_replyTimeoutAndStop(home, tmp_path) -> None:
    agent, reactor, req = setUp(home, tmp_path)
    got = results(agent.deliver([req, DeliveryRequest(1, req.messPath, req.sender,
                                                      b"c@x.example", 1, "1.1")]))
    _h, _p, factory, _t, _b = reactor.tcpClients[-1]
    wrapped = factory.buildProtocol(None)
    wrapped.makeConnection(AbortingTransport(wrapped))
    reactor.advance(1199)
    assert got == []
    reactor.advance(1)  # timeoutremote
    died = Report.deferral("Connected to 10.0.0.1 but connection died. (#4.4.2)")
    assert got == [died, died]

    got = results(agent.deliver([req]))
    _h, _p, factory, _t, _b = reactor.tcpClients[-1]
    wrapped = factory.buildProtocol(None)
    wrapped.makeConnection(AbortingTransport(wrapped))
    wrapped.dataReceived(b"220 hi\r\n")
    stopped = results([agent.stop()])
    assert got == [died]
    assert stopped == [None]


def test_limiter() -> None:
    lim = Limiter(2)
    fired = results([lim.acquire(), lim.acquire(), lim.acquire()])
    assert fired == [None, None]
    lim.release()
    assert fired == [None, None, None]
    lim.setLimit(1)
    more = results([lim.acquire()])
    assert more == []
    lim.release()
    assert more == []
    lim.release()
    assert more == [None]
    assert lim.highest == 2


def test_descriptorWarning() -> None:
    assert descriptorWarning(20, limit=45) is None
    assert descriptorWarning(20, limit=44) == (
        "warning: descriptor limit 44 is below 2*concurrencyremote+5 = 45; expect deferrals"
    )
    assert descriptorWarning(500, limit=None) in (
        None,
        *[f"warning: descriptor limit {n} is below 2*concurrencyremote+5 = 1005; "
          "expect deferrals" for n in range(1005)],
    )


def test_stopDefersWaitingGroups(home, tmp_path) -> None:
    agent, reactor, req = setUp(home, tmp_path)
    with open(os.path.join(home.control, "concurrencyremote"), "wb") as f:
        f.write(b"1\n")
    agent.ctx.controls.reload()
    agent.reload()
    first = results(agent.deliver([req]))
    second = results(agent.deliver([DeliveryRequest(2, req.messPath, req.sender,
                                                    b"z@y.example", 0, "2.2")]))
    assert len(reactor.tcpClients) == 1  # the second waits for the only slot
    stopped = results([agent.stop()])
    interrupted = Report.deferral("Remote delivery interrupted by shutdown. (#4.3.0)")
    assert second == [interrupted]
    assert first == [interrupted]  # its pending connect was cancelled
    assert stopped == [None]
    assert len(reactor.tcpClients) == 1


def test_lineBreaksNeverReachTheWire(home, tmp_path) -> None:
    agent, reactor, req = setUp(home, tmp_path)
    evil = DeliveryRequest(1, req.messPath, req.sender, b"x@y.example>\r\nDATA", 1, "1.1")
    evilSender = DeliveryRequest(1, req.messPath, b"a\n@b", b"ok@y.example", 2, "1.1")
    got = results(agent.deliver([evil, evilSender]))
    assert got == [
        Report.failure("Sorry, the recipient address contains a line break or NUL. (#5.1.3)"),
        Report.failure("Sorry, the envelope sender contains a line break or NUL. (#5.1.7)"),
    ]
    assert reactor.tcpClients == []


# -- the next MX after a failed greeting (docs/behaviour/remote.md 11.3) -----------------------


def twoHosts(home, tmp_path):
    """An agent whose route's relay resolves to 10.0.0.1 and 10.0.0.2 (MemoryReactorClock)."""
    from qmtwist.remote.mx import MailHost

    agent, reactor, req = setUp(home, tmp_path, b":relay.example\n")

    async def relayHosts(relay: bytes) -> list:
        return [MailHost(relay, 0, ("10.0.0.1", "10.0.0.2"))]

    agent.mx.relayHosts = relayHosts  # type: ignore[method-assign]
    return agent, reactor, req


def connectLast(reactor) -> tuple:
    """Complete the most recent connection attempt; return (host, protocol, transport)."""
    host, _p, factory, _t, _b = reactor.tcpClients[-1]
    wrapped = factory.buildProtocol(None)
    transport = AbortingTransport(wrapped)
    wrapped.makeConnection(transport)
    return host, wrapped, transport


@pytest.mark.parametrize("greeting", [b"421 too busy\r\n", b"450-wait\r\n450 more\r\n",
                                      b"garbage\r\n"])
def test_4xxGreetingTriesNextAddress(home, tmp_path, logEvents, greeting) -> None:
    agent, reactor, req = twoHosts(home, tmp_path)
    got = results(agent.deliver([req]))
    host, first, transport = connectLast(reactor)
    assert host == "10.0.0.1"
    first.dataReceived(greeting)
    assert transport.value() == b"QUIT\r\n"
    assert len(reactor.tcpClients) == 1  # waits until the first connection is gone
    first.connectionLost(Failure(error.ConnectionDone()))
    assert [c[0] for c in reactor.tcpClients] == ["10.0.0.1", "10.0.0.2"]
    host, second, transport = connectLast(reactor)
    second.dataReceived(b"421 me too\r\n")
    second.connectionLost(Failure(error.ConnectionDone()))
    assert got == [Report.deferral(
        b"Connected to 10.0.0.2 but greeting failed.\nRemote host said: 421 me too\n")]
    first = greeting.split(b"\r\n")[0].decode()
    lines = logLines(logEvents)
    assert f"delivery to 10.0.0.1 failed: greeting {first}; trying next MX" in lines
    assert "delivery to 10.0.0.2 failed: greeting 421 me too; no more MX to try" in lines


def test_5xxGreetingDecides(home, tmp_path) -> None:
    agent, reactor, req = twoHosts(home, tmp_path)
    got = results(agent.deliver([req]))
    _h, first, _t = connectLast(reactor)
    first.dataReceived(b"554 go away\r\n")
    first.connectionLost(Failure(error.ConnectionDone()))
    assert got == [Report.deferral(
        b"Connected to 10.0.0.1 but greeting failed.\nRemote host said: 554 go away\n")]
    assert len(reactor.tcpClients) == 1


def test_noGreetingTriesNextAddress(home, tmp_path, logEvents) -> None:
    agent, reactor, req = twoHosts(home, tmp_path)
    got = results(agent.deliver([req]))
    connectLast(reactor)
    reactor.advance(1199)
    assert len(reactor.tcpClients) == 1
    reactor.advance(1)  # timeoutremote passes without a greeting
    assert [c[0] for c in reactor.tcpClients] == ["10.0.0.1", "10.0.0.2"]
    _h, second, _t = connectLast(reactor)
    second.connectionLost(Failure(error.ConnectionLost()))  # closes before greeting
    assert got == [Report.deferral("Connected to 10.0.0.2 but connection died. (#4.4.2)")]
    lines = logLines(logEvents)
    assert "delivery to 10.0.0.1 failed: no greeting within 1200 s; trying next MX" in lines
    assert any(line.startswith("delivery to 10.0.0.2 failed: connection lost before the greeting")
               for line in lines)
    assert tcpto.read(home.queue.tcpto) == {}  # only connect timeouts count


def test_connectTimeoutTriesNextAddressAndLogs(home, tmp_path, logEvents) -> None:
    agent, reactor, req = twoHosts(home, tmp_path)
    results(agent.deliver([req]))
    _h, _p, factory, _t, _b = reactor.tcpClients[-1]
    factory.clientConnectionFailed(reactor.connectors[-1], Failure(error.TimeoutError()))
    assert [c[0] for c in reactor.tcpClients] == ["10.0.0.1", "10.0.0.2"]
    assert ("delivery to 10.0.0.1 failed: connect timed out after 60 s; trying next MX"
            in logLines(logEvents))
