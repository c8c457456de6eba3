"""
A running SMTP listener with the daemon's inotify watches (docs/behaviour/control.md 2.4): real
sockets, real files; an edit made right before a connection applies to it, and connections with
nothing changed cost no thread job.
"""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.integration.smtp.conftest import Client


class Counting:
    """deferToThread, counting the jobs of the listener's context."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fn, *a, **kw):
        self.calls += 1
        return deferToThread(fn, *a, **kw)


def greeting(port: int) -> bytes:
    c = Client(port)
    try:
        try:
            line = c.readUntil(b"\r\n")
        except EOFError:  # denied: closed before any byte
            return b""
        c.send(b"QUIT\r\n")
        c.readAll()
        return line
    finally:
        c.close()


def write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


@pytest_twisted.inlineCallbacks
def test_editsRightBeforeAConnectionApplyAndQuietConnectionsHaveNoThreadJob(startSMTP):
    runner = Counting()
    srv = startSMTP(rules=b"127.:allow\n", runInThread=runner)
    greetingFile = os.path.join(srv.home.control, "smtpgreeting")
    assert (yield deferToThread(greeting, srv.port)).startswith(b"220 test.example ESMTP")
    first = runner.calls  # the first connection armed the watches
    for _ in range(3):
        assert (yield deferToThread(greeting, srv.port)).startswith(b"220 test.example ESMTP")
    quiet = runner.calls - first
    write(greetingFile + ".tmp", b"mx.changed.example\n")
    os.rename(greetingFile + ".tmp", greetingFile)
    assert (yield deferToThread(greeting, srv.port)).startswith(b"220 mx.changed.example ESMTP")
    write(greetingFile, b"mx.again.example\n")
    assert (yield deferToThread(greeting, srv.port)).startswith(b"220 mx.again.example ESMTP")
    # the rules file: a deny rule written right before the connection closes it unanswered
    write(os.path.join(srv.home.rules, "smtp"), b"127.:deny\n")
    assert (yield deferToThread(greeting, srv.port)) == b""
    write(os.path.join(srv.home.rules, "smtp"), b"127.:allow\n")
    assert (yield deferToThread(greeting, srv.port)).startswith(b"220 mx.again.example ESMTP")
    # the sessions' own thread jobs (none for a greeting and QUIT) aside, no refresh needed one
    assert quiet == 0, quiet
