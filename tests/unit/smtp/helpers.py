"""Fakes for SMTP session tests: an injector spy, a TLS-capable StringTransport, a session builder."""

from __future__ import annotations

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from qmtwist.control import Control
from qmtwist.errors import QueueError
from qmtwist.smtp.server import SMTPServer


@frozen
class FakeQueued:
    id: int
    qp: int
    time: float


class FakeWriter:
    def __init__(self, injector: "FakeInjector", qp: int) -> None:
        self.injector = injector
        self.qp = qp
        self.chunks: list[bytes] = []
        self.aborted = False
        self.committed: tuple[bytes, list[bytes]] | None = None

    @property
    def size(self) -> int:
        return sum(map(len, self.chunks))

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def write(self, data: bytes) -> None:
        if self.injector.writeError is not None:
            raise QueueError(self.injector.writeError)
        self.chunks.append(data)

    def commit(self, sender: bytes, recipients: list[bytes]) -> Deferred:
        self.committed = (sender, list(recipients))
        if self.injector.hold:
            d: Deferred = Deferred()
            self.injector.pending.append(d)
            return d
        if self.injector.commitError is not None:
            from twisted.internet.defer import fail
            return fail(QueueError(self.injector.commitError))
        return succeed(FakeQueued(1, self.qp, 1700000000.0))

    def abort(self) -> None:
        self.aborted = True


class FakeInjector:
    def __init__(self) -> None:
        self.writers: list[FakeWriter] = []
        self.newError: int | None = None
        self.writeError: int | None = None
        self.commitError: int | None = None
        self.hold = False
        self.pending: list[Deferred] = []

    def newMessage(self, how: bytes, uid: int | None = None) -> FakeWriter:
        assert how == b"from network"
        if self.newError is not None:
            raise QueueError(self.newError)
        w = FakeWriter(self, 100 + len(self.writers))
        self.writers.append(w)
        return w

    def openMessage(self, how: bytes, uid: int | None = None) -> Deferred:
        """L{newMessage}, answered at once (the daemon's comes from a thread)."""
        return maybeDeferred(self.newMessage, how, uid)

    @property
    def committed(self) -> list[FakeWriter]:
        return [w for w in self.writers if w.committed is not None]


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.tlsStarted: object = None

    def startTLS(self, contextFactory: object) -> None:
        self.tlsStarted = contextFactory


class FakeCertificate:
    def __init__(self, present: bool = True) -> None:
        self.present = present

    def options(self) -> object:
        return object() if self.present else None


def makeControl(**kw: object) -> Control:
    base = dict(
        me=b"test.example", smtpgreeting=b"test.example", localiphost=b"test.example",
        locals=frozenset([b"test.example", b"localhost"]),
        rcpthosts=(b"test.example", b"localhost", b".sub.example"),
    )
    base.update(kw)
    return Control(**base)  # type: ignore[arg-type]


ENV = {"TCPREMOTEIP": b"127.0.0.1", "TCPLOCALIP": b"127.0.0.1", "TCPLOCALHOST": b"test.example",
       "TCPREMOTEPORT": b"40000", "TCPLOCALPORT": b"25", "PROTO": b"TCP"}


def makeSession(control: Control | None = None, env: dict | None = None, cert: bool = False,
                injector: FakeInjector | None = None):
    clock = Clock()
    clock.advance(1700000000)
    injector = injector or FakeInjector()
    proto = SMTPServer(injector, control or makeControl(), clock,
                       FakeCertificate() if cert else None)  # type: ignore[arg-type]
    proto.env = dict(ENV if env is None else env)
    transport = TLSStringTransport()
    proto.makeConnection(transport)
    return proto, transport, injector, clock
