"""The QMTP listener over a real socket with the real Injector (docs/behaviour/qmtp.md 9, tcpserver.md 8); and
C{HOME/bin/qmail-qmtpd} under Debian's tcpserver (docs/behaviour/home.md 1.4)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
import qmtwist
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread

from qmtwist.context import Context, ControlCache
from qmtwist.qmtp.listener import makeQMTPService
from qmtwist.qmtp.netstring import NetstringParser, encode, encodeList
from qmtwist.queue.commit import Injector
from qmtwist.queue.envelope import decodeTodo
from tests.conftest import logLines
from tests.support import tcpserverPort, until, waitFor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(qmtwist.__file__)))
RCPTHOSTS = b"66:Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1),"
DATABYTES = b"61:Dsorry, that message size exceeds my databytes limit (#5.3.4),"


def package(message: bytes, sender: bytes, recipients: list[bytes]) -> bytes:
    return encode(message) + encode(sender) + encodeList(recipients)


THREE = (package(b"\nSubject: one\n\nrelay attempt\n", b"a@b.example", [b"victim@elsewhere.example"])
         + package(b"\r" + b"x" * 200 + b"\r\n", b"a@b.example", [b"bob@test.example"])
         + package(b"\rSubject: three\r\n\r\n\xe9t\xe9\r\n", b"a@b.example", [b"bob@test.example"]))


class Client(Protocol):
    """Sends everything at once; collects response netstrings until C{count} arrived."""

    def __init__(self, data: bytes, count: int) -> None:
        self.data = data
        self.count = count
        self.raw = b""
        self.responses: list[bytes] = []
        self.done: Deferred[None] = Deferred()
        self.parser = NetstringParser(self._got)

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def _got(self, s: bytes) -> None:
        self.responses.append(s)
        if len(self.responses) == self.count:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        self.parser.feed(data)

    def connectionLost(self, reason: object) -> None:
        if not self.done.called:
            self.done.callback(None)


def queued(home) -> list[tuple[bytes, tuple[bytes, ...], bytes]]:
    layout = home.queue
    out = []
    for name in sorted(os.listdir(layout.sub("todo")), key=int):
        with open(layout.todo(int(name)), "rb") as f:
            env = decodeTodo(f.read())
        with open(layout.mess(int(name)), "rb") as f:
            out.append((env.sender, env.recipients, f.read()))
    return out


def messCount(home) -> int:
    m = home.queue.sub("mess")
    return sum(len(os.listdir(os.path.join(m, d))) for d in os.listdir(m))


def checkThree(home, responses: list[bytes]) -> None:
    [(sender, rcpts, mess)] = queued(home)
    assert (sender, rcpts) == (b"a@b.example", (b"bob@test.example",))
    qp = int(mess.split(b" ")[2])
    assert responses[0] == RCPTHOSTS[3:-1]
    assert responses[1] == DATABYTES[3:-1]
    assert responses[2].startswith(b"Kok ") and responses[2].endswith(b" qp %d" % qp)
    lines = mess.split(b"\n")
    assert lines[1] == b"Received: from unknown (127.0.0.1)"
    assert lines[2].startswith(b"  by test.example with QMTP; ")
    assert b"\n".join(lines[3:]) == b"Subject: three\n\n\xe9t\xe9\n"
    # the refused packages' files are removed on a thread: gone by now or shortly after
    waitFor(lambda: messCount(home) == 1, "only the queued package's mess file left")


@pytest_twisted.ensureDeferred
async def test_three_packages_one_connection(home, logEvents):
    with open(os.path.join(home.control, "databytes"), "w") as f:
        f.write("100\n")
    injector = Injector(home.queue, home.control, reactor, deferToThread)
    ctx = Context(home, reactor, injector, ControlCache(home), deferToThread)
    service = makeQMTPService(ctx, "tcp:0:interface=127.0.0.1", home.sub("rules", "qmtp"), 40)
    service.startService()
    try:
        port = service.port.getHost().port
        client = Client(THREE, 3)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        await client.done
        checkThree(home, client.responses)
        assert client.raw.startswith(RCPTHOSTS + DATABYTES + b"%d:Kok " % len(client.responses[2]))
        await until(lambda: "tcpserver: end 1 status 0" in logLines(logEvents), "end 1 status 0")
    finally:
        await service.stopService()
    assert "tcpserver: pid 1 from 127.0.0.1" in logLines(logEvents)


@pytest_twisted.ensureDeferred
async def test_relayclient_from_rules(home):
    with open(home.sub("rules", "qmtp"), "w") as f:
        f.write('127.0.0.1:allow,RELAYCLIENT=""\n')
    injector = Injector(home.queue, home.control, reactor, deferToThread)
    ctx = Context(home, reactor, injector, ControlCache(home), deferToThread)
    service = makeQMTPService(ctx, "tcp:0:interface=127.0.0.1", home.sub("rules", "qmtp"), 40)
    service.startService()
    try:
        client = Client(package(b"\nhi\n", b"", [b"x@elsewhere.example"]), 1)
        await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", service.port.getHost().port), client)
        await client.done
    finally:
        await service.stopService()
    assert client.responses[0].startswith(b"Kok ")
    [(_, rcpts, _m)] = queued(home)
    assert rcpts == (b"x@elsewhere.example",)


def _talk(port: int, data: bytes, count: int) -> list[bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    out: list[bytes] = []
    parser = NetstringParser(out.append)
    with sock:
        sock.sendall(data)
        while len(out) < count:
            chunk = sock.recv(65536)
            if not chunk:
                break
            parser.feed(chunk)
    return out


@pytest.mark.skipif(shutil.which("tcpserver") is None,
                    reason="Debian package ucspi-tcp (tcpserver) is not installed")
def test_bin_qmail_qmtpd_under_tcpserver(home):
    """FAQ 5.2 literally: tcpserver 0 qmtp HOME/bin/qmail-qmtpd."""
    with open(os.path.join(home.control, "databytes"), "w") as f:
        f.write("100\n")
    child = subprocess.Popen(
        ["tcpserver", "-1", "-H", "-R", "-l", "test.example", "127.0.0.1", "0",
         home.sub("bin", "qmail-qmtpd")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONPATH=REPO))  # the launcher imports this tree
    try:
        responses = _talk(tcpserverPort(child), THREE, 3)
    finally:
        child.terminate()
        child.wait(10)
        child.stdout.close()
    checkThree(home, responses)
