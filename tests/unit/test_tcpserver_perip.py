"""The per-address session limit of the tcpserver-style listener (docs/behaviour/tcpserver.md
8.3), on a MemoryReactor."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from qmtwist.tcpserver import makeListener
from tests.conftest import logLines
from tests.unit.test_tcpserver import RecorderFactory, _Ctx


def start(tmp_path, perIP: int, concurrency: int = 40, overLimit: bytes = b""):
    reactor = MemoryReactorClock()
    ctx = _Ctx(reactor)
    inner = RecorderFactory()
    svc = makeListener(ctx, "smtp", "tcp:2525:interface=127.0.0.1", str(tmp_path / "rules"),
                       concurrency, inner, perIP=perIP, overLimit=overLimit)
    svc.startService()
    factory = reactor.tcpServers[0][1]
    ports = iter(range(40000, 50000))

    def connect(ip: str = "127.0.0.1"):
        t = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 2525),
                            peerAddress=IPv4Address("TCP", ip, next(ports)))
        p = factory.buildProtocol(t.getPeer())
        p.makeConnection(t)
        return p, t

    return svc, inner, connect


def close(p) -> None:
    p.connectionLost(Failure(ConnectionDone()))


def test_fourth_connection_from_one_address_is_refused(tmp_path, logEvents):
    svc, inner, connect = start(tmp_path, perIP=3, overLimit=b"421 busy\r\n")
    first = [connect() for _ in range(3)]
    assert all(t.value() == b"hello\r\n" for _, t in first) and svc.active == 3
    p4, t4 = connect()
    assert t4.value() == b"421 busy\r\n" and t4.disconnecting
    assert svc.active == 3 and len(inner.built) == 3  # no slot, no session
    p4.dataReceived(b"EHLO x\r\n")  # whatever it sends is ignored
    close(p4)
    assert svc.active == 3
    other, t5 = connect("127.0.0.2")  # another address is served
    assert t5.value() == b"hello\r\n" and svc.active == 4
    lines = [ln for ln in logLines(logEvents) if ln.startswith("tcpserver")]
    assert "tcpserver: deny 4 me.example:127.0.0.1:2525 :127.0.0.1::40003 per-ip limit 3" in lines
    assert "tcpserver: end 4 status 256" not in lines and "tcpserver: pid 4 from 127.0.0.1" \
        not in lines
    assert "tcpserver: pid 5 from 127.0.0.2" in lines
    # a session that ends gives its address one more
    close(first[0][0])
    p6, t6 = connect()
    assert t6.value() == b"hello\r\n" and svc.active == 4


def test_held_connections_count_for_their_address(tmp_path):
    svc, inner, connect = start(tmp_path, perIP=2, concurrency=1)
    (p1, t1), (p2, t2) = connect(), connect()
    assert t1.value() == b"hello\r\n" and t2.value() == b"" and svc.active == 1  # t2 held
    p3, t3 = connect()
    assert t3.disconnecting and svc.active == 1
    close(p2)  # a held one leaves: its address may come again
    p4, t4 = connect()
    assert not t4.disconnecting and t4.value() == b""  # held, not refused
    close(p1)
    assert t4.value() == b"hello\r\n"


def test_zero_means_no_per_address_limit(tmp_path):
    svc, inner, connect = start(tmp_path, perIP=0)
    conns = [connect() for _ in range(25)]
    assert all(t.value() == b"hello\r\n" for _, t in conns) and svc.active == 25


def test_default_is_ten(tmp_path):
    reactor = MemoryReactorClock()
    svc = makeListener(_Ctx(reactor), "pop3", "tcp:2110", None, 40, RecorderFactory())
    assert svc.perIP == 10


def test_counts_are_dropped_when_sessions_end(tmp_path):
    svc, inner, connect = start(tmp_path, perIP=3)
    for _ in range(5):
        conns = [connect("10.0.0.%d" % i) for i in range(1, 4)]
        for p, _ in conns:
            close(p)
    assert svc._perAddress == {} and svc.active == 0
