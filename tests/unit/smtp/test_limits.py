"""A session's memory is bounded: control/maxrcpt, and release at the end (docs/behaviour/smtp.md
7.2, 7.11)."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from qmtwist.control import Control
from tests.unit.smtp.helpers import FakeInjector, makeControl, makeSession

TOOMANY = b"452 4.5.3 too many recipients (#4.5.3)\r\n"
NOGW = b"553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\r\n"


def rcpts(n: int, start: int = 0) -> bytes:
    return b"".join(b"RCPT TO:<u%d@test.example>\r\n" % i for i in range(start, start + n))


def test_maxrcpt_refuses_the_rest_and_the_message_goes_to_the_accepted():
    proto, t, inj, _ = makeSession(control=makeControl(maxrcpt=3))
    t.clear()
    proto.dataReceived(b"MAIL FROM:<a@x.example>\r\n" + rcpts(5) +
                       b"RCPT TO:<v@relay.example>\r\nDATA\r\nSubject: t\r\n\r\nbody\r\n.\r\n")
    assert t.value() == (b"250 2.1.0 ok\r\n" + b"250 2.1.5 ok\r\n" * 3 + TOOMANY * 2 + NOGW +
                         b"354 go ahead\r\n250 2.0.0 ok 1700000000 qp 100\r\n")
    assert inj.writers[0].committed == (
        b"a@x.example", [b"u0@test.example", b"u1@test.example", b"u2@test.example"])


def test_maxrcpt_counts_per_message():
    proto, t, inj, _ = makeSession(control=makeControl(maxrcpt=2))
    t.clear()
    proto.dataReceived(b"MAIL FROM:<a@x.example>\r\n" + rcpts(3) + b"RSET\r\n" +
                       b"MAIL FROM:<b@x.example>\r\n" + rcpts(3, 10) + b"DATA\r\n.\r\n" +
                       b"MAIL FROM:<c@x.example>\r\n" + rcpts(2, 20))
    assert t.value() == (b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n" + TOOMANY +
                         b"250 2.0.0 flushed\r\n" +
                         b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n" + TOOMANY +
                         b"354 go ahead\r\n250 2.0.0 ok 1700000000 qp 101\r\n" +
                         b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n")
    # the first transaction's queue file, started at its first recipient, went with its RSET
    assert inj.writers[0].aborted and inj.writers[0].committed is None
    assert inj.writers[1].committed == (b"b@x.example", [b"u10@test.example", b"u11@test.example"])


def test_default_maxrcpt_is_1000():
    assert Control().maxrcpt == 1000
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(b"MAIL FROM:<a@x.example>\r\n" + rcpts(1002))
    assert t.value() == b"250 2.1.0 ok\r\n" + b"250 2.1.5 ok\r\n" * 1000 + TOOMANY * 2
    assert len(proto.recipients) == 1000


def test_maxrcpt_zero_means_no_limit():
    proto, t, inj, _ = makeSession(control=makeControl(maxrcpt=0))
    t.clear()
    proto.dataReceived(b"MAIL FROM:<a@x.example>\r\n" + rcpts(1500))
    assert t.value() == b"250 2.1.0 ok\r\n" + b"250 2.1.5 ok\r\n" * 1500


def test_session_releases_what_it_holds_when_it_ends():
    proto, t, inj, _ = makeSession()
    proto.dataReceived(b"MAIL FROM:<a@x.example>\r\n" + rcpts(500) + b"NOOP")
    assert len(proto.recipients) == 500 and proto._buf
    proto.connectionLost(Failure(ConnectionDone()))
    assert proto.recipients == [] and proto.sender is None
    assert len(proto._buf) == 0 and proto._out == [] and proto._data is None


def test_session_ending_in_data_releases_and_aborts():
    proto, t, inj, _ = makeSession()
    proto.dataReceived(b"MAIL FROM:<a@x.example>\r\n" + rcpts(3) + b"DATA\r\nSubject: t\r\n")
    assert proto._data is not None
    proto.connectionLost(Failure(ConnectionDone()))
    assert inj.writers[0].aborted and inj.writers[0].committed is None
    assert proto._data is None and proto.recipients == [] and not proto._inData


def test_session_ending_during_commit_still_queues():
    inj = FakeInjector()
    inj.hold = True
    proto, t, inj, _ = makeSession(injector=inj)
    proto.dataReceived(b"MAIL FROM:<a@x.example>\r\n" + rcpts(2) + b"DATA\r\n.\r\nNOOP\r\n")
    proto.connectionLost(Failure(ConnectionDone()))
    assert len(proto._buf) == 0 and proto.recipients == []
    assert inj.writers[0].committed == (b"a@x.example", [b"u0@test.example", b"u1@test.example"])
    assert not inj.writers[0].aborted
    from tests.unit.smtp.helpers import FakeQueued

    inj.pending[0].callback(FakeQueued(1, 100, 1700000000.0))  # nobody left to answer: no error
    assert proto._out == []
