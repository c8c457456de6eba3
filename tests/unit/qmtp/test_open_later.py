"""
A package's queue file made on a thread, as the daemon's injector does (C{openMessage},
qmtwist/qmtp/server.py C{_open}): the package's bytes are held and no more input is read until
the file is there, answers keep their order, and a file that comes after the session gave the
package up is removed.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from qmtwist.errors import QueueError
from qmtwist.queue.commit import Injector
from tests.unit.qmtp.test_server import NOW, messFiles, package, qhead, queued, session


class LaterFiles:
    """The real injector (synchronous), with queue files handed out when the test says."""

    def __init__(self, home) -> None:
        clock = Clock()
        clock.advance(NOW)
        self.inner = Injector(home.queue, home.control, clock, maybeDeferred)
        self.opening: list[Deferred] = []

    def openMessage(self, how: bytes, uid: int | None = None) -> Deferred:
        d: Deferred = Deferred()
        self.opening.append(d)
        return d

    def newMessage(self, how: bytes, uid: int | None = None):
        raise AssertionError("the session must not make its file on the reactor thread")

    def arrive(self) -> None:
        self.opening.pop(0).callback(self.inner.newMessage(b"from network"))

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def test_input_waits_for_the_file_then_both_packages_are_queued(home):
    inj = LaterFiles(home)
    proto, tr, _ = session(home, injector=inj)
    body1, body2 = b"Subject: one\n\n" + b"x" * 100000 + b"\n", b"Subject: two\n\nhi\n"
    # a QMTP message starts with its line-ending byte (LF)
    proto.dataReceived(package(b"\n" + body1, b"a@b.example", [b"a@localhost"]) +
                       package(b"\n" + body2, b"", [b"b@localhost"]))
    assert len(inj.opening) == 1 and tr.value() == b""
    assert messFiles(home) == [] and tr.producerState == "paused"
    assert len(proto._input) > len(body2)  # not read on: only what was held is in memory
    inj.arrive()
    assert len(inj.opening) == 1  # the second package's file is asked for in turn
    inj.arrive()
    answers = tr.value()
    assert answers.count(b":Kok ") == 2 and tr.producerState != "paused"
    # queued() goes by message number (an inode), not by arrival
    [(s2, r2, m2), (s1, r1, m1)] = sorted(queued(home))
    assert (s1, r1, s2, r2) == (b"a@b.example", (b"a@localhost",), b"", (b"b@localhost",))
    assert qhead(m1).endswith(body1) and qhead(m2).endswith(body2)


def test_a_file_that_cannot_be_made_is_that_package_s_answer(home):
    inj = LaterFiles(home)
    proto, tr, _ = session(home, injector=inj)
    proto.dataReceived(package(b"\n1", b"", [b"a@localhost"]) +
                       package(b"\n2", b"", [b"b@localhost"]))
    inj.opening.pop(0).errback(QueueError(53, "No space left on device"))
    inj.arrive()
    out = tr.value()
    assert out.startswith(b"37:Zqq write error or disk full (#4.3.0),")
    assert out.count(b":Kok ") == 1 and len(queued(home)) == 1


def test_a_file_that_arrives_after_the_session_ended_is_removed(home):
    inj = LaterFiles(home)
    proto, tr, _ = session(home, injector=inj)
    proto.dataReceived(b"100:\npartial")
    proto.connectionLost(None)
    inj.arrive()
    assert messFiles(home) == [] and queued(home) == []
