"""The tcpserver-style listener on a MemoryReactor (docs/behaviour/tcpserver.md 8.2-8.5)."""

from __future__ import annotations

import pytest
from attrs import define, field
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from qmtwist.control import Control
from qmtwist.tcpserver import makeListener
from tests.conftest import logLines


class _Controls:
    def current(self) -> Control:
        return Control(me=b"me.example")


@define
class _Ctx:
    reactor: object
    controls: object = field(factory=_Controls)
    reloaders: list = field(factory=list)


class Recorder(Protocol):
    env: dict
    exitStatus = None

    def connectionMade(self) -> None:
        self.transport.write(b"hello\r\n")
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class RecorderFactory(Factory):
    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr) -> Recorder:
        p = Recorder()
        self.built.append(p)
        return p


def start(tmp_path, rules: bytes | None = None, concurrency: int = 40, lookup=None):
    reactor = MemoryReactorClock()
    path = tmp_path / "rules"
    if rules is not None:
        path.write_bytes(rules)
    ctx = _Ctx(reactor)
    inner = RecorderFactory()
    svc = makeListener(ctx, "qmtp", "tcp:2209:interface=127.0.0.1", str(path), concurrency,
                       inner, lookupHost=lookup)
    svc.startService()
    factory = reactor.tcpServers[0][1]

    def connect(ip: str = "127.0.0.1", port: int = 40000):
        t = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 2209),
                            peerAddress=IPv4Address("TCP", ip, port))
        p = factory.buildProtocol(t.getPeer())
        p.makeConnection(t)
        return p, t

    return svc, ctx, inner, connect


def test_env_and_log_lines(tmp_path, logEvents):
    svc, ctx, inner, connect = start(tmp_path, b'127.:allow,RELAYCLIENT="",!PROTO\n')
    assert ctx.reloaders == []  # plugin.py registers the SIGHUP hook, not the listener
    p, t = connect()
    assert t.value() == b"hello\r\n"
    assert inner.built[0].env == {
        "TCPLOCALIP": b"127.0.0.1", "TCPLOCALPORT": b"2209", "TCPLOCALHOST": b"me.example",
        "TCPREMOTEIP": b"127.0.0.1", "TCPREMOTEPORT": b"40000", "RELAYCLIENT": b""}
    p.dataReceived(b"x")
    assert inner.built[0].received == b"x"
    p.connectionLost(Failure(ConnectionDone()))
    assert [ln for ln in logLines(logEvents) if ln.startswith("tcpserver")] == [
        "tcpserver: status: 0/40", "tcpserver: status: 1/40", "tcpserver: pid 1 from 127.0.0.1",
        "tcpserver: ok 1 me.example:127.0.0.1:2209 :127.0.0.1::40000",
        "tcpserver: end 1 status 0", "tcpserver: status: 0/40"]
    assert {e["log_namespace"] for e in logEvents if "tcpserver" in e.get("log_format", "")} == {
        "qmtwist.qmtp"}


def test_exit_status(tmp_path, logEvents):
    svc, ctx, inner, connect = start(tmp_path)
    p, t = connect()
    inner.built[0].exitStatus = 256
    p.connectionLost(Failure(ConnectionDone()))
    p2, t2 = connect()
    p2.connectionLost(Failure(ConnectionLost()))
    lines = logLines(logEvents)
    assert "tcpserver: end 1 status 256" in lines and "tcpserver: end 2 status 256" in lines


def test_deny_sends_nothing(tmp_path, logEvents):
    svc, ctx, inner, connect = start(tmp_path, b"127.0.0.2:deny\n")
    p, t = connect("127.0.0.2")
    assert t.value() == b"" and t.disconnecting and inner.built == []
    p.connectionLost(Failure(ConnectionDone()))
    assert "tcpserver: deny 1 me.example:127.0.0.1:2209 :127.0.0.2::40000" in logLines(logEvents)
    assert svc.active == 0


def test_concurrency_holds_extra_connections(tmp_path, logEvents):
    svc, ctx, inner, connect = start(tmp_path, concurrency=2)
    (p1, t1), (_, t2), (p3, t3) = connect(port=1), connect(port=2), connect(port=3)
    assert [t1.value(), t2.value(), t3.value()] == [b"hello\r\n", b"hello\r\n", b""]
    assert t3.producerState == "paused" and len(inner.built) == 2
    p3.dataReceived(b"early")
    p1.connectionLost(Failure(ConnectionDone()))
    assert t3.value() == b"hello\r\n" and t3.producerState == "producing"
    assert inner.built[2].received == b"early"
    lines = [ln for ln in logLines(logEvents) if ln.startswith("tcpserver")]
    assert lines.index("tcpserver: end 1 status 0") < lines.index("tcpserver: pid 3 from 127.0.0.1")
    assert "tcpserver: status: 3/2" not in lines


