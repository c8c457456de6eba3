"""A QMTP client that half-closes after its last package still gets every answer (tcpserver)."""

from __future__ import annotations

import os
import socket

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from qmtwist.context import Context, ControlCache
from qmtwist.qmtp.listener import makeQMTPService
from qmtwist.queue.commit import Injector


def _package(sender: bytes, rcpt: bytes, body: bytes) -> bytes:
    def ns(b: bytes) -> bytes:
        return b"%d:%s," % (len(b), b)

    return ns(b"\n" + body) + ns(sender) + ns(ns(rcpt))


@pytest_twisted.inlineCallbacks
def test_half_close_after_last_package_gets_answers(home):
    injector = Injector(home.queue, home.control, reactor, deferToThread)
    ctx = Context(home, reactor, injector, ControlCache(home), deferToThread)
    svc = makeQMTPService(ctx, "tcp:0:interface=127.0.0.1", str(home.rules) + "/qmtp", 5)
    svc.privilegedStartService()
    svc.startService()
    try:
        port = svc.port.getHost().port

        def client() -> bytes:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(_package(b"a@b", b"x@test.example", b"Subject: 1\n\none\n")
                      + _package(b"a@b", b"y@test.example", b"Subject: 2\n\ntwo\n"))
            s.shutdown(socket.SHUT_WR)
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    return data
                data += chunk

        answers = yield deferToThread(client)
        assert answers.count(b":K") == 2, answers
        assert len(os.listdir(home.queue.sub("todo"))) == 2
    finally:
        yield svc.stopService()
