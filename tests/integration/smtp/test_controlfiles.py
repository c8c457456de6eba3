"""Bad control files on a running SMTP listener: real sockets, real queue files, a real FIFO
(docs/behaviour/control.md 2.1, 2.2, 2.3)."""

from __future__ import annotations

import os
import re
import threading

import pytest_twisted
from twisted.internet.threads import deferToThread

from qmtwist import control, tls
from qmtwist.queue.commit import Injector
from tests.conftest import logLines
from tests.integration.smtp.conftest import Client, queuedMessages
from tests.integration.smtp.test_listener import MSG, checkMessage

SESSION = (b"EHLO client.example\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<bob@test.example>\r\n"
           b"DATA\r\n" + MSG + b".\r\nQUIT\r\n")


def talk(port: int) -> bytes:
    c = Client(port)
    try:
        c.send(SESSION)
        return c.readAll()
    finally:
        c.close()


@pytest_twisted.inlineCallbacks
def test_crInQueueextraLineIsIgnoredAndMailStillQueued(startSMTP, logEvents):
    """
    A CR inside a queueextra line made every commit fail with 451 4.3.0 qq internal bug and the log
    never named the file: now that line is left out with a warning naming control/queueextra,
    and the message is accepted and queued with the good lines' recipients.
    """
    srv = startSMTP()
    with open(os.path.join(srv.home.control, "queueextra"), "wb") as f:
        f.write(b"log\r@test.example\ncopy@test.example\n")
    out = yield deferToThread(talk, srv.port)
    assert re.search(rb"\r\n250 2.0.0 ok \d+ qp \d+\r\n221 2.0.0 test.example\r\n$", out), out
    [(env, mess)] = queuedMessages(srv.home)
    assert list(env.recipients) == [b"copy@test.example", b"bob@test.example"]
    assert checkMessage(mess) == b"Subject: t\n\nbody\n"
    warning = "warning: control/queueextra line 1: contains a control character; line ignored"

    def byInjector() -> list[dict]:
        return [e for e in logEvents if isinstance(e.get("log_source"), Injector)
                and logLines([e]) == [warning]]

    # logged where the commit read it (the queue), not only where the listener reread controls
    assert len(byInjector()) == 1
    # and once only, however many commits read the bad file
    yield deferToThread(talk, srv.port)
    assert len(queuedMessages(srv.home)) == 2
    assert len(byInjector()) == 1


@pytest_twisted.inlineCallbacks
def test_fifoInControlDoesNotBlockTheReactor(startSMTP, logEvents, monkeypatch):
    """
    A FIFO at control/rcpthosts (read for every connection) used to block the reactor at the
    next connection, in open(). Now no control file is read on the reactor thread, and one that
    is not a regular file is never opened for reading: it counts as missing, with a warning.
    """
    srv = startSMTP()
    readers: list[tuple[str, bool]] = []
    realRead = control.readControlFile

    def spy(path: str) -> bytes | None:
        readers.append((os.path.basename(path),
                        threading.current_thread() is threading.main_thread()))
        return realRead(path)

    monkeypatch.setattr(control, "readControlFile", spy)
    monkeypatch.setattr(tls, "readControlFile", spy)
    fifo = os.path.join(srv.home.control, "rcpthosts")
    os.unlink(fifo)
    os.mkfifo(fifo)
    # Without the fix a reader (the reactor, or a pool thread the session waits for) would
    # hang in open() for good: after a while a writer releases every such reader, so that the
    # test fails instead of hanging.
    released = threading.Event()
    done = threading.Event()

    def release() -> None:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # ENXIO: nobody is waiting to read

    def watchdog() -> None:
        if done.wait(10):
            return
        released.set()
        while not done.wait(0.1):
            release()

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        out = yield deferToThread(talk, srv.port)
    finally:
        done.set()
        release()
        os.unlink(fifo)
    assert not released.is_set(), "the reactor was blocked on the FIFO"
    assert re.match(rb"220 test.example ESMTP\r\n", out), out
    assert re.search(rb"\r\n250 2.0.0 ok \d+ qp \d+\r\n221 2.0.0 test.example\r\n$", out), out
    assert len(queuedMessages(srv.home)) == 1
    assert "warning: control/rcpthosts is not a regular file; ignored" in logLines(logEvents)
    assert ("rcpthosts", False) in readers
    assert [name for name, onReactor in readers if onReactor] == []
