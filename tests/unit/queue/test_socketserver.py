"""The daemon's queue socket on a StringTransport with the real Injector (docs/behaviour/queue.md 5.3)."""

from __future__ import annotations

import os
import struct

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from qmtwist.netstring import encode
from qmtwist.queue.commit import Injector
from qmtwist.queue.envelope import decodeTodo
from qmtwist.queue.socketserver import QueueSocketFactory
from qmtwist.tools.queueclient import envelopeBytes

UID = 4321


class PeerSocket:
    """Answers SO_PEERCRED as a Unix socket whose peer runs as L{UID}."""

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        return struct.pack("3i", 99, UID, 100)


class PeerTransport(StringTransport):
    def getHandle(self) -> PeerSocket:
        return PeerSocket()


def connect(home) -> tuple:
    clock = Clock()
    clock.advance(1_762_326_189)
    injector = Injector(home.queue, home.control, clock, maybeDeferred)
    proto = QueueSocketFactory(injector).buildProtocol(None)
    transport = PeerTransport()
    proto.makeConnection(transport)
    return proto, transport


def todo(home) -> list[str]:
    return os.listdir(home.queue.sub("todo"))


def messFiles(home) -> list[str]:
    layout = home.queue
    return [n for d in os.listdir(layout.sub("mess")) for n in os.listdir(layout.sub("mess", d))]


@pytest.mark.parametrize("step", [1, 7, 100000])
def test_oneInjection(home, step: int) -> None:
    proto, transport = connect(home)
    body = b"Subject: from a user\n\nhello\n"
    data = encode(body) + encode(envelopeBytes(b"u@test.example", [b"a@x.y", b"b@x.y"]))
    for i in range(0, len(data), step):
        proto.dataReceived(data[i : i + step])
    assert transport.value() == b"0\n"
    assert transport.disconnecting
    [name] = todo(home)
    with open(home.queue.todo(int(name)), "rb") as f:
        envelope = decodeTodo(f.read())
    assert (envelope.sender, envelope.recipients) == (b"u@test.example", (b"a@x.y", b"b@x.y"))
    with open(home.queue.mess(int(name)), "rb") as f:
        mess = f.read()
    assert b" invoked by uid %d); " % UID in mess.split(b"\n", 1)[0]
    assert mess.endswith(b"\n" + body)


def test_bytesAfterTheEnvelopeAreIgnored(home) -> None:
    proto, transport = connect(home)
    proto.dataReceived(encode(b"x\n") + encode(envelopeBytes(b"", [b"a@x.y"])) + b"junk")
    proto.dataReceived(b"more junk")
    assert transport.value() == b"0\n"
    assert len(todo(home)) == 1


@pytest.mark.parametrize("frame", [
    b"5:hello;",           # no comma after the message
    b"x:hello,",           # the length is not a number
    b"1234567890123",      # thirteen digits and no colon yet
])
def test_malformedFrame(home, frame: bytes) -> None:
    proto, transport = connect(home)
    proto.dataReceived(frame)
    assert transport.value() == b"54\n"
    assert transport.disconnecting
    proto.dataReceived(encode(envelopeBytes(b"", [b"a@x.y"])))  # too late: ignored
    assert transport.value() == b"54\n"
    assert todo(home) == [] and messFiles(home) == []


def test_malformedEnvelope(home) -> None:
    proto, transport = connect(home)
    proto.dataReceived(encode(b"x\n") + encode(b"Tnot a sender\0\0"))
    assert transport.value() == b"91\n"
    assert todo(home) == [] and messFiles(home) == []


def test_noPeerCredentials(home) -> None:
    injector = Injector(home.queue, home.control, Clock(), maybeDeferred)
    proto = QueueSocketFactory(injector).buildProtocol(None)
    transport = StringTransport()  # no socket: the uid cannot be learnt
    proto.makeConnection(transport)
    assert transport.value() == b"81\n"


class LaterInjector:
    """The real injector, whose queue files come when the test says (a thread job)."""

    def __init__(self, inner: Injector) -> None:
        self.inner = inner
        self.opening: list = []

    def openMessage(self, how: bytes, uid: int | None = None):
        from twisted.internet.defer import Deferred
        d: Deferred = Deferred()
        self.opening.append((d, how, uid))
        return d

    def arrive(self) -> None:
        d, how, uid = self.opening.pop(0)
        d.callback(self.inner.newMessage(how, uid))

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def laterConnection(home) -> tuple:
    clock = Clock()
    clock.advance(1_762_326_189)
    injector = LaterInjector(Injector(home.queue, home.control, clock, maybeDeferred))
    proto = QueueSocketFactory(injector).buildProtocol(None)
    transport = PeerTransport()
    proto.makeConnection(transport)
    return proto, transport, injector


def test_the_client_is_read_once_its_queue_file_is_there(home) -> None:
    """The file is made off the reactor thread; the client's bytes wait in the socket."""
    proto, transport, injector = laterConnection(home)
    assert transport.producerState == "paused" and messFiles(home) == []
    assert [(how, uid) for _, how, uid in injector.opening] == [(b"by uid %d" % UID, UID)]
    injector.arrive()
    assert transport.producerState == "producing"
    body = b"Subject: later\n\nhello\n"
    proto.dataReceived(encode(body) + encode(envelopeBytes(b"u@test.example", [b"a@x.y"])))
    assert transport.value() == b"0\n" and len(todo(home)) == 1


def test_a_queue_file_that_cannot_be_made_is_the_exit_code(home) -> None:
    from qmtwist.errors import QueueError
    proto, transport, injector = laterConnection(home)
    injector.opening.pop(0)[0].errback(QueueError(53, "No space left on device"))
    assert transport.value() == b"53\n" and transport.disconnecting


def test_a_queue_file_for_a_client_gone_is_removed(home) -> None:
    proto, transport, injector = laterConnection(home)
    proto.connectionLost(None)
    injector.arrive()
    assert messFiles(home) == [] and todo(home) == []
