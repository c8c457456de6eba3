"""The SMTP listener's limits over real sockets: per-address sessions (docs/behaviour/tcpserver.md
8.3, smtp.md 7.11) and control/maxrcpt with real queue files."""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.conftest import logLines
from tests.integration.smtp.conftest import Client, queuedMessages

OVER = b"421 too many connections from your address (#4.7.0)\r\n"


@pytest_twisted.inlineCallbacks
def test_per_ip_limit_refuses_fourth_from_one_address(startSMTP, logEvents):
    srv = startSMTP(perIP=3)  # --smtp-concurrency stays at its default 40
    assert srv.service.concurrency == 40

    def talk():
        clients = [Client(srv.port) for _ in range(3)]
        greetings = [c.readUntil(b"\r\n") for c in clients]
        fourth = Client(srv.port)
        refused = fourth.readAll()  # the 421, then the close
        other = Client(srv.port, source="127.0.0.2")
        otherGreeting = other.readUntil(b"\r\n")
        other.send(b"QUIT\r\n")
        other.readAll()
        clients[0].send(b"QUIT\r\n")
        clients[0].readAll()
        again = Client(srv.port)  # a slot of 127.0.0.1 is free again
        againGreeting = again.readUntil(b"\r\n")
        for c in clients[1:] + [again]:
            c.send(b"QUIT\r\n")
            c.readAll()
        return greetings, refused, otherGreeting, againGreeting

    greetings, refused, otherGreeting, againGreeting = yield deferToThread(talk)
    assert greetings == [b"220 test.example ESMTP\r\n"] * 3
    assert refused == OVER
    assert otherGreeting == b"220 test.example ESMTP\r\n"
    assert againGreeting == b"220 test.example ESMTP\r\n"
    lines = [ln for ln in logLines(logEvents) if ln.startswith("tcpserver:")]
    deny = [ln for ln in lines if ln.startswith("tcpserver: deny 4 ")]
    assert len(deny) == 1 and deny[0].endswith(" per-ip limit 3")
    assert deny[0].startswith("tcpserver: deny 4 test.example:127.0.0.1:%d :127.0.0.1::"
                              % srv.port)
    assert "tcpserver: pid 5 from 127.0.0.2" in lines
    assert max(int(ln.split()[-1].split("/")[0]) for ln in lines if "status:" in ln) == 4


@pytest_twisted.inlineCallbacks
def test_control_maxrcpt_over_a_real_socket(home, startSMTP):
    with open(os.path.join(home.control, "maxrcpt"), "wb") as f:
        f.write(b"2\n")
    srv = startSMTP()

    def talk():
        c = Client(srv.port)
        c.send(b"HELO client.example\r\nMAIL FROM:<a@x.example>\r\n" +
               b"".join(b"RCPT TO:<u%d@test.example>\r\n" % i for i in range(4)) +
               b"DATA\r\nSubject: t\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        return c.readAll()

    out = yield deferToThread(talk)
    lines = out.split(b"\r\n")
    assert lines[2:7] == [b"250 2.1.0 ok", b"250 2.1.5 ok", b"250 2.1.5 ok",
                          b"452 4.5.3 too many recipients (#4.5.3)",
                          b"452 4.5.3 too many recipients (#4.5.3)"]
    assert lines[7] == b"354 go ahead" and lines[8].startswith(b"250 2.0.0 ok ")
    [(env, _)] = queuedMessages(home)
    assert list(env.recipients) == [b"u0@test.example", b"u1@test.example"]
