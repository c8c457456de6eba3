"""The SMTP client's pieces on fakes: replies, deadlines, data encoding, peer text."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from qmtwist.remote.connection import ConnectionDied
from qmtwist.remote.dataencoder import DataEncoder
from qmtwist.remote.reports import clean, said
from qmtwist.remote.smtpclient import Reply, ReplyProtocol, lookAtMessage


def connected(timeout: float = 30) -> tuple[ReplyProtocol, StringTransport, Clock]:
    clock = Clock()
    proto = ReplyProtocol(clock, timeout)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock


def test_multilineReplyInPieces() -> None:
    proto, _t, _c = connected()
    got: list[Reply] = []
    proto.reply().addCallback(got.append)
    proto.dataReceived(b"250-first\r")
    proto.dataReceived(b"\n250-sec")
    assert got == []
    proto.dataReceived(b"ond\r\n250 last\r\n220 next\r\n")
    assert got == [Reply(250, b"250-first\n250-second\n250 last\n")]
    proto.reply().addCallback(got.append)
    assert got[1] == Reply(220, b"220 next\n")


def test_nonNumericCodeCountsAsTemporary() -> None:
    proto, _t, _c = connected()
    got: list[Reply] = []
    proto.dataReceived(b"hello there\r\n")
    proto.reply().addCallback(got.append)
    assert got == [Reply(451, b"hello there\n")]


def test_replyDeadline() -> None:
    proto, transport, clock = connected(timeout=1200)
    errors: list = []
    proto.reply().addErrback(errors.append)
    clock.advance(1199)
    assert errors == []
    clock.advance(1)
    assert errors[0].check(ConnectionDied)
    assert transport.disconnecting or transport.disconnected


def test_deadlineCancelledByReply() -> None:
    proto, _t, clock = connected(timeout=10)
    got: list = []
    proto.reply().addBoth(got.append)
    proto.dataReceived(b"220 hi\r\n")
    assert clock.getDelayedCalls() == []
    assert got == [Reply(220, b"220 hi\n")]


def test_lossFailsWaiter() -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    proto, _t, _c = connected()
    errors: list = []
    proto.reply().addErrback(errors.append)
    proto.connectionLost(Failure(ConnectionDone()))
    assert errors[0].check(ConnectionDied)


def test_overlongLineKillsConnection() -> None:
    proto, transport, _c = connected()
    errors: list = []
    proto.reply().addErrback(errors.append)
    proto.dataReceived(b"2" * 70000)
    assert errors[0].check(ConnectionDied)


def test_closeSendsQuitAndWaitsForPeer() -> None:
    proto, transport, clock = connected(timeout=1200)
    proto.close()
    assert transport.value() == b"QUIT\r\n"
    assert not transport.disconnecting
    clock.advance(5)
    assert transport.disconnecting


@pytest.mark.parametrize(
    "chunks, wire",
    [
        ([b"a\nb\n"], b"a\r\nb\r\n"),
        ([b"a\r\nb\n"], b"a\r\nb\r\n"),
        ([b"a\r", b"\nb\n"], b"a\r\nb\r\n"),
        ([b".x\n..y\nz.\n"], b"..x\r\n...y\r\nz.\r\n"),
        ([b"a\n", b".b\n"], b"a\r\n..b\r\n"),
        ([b"a", b".b\n"], b"a.b\r\n"),
        ([b"\n.\n"], b"\r\n..\r\n"),
        # A bare CR ends a line on the wire as CR LF; the line after it is dot-stuffed: no
        # next hop can see an end of DATA we did not send (RFC 5321 2.3.8).
        ([b"lone\rcr\n"], b"lone\r\ncr\r\n"),
        ([b"hello\r.\rMAIL FROM:<x>\n"], b"hello\r\n..\r\nMAIL FROM:<x>\r\n"),
        ([b"a\r.\nb\n"], b"a\r\n..\r\nb\r\n"),
        ([b"a\n.\r\nb\n"], b"a\r\n..\r\nb\r\n"),
        ([b"a\r", b".\r", b"\n"], b"a\r\n..\r\n"),
        ([b"a\r", b"\r", b"\n"], b"a\r\n\r\n"),
        ([b"n\x00.\x00\n"], b"n\x00.\x00\r\n"),
        ([b"x\r"], b"x\r\n"),
    ],
)
def test_dataEncoder(chunks: list[bytes], wire: bytes) -> None:
    enc = DataEncoder()
    out = b"".join(enc(c) for c in chunks) + enc.flush()
    assert out == wire
    assert b"\r\n" not in out.replace(b"\r\n", b"") and b"\r" not in out.replace(b"\r\n", b"")


def test_cleanAndSaid() -> None:
    assert clean(b"550 bad\x00user\x1b[1m\n") == b"550 bad?user?[1m\n"
    assert clean(b"250 caf\xc3\xa9 \xff\n") == "250 café \ufffd\n".encode()
    assert said(b"250 ok") == b"Remote host said: 250 ok\n"
    assert said(b"") == b""
    assert len(clean(b"x" * 10000)) == 5000


def test_lookAtMessage(tmp_path) -> None:
    """The last byte decides a partial final line; the message is read whole up to the limit."""
    p = tmp_path / "m"
    p.write_bytes(b"a\nb")
    assert lookAtMessage(str(p)) == (True, b"a\nb")
    assert lookAtMessage(str(p), 2) == (True, None)
    p.write_bytes(b"a\nb\n")
    assert lookAtMessage(str(p)) == (False, b"a\nb\n")
    assert lookAtMessage(str(p), 3) == (False, None)
    p.write_bytes(b"")
    assert lookAtMessage(str(p)) == (False, b"")
    assert lookAtMessage(str(p), 0) == (False, b"")


def test_sendFileStallAborts(tmp_path) -> None:
    """A peer that stops reading is given up after the timeout (qmail's write timeout)."""
    from twisted.internet import defer

    from qmtwist.remote.connection import sendFile

    class Stalling(StringTransport):
        def registerProducer(self, producer, streaming) -> None:
            super().registerProducer(producer, streaming)
            self.aborted = False

        def abortConnection(self) -> None:
            self.aborted = True
            self.producer.stopProducing()

    path = tmp_path / "m"
    path.write_bytes(b"x\n" * 100000)
    clock = Clock()
    transport = Stalling()
    errors: list = []
    with open(path, "rb") as f:
        d = defer.ensureDeferred(sendFile(f, transport, clock, 30))
        d.addErrback(errors.append)
        transport.producer.resumeProducing()  # one chunk, then the peer stalls
        clock.advance(29)
        assert errors == []
        clock.advance(1)
    assert transport.aborted
    assert errors[0].check(ConnectionDied)
