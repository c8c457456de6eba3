"""The tcpserver-style listener as an endpoint service: its bound port, the rules checked on a
thread, restart (docs/behaviour/tcpserver.md 8.2, 8.5)."""

from __future__ import annotations

import os
import threading

from attrs import define, field
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from qmtwist.plugin import listenerAddresses
from qmtwist.remote import ipme
from qmtwist.tcprules import RulesFile
from qmtwist.tcpserver import describeAddress, makeListener
from tests.conftest import logLines
from tests.unit.test_tcpserver import RecorderFactory, _Controls


class Threads:
    """A runInThread that runs each job on a real thread only when the test says so."""

    def __init__(self) -> None:
        self.jobs: list = []
        self.ran = 0

    def __call__(self, f) -> Deferred:
        d: Deferred = Deferred()
        self.jobs.append((f, d))
        return d

    def runAll(self) -> None:
        while self.jobs:
            f, d = self.jobs.pop(0)
            box: list = []
            t = threading.Thread(target=lambda: box.append(f()))
            t.start()
            t.join()
            self.ran += 1
            d.callback(box[0])


@define
class _ThreadedCtx:
    reactor: object
    runInThread: object
    controls: object = field(factory=_Controls)
    reloaders: list = field(factory=list)


def _start(tmp_path, endpoint="tcp:0:interface=127.0.0.1", runInThread=None):
    reactor = MemoryReactorClock()
    ctx = _ThreadedCtx(reactor, runInThread)
    inner = RecorderFactory()
    svc = makeListener(ctx, "smtp", endpoint, str(tmp_path / "rules"), 40, inner)
    return reactor, ctx, inner, svc


def _connect(reactor, ip="127.0.0.1"):
    factory = reactor.tcpServers[0][1]
    t = StringTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 2525),
                        peerAddress=IPv4Address("TCP", ip, 40000))
    p = factory.buildProtocol(t.getPeer())
    p.makeConnection(t)
    return p, t


def test_listener_logs_its_bound_port(tmp_path, logEvents):
    reactor, ctx, inner, svc = _start(tmp_path, "tcp:2525:interface=127.0.0.1")
    svc.startService()
    lines = logLines(logEvents)
    # what the port says (a MemoryReactor port reports 0.0.0.0), not the endpoint string
    assert svc.port.getHost() == IPv4Address("TCP", "0.0.0.0", 2525)
    assert lines[:2] == ["smtp: listening on 0.0.0.0:2525", "tcpserver: status: 0/40"]
    assert {e["log_namespace"] for e in logEvents if "listening" in e["log_format"]} == {
        "qmtwist.smtp"}


def test_bound_address_comes_from_the_port(tmp_path):
    """The remote self check (qmtwist/remote/ipme.py) reads the service's bound port."""
    reactor, ctx, inner, svc = _start(tmp_path, "tcp:2525")
    assert svc.port is None
    svc.startService()
    assert svc.port.getHost().port == 2525
    assert ipme.boundAddress(svc.port) == "0.0.0.0"
    options = {"smtp": "tcp:2525", "qmtp": "none"}
    assert listenerAddresses(options, [svc]) == ("0.0.0.0",)
    svc.stopService()
    assert svc.port is None and not svc.running
    assert listenerAddresses(options, [svc]) == ("0.0.0.0",)  # from the endpoint string


def test_restart_listens_again(tmp_path):
    reactor, ctx, inner, svc = _start(tmp_path, "tcp:2525:interface=127.0.0.1")
    svc.startService()
    svc.stopService()
    svc.startService()
    assert len(reactor.tcpServers) == 2 and svc.port is not None and svc.running


def test_describe_address():
    assert describeAddress(IPv4Address("TCP", "10.0.0.1", 25)) == "10.0.0.1:25"
    assert describeAddress(IPv6Address("TCP", "::1", 25)) == "[::1]:25"


def test_rules_are_checked_on_a_thread(tmp_path, monkeypatch, logEvents):
    (tmp_path / "rules").write_bytes(b"127.:allow,A=\"1\"\n")
    threads = Threads()
    reactor, ctx, inner, svc = _start(tmp_path, runInThread=threads)
    svc.startService()
    (tmp_path / "rules").write_bytes(b"127.:allow,A=\"22\"\nbad line\n")
    reactorThread = threading.current_thread()
    stats: list = []

    def recorded(real):
        def stat(path, *a, **kw):
            stats.append((str(path), threading.current_thread() is reactorThread))
            return real(path, *a, **kw)
        return stat

    monkeypatch.setattr(os, "stat", recorded(os.stat))
    monkeypatch.setattr(os, "lstat", recorded(os.lstat))
    p1, t1 = _connect(reactor)
    p2, t2 = _connect(reactor)  # waits for the same check
    assert t1.value() == t2.value() == b"" and len(threads.jobs) == 1
    threads.runAll()
    assert [p.env["A"] for p in inner.built] == [b"22", b"22"]
    assert stats and not any(onReactor for _, onReactor in stats)
    assert logLines(logEvents).count(
        "warning: rules/smtp line 2: unable to parse this line: bad line") == 1
    p1.connectionLost(Failure(ConnectionDone()))


def test_reload_rereads_on_a_thread(tmp_path):
    (tmp_path / "rules").write_bytes(b"127.:deny\n")
    threads = Threads()
    reactor, ctx, inner, svc = _start(tmp_path, runInThread=threads)
    path = str(tmp_path / "rules")
    st = os.stat(path)
    with open(path, "r+b") as f:  # same size, same mtime: only a forced reread sees it
        f.write(b"127.:allo")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not svc.rules.ruleSet.match("127.0.0.1").allow
    svc.reload()
    assert not svc.rules.ruleSet.match("127.0.0.1").allow  # nothing read yet
    threads.runAll()
    assert svc.rules.ruleSet.rules == []  # "127.:allo" is no rule: allow everybody


def test_rules_file_checks_one_at_a_time(tmp_path):
    """Requests during a check share the next one (as ControlCache.refresh)."""
    path = tmp_path / "rules"
    rules = RulesFile(str(path), "qmtp")
    threads = Threads()
    first, second, third = (rules.refresh(threads) for _ in range(3))
    assert len(threads.jobs) == 1
    path.write_bytes(b"10.:deny\nnonsense\n")
    threads.runAll()
    assert threads.ran == 2
    got: list = []
    for d in (first, second, third):
        d.addCallback(got.append)
    assert got == [["warning: rules/qmtp line 2: unable to parse this line: nonsense"], [], []]
    assert not rules.ruleSet.match("10.1.2.3").allow