def test_held_connection_that_leaves(tmp_path):
    svc, ctx, inner, connect = start(tmp_path, concurrency=1)
    (p1, _), (p2, _), (_, t3) = connect(port=1), connect(port=2), connect(port=3)
    p2.connectionLost(Failure(ConnectionDone()))
    p1.connectionLost(Failure(ConnectionDone()))
    assert t3.value() == b"hello\r\n" and svc.active == 1


def test_hostname_rules_look_up(tmp_path, logEvents):
    asked: list[str] = []
    pending: list[Deferred] = []

    def lookup(ip: str) -> Deferred:
        asked.append(ip)
        d: Deferred = Deferred()
        pending.append(d)
        return d

    svc, ctx, inner, connect = start(tmp_path, b'=.good.example:allow,RELAYCLIENT=""\n:deny\n',
                                     lookup=lookup)
    p, t = connect("10.0.0.1")
    assert asked == ["10.0.0.1"] and t.value() == b""
    pending[0].callback("mx.good.example")
    assert t.value() == b"hello\r\n"
    assert inner.built[0].env["TCPREMOTEHOST"] == b"mx.good.example"
    assert inner.built[0].env["RELAYCLIENT"] == b""
    assert "tcpserver: ok 1 me.example:127.0.0.1:2209 mx.good.example:10.0.0.1::40000" in (
        logLines(logEvents))
    p2, t2 = connect("10.0.0.2")
    pending[1].callback(None)
    assert t2.disconnecting and t2.value() == b""


def test_no_lookup_without_host_rules(tmp_path):
    def lookup(ip):
        raise AssertionError("no lookup expected")

    svc, ctx, inner, connect = start(tmp_path, b"10.:deny\n", lookup=lookup)
    p, t = connect()
    assert "TCPREMOTEHOST" not in inner.built[0].env


def test_rules_reread_on_change_and_reload(tmp_path, logEvents):
    svc, ctx, inner, connect = start(tmp_path, b"127.:allow,A=\"1\"\n")
    connect()
    (tmp_path / "rules").write_bytes(b"127.:allow,A=\"22\"\nbad line\n")
    connect()
    assert [p.env.get("A") for p in inner.built] == [b"1", b"22"]
    assert "warning: rules/qmtp line 2: unable to parse this line: bad line" in logLines(logEvents)
    svc.reload()


def test_stop_service(tmp_path):
    svc, ctx, inner, connect = start(tmp_path)
    svc.stopService()
    assert svc.port is None


@pytest.mark.parametrize("host,plain", [
    ("::ffff:10.0.0.1", "10.0.0.1"), ("::FFFF:127.0.0.1", "127.0.0.1"),
    ("::1", "::1"), ("2001:db8::1", "2001:db8::1"), ("127.0.0.1", "127.0.0.1"),
])
def test_ipv4_mapped_peers_are_matched_as_ipv4(host, plain):
    """On a dual-stack listener an IPv4 client must meet the IPv4 rules (10.:deny)."""
    from qmtwist.tcpsession import plainIP

    assert plainIP(host) == plain


class _FakeResolver:
    """PTR and A answers from dictionaries; anything else fails like a DNS error."""

    def __init__(self, ptr: dict[str, str], a: dict[str, list[str]]) -> None:
        self.ptr, self.a = ptr, a

    def lookupPointer(self, name, timeout=None):
        from twisted.internet.defer import fail, succeed
        from twisted.names import dns

        if name not in self.ptr:
            return fail(Exception("NXDOMAIN"))
        rr = dns.RRHeader(name, dns.PTR, payload=dns.Record_PTR(self.ptr[name]))
        return succeed(([rr], [], []))

    def lookupAddress(self, name, timeout=None):
        from twisted.internet.defer import fail, succeed
        from twisted.names import dns

        if name not in self.a:
            return fail(Exception("NXDOMAIN"))
        return succeed(([dns.RRHeader(name, dns.A, payload=dns.Record_A(x))
                         for x in self.a[name]], [], []))


@pytest.mark.parametrize("ptr,a,expected", [
    ("Mx.Trusted.Example", {"mx.trusted.example": ["10.0.0.7"]}, "mx.trusted.example"),
    # anybody can publish a PTR name for their own address: it must resolve back
    ("mx.trusted.example", {"mx.trusted.example": ["10.9.9.9"]}, None),
    ("mx.trusted.example", {}, None),
    ("evil\nforged.example", {"evil\nforged.example": ["10.0.0.7"]}, None),
])
def test_remote_host_needs_forward_confirmation(ptr, a, expected):
    from qmtwist.ptr import makeHostLookup

    lookup = makeHostLookup(None, _FakeResolver({"7.0.0.10.in-addr.arpa": ptr}, a))
    got = []
    lookup("10.0.0.7").addCallback(got.append)
    assert got == [expected]
