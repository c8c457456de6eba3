"""qmail-qmtpd dialogues on a StringTransport with the real Injector (docs/behaviour/qmtp.md 9)."""

from __future__ import annotations

import os

import pytest
from attrs import evolve
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from qmtwist.control import load
from qmtwist.errors import QueueError
from qmtwist.qmtp.netstring import encode, encodeList
from qmtwist.qmtp.server import (
    DATABYTES_TEXT, MAX_OUTSTANDING, QMTPServer, receivedLine)
from qmtwist.queue.commit import Injector
from qmtwist.queue.envelope import decodeTodo

NOW = 1762326189  # 5 Nov 2025 07:03:09
ENV = {"TCPREMOTEIP": b"127.0.0.1", "TCPLOCALHOST": b"test.example", "TCPLOCALIP": b"127.0.0.1"}
RCVD = (b"Received: from unknown (127.0.0.1)\n  by test.example with QMTP; "
        b"5 Nov 2025 07:03:09 -0000\n")


def package(message: bytes, sender: bytes, recipients: list[bytes]) -> bytes:
    return encode(message) + encode(sender) + encodeList(recipients)


def queued(home) -> list[tuple[bytes, tuple[bytes, ...], bytes]]:
    """(sender, recipients, message) of every message in todo/, in id order."""
    layout = home.queue
    out = []
    for name in sorted(os.listdir(layout.sub("todo")), key=int):
        with open(layout.todo(int(name)), "rb") as f:
            env = decodeTodo(f.read())
        with open(layout.mess(int(name)), "rb") as f:
            out.append((env.sender, env.recipients, f.read()))
    return out


def messFiles(home) -> list[str]:
    layout = home.queue
    return [n for d in os.listdir(layout.sub("mess")) for n in os.listdir(layout.sub("mess", d))]


def session(home, environ=None, databytes=0, injector=None):
    clock = Clock()
    clock.advance(NOW)
    inj = injector or Injector(home.queue, home.control, clock, maybeDeferred)
    ctl = evolve(load(home.control)[0], databytes=databytes)
    proto = QMTPServer(inj, ctl, clock, {**ENV, **(environ or {})})
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport, clock


def qhead(message: bytes) -> bytes:
    """The stored message without the queue's own Received line."""
    assert message.startswith(b"Received: (qmail ")
    return message.split(b"\n", 1)[1]


def test_one_package(home):
    proto, tr, _ = session(home)
    proto.dataReceived(package(b"\nSubject: x\n\nbody\n", b"a@b.example", [b"bob@test.example"]))
    [(sender, rcpts, mess)] = queued(home)
    qp = int(mess.split(b" ")[2])
    assert tr.value() == encode(b"Kok %d qp %d" % (NOW, qp))
    assert (sender, rcpts) == (b"a@b.example", (b"bob@test.example",))
    assert qhead(mess) == RCVD + b"Subject: x\n\nbody\n"
    assert mess.startswith(b"Received: (qmail %d invoked from network); 5 Nov 2025" % qp)
    assert not tr.disconnecting


def test_crlf_message_converted_bytewise(home):
    proto, tr, _ = session(home)
    data = package(b"\rA: b\r\n\r\nline\rx\r\n\xff\xfe\r\n\r", b"", [b"x@localhost"])
    for i in range(len(data)):  # one byte at a time: a CR split from its LF
        proto.dataReceived(data[i:i + 1])
    [(sender, rcpts, mess)] = queued(home)
    assert sender == b""
    assert qhead(mess) == RCVD + b"A: b\n\nline\rx\n\xff\xfe\n\r"
    assert tr.value() == encode(b"Kok %d qp %s" % (NOW, mess.split(b" ")[2]))


def test_three_packages_pipelined(home):
    proto, tr, _ = session(home, databytes=10)
    data = (package(b"\nhi\n", b"a@b", [b"x@elsewhere.example"])
            + package(b"\n" + b"y" * 11, b"a@b", [b"x@test.example"])
            + package(b"\n" + b"y" * 10, b"a@b", [b"x@test.example", b"z@nowhere.example"]))
    proto.dataReceived(data)
    [(_, rcpts, mess)] = queued(home)
    assert rcpts == (b"x@test.example",)
    assert qhead(mess) == RCVD + b"y" * 10
    qp = int(mess.split(b" ")[2])
    assert tr.value() == (
        b"66:Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1),"
        + encode(DATABYTES_TEXT)

        + encode(b"Kok %d qp %d" % (NOW, qp))
        + b"66:Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1),")
    assert len(messFiles(home)) == 1


