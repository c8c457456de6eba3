"""
The queue file of DATA and of a message's first BDAT is created off the reactor thread
(qmtwist/smtp/server.py C{_openMessage}, docs/ARCHITECTURE.md 3): the session waits for it with
its input held, and answers in order once it is there.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from qmtwist.errors import QueueError
from qmtwist.smtp.state import State
from tests.unit.smtp.helpers import FakeInjector, makeSession

ENV = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<bob@test.example>\r\n"
OK2 = b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"
QUEUED = b"250 2.0.0 ok 1700000000 qp 100\r\n"
GOAHEAD = b"354 go ahead\r\n"


class LaterInjector(FakeInjector):
    """An injector whose queue files come later, as the daemon's do (a thread job)."""

    def __init__(self) -> None:
        super().__init__()
        self.opening: list[Deferred] = []

    def openMessage(self, how: bytes, uid: int | None = None) -> Deferred:
        d: Deferred = Deferred()
        self.opening.append(d)
        return d

    def arrive(self) -> None:
        """The thread job ends: the writer is there."""
        self.opening.pop(0).callback(self.newMessage(b"from network"))


def test_data_waits_for_the_queue_file_and_holds_what_was_pipelined():
    inj = LaterInjector()
    proto, t, _, _ = makeSession(injector=inj)
    t.clear()
    proto.dataReceived(ENV + b"DATA\r\nSubject: x\r\n\r\nhi\r\n.\r\nNOOP\r\n")
    assert t.value() == OK2  # no 354 before the file exists, nothing read as data yet
    assert inj.writers == [] and len(inj.opening) == 1
    assert t.producerState == "paused"
    inj.arrive()
    assert t.value() == OK2 + GOAHEAD + QUEUED + b"250 2.0.0 ok\r\n"
    [w] = inj.writers
    assert w.data.endswith(b"Subject: x\n\nhi\n")
    assert w.committed == (b"a@b.example", [b"bob@test.example"])


def test_a_queue_that_cannot_start_a_message_gets_451_and_the_transaction_stays():
    inj = LaterInjector()
    proto, t, _, _ = makeSession(injector=inj)
    t.clear()
    proto.dataReceived(ENV + b"DATA\r\n")
    inj.opening.pop(0).errback(QueueError(53, "No space left on device"))
    assert t.value() == OK2 + b"451 4.3.0 qqt failure (#4.3.0)\r\n"
    assert proto.state is State.MAIL and proto.recipients == [b"bob@test.example"]
    proto.dataReceived(b"DATA\r\n")  # the client may try again
    inj.arrive()
    assert t.value().endswith(GOAHEAD)


def test_a_session_gone_while_its_file_is_made_aborts_the_file():
    inj = LaterInjector()
    proto, t, _, _ = makeSession(injector=inj)
    proto.dataReceived(ENV + b"DATA\r\n")
    proto.connectionLost(None)
    inj.arrive()
    [w] = inj.writers
    assert w.aborted and w.committed is None


def test_the_first_bdat_chunk_waits_for_the_queue_file():
    inj = LaterInjector()
    proto, t, _, _ = makeSession(injector=inj)
    t.clear()
    chunk = b"Subject: y\r\n\r\nbody\r\n"
    proto.dataReceived(ENV + b"BDAT %d\r\n" % len(chunk) + chunk + b"BDAT 0 LAST\r\n")
    assert t.value() == OK2 and inj.writers == []
    inj.arrive()
    assert t.value() == OK2 + b"250 2.0.0 ok %d bytes\r\n" % len(chunk) + QUEUED
    assert inj.opening == []  # the second chunk adds to the same file
    [w] = inj.writers
    assert w.data.endswith(b"Subject: y\n\nbody\n")


def test_the_file_is_started_at_the_first_recipient_so_data_need_not_wait():
    inj = LaterInjector()
    proto, t, _, _ = makeSession(injector=inj)
    t.clear()
    proto.dataReceived(b"MAIL FROM:<a@b.example>\r\n")
    assert inj.opening == []  # nothing is made for a sender alone
    proto.dataReceived(b"RCPT TO:<bob@test.example>\r\nRCPT TO:<joe@test.example>\r\n")
    assert len(inj.opening) == 1  # one file for the transaction
    inj.arrive()
    proto.dataReceived(b"DATA\r\n")
    assert t.value().endswith(GOAHEAD) and t.producerState != "paused"
    proto.dataReceived(b"Subject: z\r\n\r\n.\r\n")
    [w] = inj.writers
    assert w.committed == (b"a@b.example", [b"bob@test.example", b"joe@test.example"])


def test_a_transaction_that_ends_before_data_removes_its_early_file():
    inj = LaterInjector()
    proto, t, _, _ = makeSession(injector=inj)
    proto.dataReceived(ENV + b"RSET\r\n")
    inj.arrive()  # the file arrives after the RSET: removed at once
    assert [w.aborted for w in inj.writers] == [True]
    proto.dataReceived(ENV)
    inj.arrive()  # arrived before the next MAIL, which ends the transaction
    proto.dataReceived(b"MAIL FROM:<c@d.example>\r\n")
    assert [w.aborted for w in inj.writers] == [True, True]
    proto.dataReceived(b"RCPT TO:<bob@test.example>\r\n")
    inj.opening.pop(0).errback(QueueError(53, "No space left on device"))
    proto.connectionLost(None)  # a failed early file is forgotten without a trace
    assert len(inj.writers) == 2 and all(w.committed is None for w in inj.writers)
