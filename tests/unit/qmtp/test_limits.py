"""QMTP's bounded session memory: control/maxrcpt per package, release at the end
(docs/behaviour/qmtp.md 9.2)."""

from __future__ import annotations

from attrs import evolve
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from qmtwist.control import load
from qmtwist.qmtp.netstring import encode
from qmtwist.qmtp.server import SLICE, QMTPServer
from qmtwist.queue.commit import Injector
from tests.unit.qmtp.test_server import NOW, ENV, messFiles, package, queued

TOOMANY_TEXT = b"Ztoo many recipients (#4.5.3)"
Z = encode(TOOMANY_TEXT)
D_RCPTHOSTS = encode(b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)")


def session(home, maxrcpt: int):
    clock = Clock()
    clock.advance(NOW)
    inj = Injector(home.queue, home.control, clock, maybeDeferred)
    ctl = evolve(load(home.control)[0], maxrcpt=maxrcpt)
    proto = QMTPServer(inj, ctl, clock, dict(ENV))
    tr = StringTransport()
    proto.makeConnection(tr)
    return proto, tr


def answers(data: bytes) -> list[bytes]:
    out = []
    i = 0
    while i < len(data):
        colon = data.index(b":", i)
        n = int(data[i:colon])
        out.append(data[colon + 1:colon + 1 + n])
        i = colon + n + 2
    return out


def test_text():
    from qmtwist.qmtp import server

    assert server.TOOMANY_TEXT == TOOMANY_TEXT


def test_recipients_past_maxrcpt_get_z_and_the_first_are_queued(home):
    proto, tr = session(home, 3)
    rcpts = [b"a@test.example", b"b@evil.example", b"c@test.example", b"d@test.example",
             b"e@test.example"]
    proto.dataReceived(package(b"\nSubject: x\n\nbody\n", b"s@x.example", rcpts) +
                       package(b"\nnext\n", b"s@x.example", [b"f@test.example"]))
    assert sorted(r for _, r, _ in queued(home)) == [
        (b"a@test.example", b"c@test.example"), (b"f@test.example",)]
    got = answers(tr.value())
    assert got[0].startswith(b"Kok ") and got[2].startswith(b"Kok ") and got[5].startswith(b"Kok ")
    assert [encode(a) for a in got[1:2] + got[3:5]] == [D_RCPTHOSTS, Z, Z]
    assert len(got) == 6


def test_every_recipient_past_the_limit_counts_even_refused_ones(home):
    proto, tr = session(home, 1)
    proto.dataReceived(package(b"\nx\n", b"", [b"a@evil.example", b"b@test.example"]))
    assert tr.value() == D_RCPTHOSTS + Z and queued(home) == []
    assert messFiles(home) == []


def test_default_is_1000(home):
    clock = Clock()
    ctl = load(home.control)[0]
    assert ctl.maxrcpt == 1000
    proto = QMTPServer(Injector(home.queue, home.control, clock, maybeDeferred), ctl, clock,
                       dict(ENV))
    tr = StringTransport()
    proto.makeConnection(tr)
    proto.dataReceived(package(b"\nx\n", b"", [b"u%d@test.example" % i for i in range(1003)]))
    [(_, rcpts, _)] = queued(home)
    assert len(rcpts) == 1000
    got = answers(tr.value())
    assert len(got) == 1003 and [encode(a) for a in got[1000:]] == [Z] * 3


def test_huge_recipient_list_held_and_answered_in_bounded_memory(home):
    """A hundred thousand empty recipients: only maxrcpt are stored, the answers stream."""
    proto, tr = session(home, 2)
    count = 100_000
    recipients = b"0:," * count
    head = package(b"\nx\n", b"", [])[: -len(b"0:,")]  # everything but the recipient list
    proto.dataReceived(head + b"%d:" % len(recipients))
    for i in range(0, len(recipients), 60000):
        proto.dataReceived(recipients[i:i + 60000])
        p = proto._package
        assert len(p.verdicts) <= 2 and len(p.recipients) <= 2
    proto.dataReceived(b",")
    [(_, rcpts, _)] = queued(home)
    assert rcpts == (b"", b"")  # qmail-queue adds @envnoathost later
    # the first two answers are written at once, the rest through a pull producer
    assert tr.producer is not None and not tr.streaming
    assert len(tr.value()) < 2 * SLICE
    while tr.producer is not None:
        tr.producer.resumeProducing()
    got = answers(tr.value())
    assert len(got) == count and got[0].startswith(b"Kok ") and got[1].startswith(b"Kok ")
    assert set(got[2:]) == {TOOMANY_TEXT}
    # the session goes on: the next package is answered after the stream
    proto.dataReceived(package(b"\ny\n", b"", [b"z@test.example"]))
    assert answers(tr.value())[-1].startswith(b"Kok ")


def test_lost_client_during_streamed_answer(home):
    proto, tr = session(home, 1)
    proto.dataReceived(package(b"\nx\n", b"", [b""] * 10000))
    assert tr.producer is not None
    tr.producer.stopProducing()  # what the transport does when the connection is lost
    proto.connectionLost(None)
    proto.dataReceived(package(b"\ny\n", b"", [b"z@test.example"]))
    assert len(queued(home)) == 1


def test_session_releases_what_it_holds_when_it_ends(home):
    proto, tr = session(home, 1000)
    rcpts = b"".join(encode(b"u%d@test.example" % i) for i in range(300))
    # the message, the sender and 300 recipients of a list that never ends
    proto.dataReceived(encode(b"\nx\n") + encode(b"") + b"%d:" % (len(rcpts) + 100) + rcpts)
    assert len(proto._package.recipients) == 300 and proto._package.writer is not None
    proto.connectionLost(None)
    p = proto._package
    assert p.recipients == [] and p.verdicts == [] and p.writer is None
    assert proto._input == b"" and proto._rcptParser is None
    assert messFiles(home) == [] and queued(home) == []
    proto.dataReceived(package(b"\ny\n", b"", [b"z@test.example"]))  # nothing more is read
    assert queued(home) == [] and tr.value() == b""


def test_session_limit_aborts_a_client_that_stopped_reading(home):
    """After the hour a streamed answer is not waited for: the connection is aborted."""
    proto, tr = session(home, 1)
    aborted = []
    tr.abortConnection = lambda: aborted.append(True)  # type: ignore[method-assign]
    proto.dataReceived(package(b"\nx\n", b"", [b""] * 10000))
    assert tr.producer is not None  # the client does not read: the stream never ends
    proto.clock.advance(3600)
    assert aborted == [True] and proto.exitStatus == 256