def test_databytes_counts_stored_bytes_and_env_overrides(home):
    # 10 stored bytes from 15 sent (CRLF), limit 10 from DATABYTES beats control's 5
    proto, tr, _ = session(home, {"DATABYTES": b"10"}, databytes=5)
    proto.dataReceived(package(b"\r12\r\n34\r\n56\r\n7", b"", [b"a@localhost"]))
    [(_, _, mess)] = queued(home)
    assert qhead(mess) == RCVD + b"12\n34\n56\n7"
    assert tr.value() == encode(b"Kok %d qp %s" % (NOW, mess.split(b" ")[2]))
    assert len(queued(home)) == 1


@pytest.mark.parametrize("relay, rcpt, stored", [
    (b"", b"joe@x.com", b"joe@x.com"),
    (b"@fixme", b"joe@x.com", b"joe@x.com@fixme"),
])
def test_relayclient(home, relay, rcpt, stored):
    proto, tr, _ = session(home, {"RELAYCLIENT": relay})
    proto.dataReceived(package(b"\nx", b"s@y", [rcpt]))
    [(_, rcpts, _m)] = queued(home)
    assert rcpts == (stored,)
    assert b"Kok" in tr.value()


@pytest.mark.parametrize("sender, rcpts, relay, expected", [
    (b"s" * 999, [b"a@localhost"], None, None),
    (b"s" * 1000, [b"a@localhost"], None, [b"Dunacceptable sender (#5.1.7)"]),
    (b"s\0x", [b"a@localhost", b"b@elsewhere"], None,
     [b"Dunacceptable sender (#5.1.7)",
      b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"]),
    (b"s", [b"a" * 990 + b"@localhost"], None, [b"Dsorry, I can't handle that recipient (#5.1.3)"]),
    (b"s", [b"a" * 980 + b"@localhost"], b"@0123456789", [
        b"Dsorry, I can't handle that recipient (#5.1.3)"]),
    (b"s", [b"a\0@localhost"], None, [b"Dsorry, I can't handle that recipient (#5.1.3)"]),
    (b"s", [b"a\n@localhost"], None, [b"Dsorry, I can't handle that recipient (#5.1.3)"]),
    (b"s", [b"a\r@localhost"], None, [b"Dsorry, I can't handle that recipient (#5.1.3)"]),
    (b"s\nx", [b"a@localhost"], None, [b"Dunacceptable sender (#5.1.7)"]),
    (b"s", [], None, []),
])
def test_refusals(home, sender, rcpts, relay, expected):
    env = {} if relay is None else {"RELAYCLIENT": relay}
    proto, tr, _ = session(home, env)
    proto.dataReceived(package(b"\nmsg\n", sender, rcpts))
    if expected is None:
        assert b"Kok" in tr.value() and len(queued(home)) == 1
    else:
        assert tr.value() == b"".join(encode(e) for e in expected)
        assert queued(home) == [] and messFiles(home) == []
    assert not tr.disconnecting


@pytest.mark.parametrize("bad", [
    b"x:\nab,",             # length not digits
    b"3:\nab;",             # missing comma
    b"0:,1:s,0:,",          # empty message
    b"3:Xab,1:s,0:,",       # first byte neither LF nor CR
    b"99999999999999999999:\n",  # 20-digit length
    b"200000001:\n",        # over 200,000,000
    b"3:\nab,1:s,9:3:a@b,,",  # recipient runs past its container
    b"3:\nab,1:s,6:5:a@b,",  # recipient longer than its container
    b"03:\nab,",            # leading zero
])
def test_protocol_errors_close_without_answer(home, bad):
    proto, tr, _ = session(home)
    good = package(b"\nfirst\n", b"a@b", [b"x@test.example"])
    proto.dataReceived(good + bad + good)
    [(_, _, mess)] = queued(home)
    assert tr.value() == encode(b"Kok %d qp %s" % (NOW, mess.split(b" ")[2]))
    assert tr.disconnecting
    assert proto.exitStatus == 256
    assert len(messFiles(home)) == 1


def test_disconnect_mid_message_leaves_nothing(home):
    proto, tr, _ = session(home)
    proto.dataReceived(b"100:\npartial")
    assert len(messFiles(home)) == 1
    proto.connectionLost(None)
    assert messFiles(home) == [] and queued(home) == []


def test_session_limit_one_hour(home):
    proto, tr, clock = session(home)
    proto.dataReceived(b"100:\npartial")
    clock.advance(3599)
    assert not tr.disconnecting
    clock.advance(1)
    assert tr.disconnecting and proto.exitStatus == 256
    assert messFiles(home) == []


class _SlowInjector:
    """The real injector, but commits fire only when the test says so."""

    def __init__(self, inner):
        self.inner = inner
        self.waiting: list[tuple[Deferred, Deferred]] = []

    def newMessage(self, how, uid=None):
        w = self.inner.newMessage(how, uid)
        outer = self

        class W:
            qp = w.qp

            def write(self, data):
                w.write(data)

            def abort(self):
                w.abort()

            def commit(self, sender, rcpts):
                d = Deferred()
                outer.waiting.append((w.commit(sender, rcpts), d))
                return d

        return W()

    def openMessage(self, how, uid=None):
        return maybeDeferred(self.newMessage, how, uid)


def test_answers_wait_for_commit_and_keep_order(home):
    clock = Clock()
    clock.advance(NOW)
    inner = Injector(home.queue, home.control, clock, maybeDeferred)
    slow = _SlowInjector(inner)
    proto, tr, _ = session(home, injector=slow)
    proto.dataReceived(package(b"\n1", b"", [b"a@localhost"]) + package(b"\n2", b"", [b"b@nowhere"])
                       + package(b"\n3", b"", [b"c@localhost"]))
    assert tr.value() == b"" and len(slow.waiting) == 2
    real, d = slow.waiting[1]
    got: list = []
    real.addCallback(lambda q: (got.append(q), d.callback(q)))
    assert tr.value() == b""  # the first package has not been answered yet
    real, d = slow.waiting[0]
    d.errback(QueueError(53))
    qp3 = got[0].qp
    assert tr.value() == (b"37:Zqq write error or disk full (#4.3.0),"
                          b"66:Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1),"
                          + encode(b"Kok %d qp %d" % (NOW, qp3)))


def test_received_line_with_host_and_info():
    env = {"TCPREMOTEHOST": b"cl ient.example", "TCPREMOTEIP": b"10.0.0.1",
           "TCPREMOTEINFO": b"joe", "TCPLOCALHOST": b"me.example"}
    assert receivedLine(env, NOW) == (
        b"Received: from cl?ient.example (joe@10.0.0.1)\n"
        b"  by me.example with QMTP; 5 Nov 2025 07:03:09 -0000\n")


def test_half_close_answers_then_closes(home):
    proto, tr, _ = session(home)
    proto.dataReceived(package(b"\nm", b"", [b"a@localhost"]) + b"50:\npart")
    proto.readConnectionLost()
    [(_, _, mess)] = queued(home)
    assert tr.value() == encode(b"Kok %d qp %s" % (NOW, mess.split(b" ")[2]))
    assert tr.disconnecting and proto.exitStatus is None
    assert len(messFiles(home)) == 1


def test_many_pipelined_packages_wait_for_commits(home):
    """A burst of packages cannot hold more than a few queue files open at once."""
    clock = Clock()
    clock.advance(NOW)
    slow = _SlowInjector(Injector(home.queue, home.control, clock, maybeDeferred))
    proto, tr, _ = session(home, injector=slow)
    burst = b"".join(package(b"\n" + b"x" * 200 + b"\n%d" % i, b"", [b"a@localhost"])
                     for i in range(400))
    assert len(burst) > 65536
    proto.dataReceived(burst)
    assert len(slow.waiting) == MAX_OUTSTANDING and len(messFiles(home)) == MAX_OUTSTANDING
    assert tr.producerState == "paused" and tr.value() == b""
    fired = 0
    while fired < len(slow.waiting):
        assert len(messFiles(home)) - fired <= MAX_OUTSTANDING
        real, d = slow.waiting[fired]
        real.chainDeferred(d)
        fired += 1
    assert fired == 400 and tr.producerState == "producing"
    answers = tr.value().split(b",")[:-1]
    assert len(answers) == 400 and all(b":Kok %d qp " % NOW in a for a in answers)
    assert [m[1] for m in queued(home)][:1] == [(b"a@localhost",)]
    bodies = sorted(int(qhead(m).split(b"\n")[-1]) for _, _, m in queued(home))
    assert bodies == list(range(400))
