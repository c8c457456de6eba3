"""A real SMTP listener on 127.0.0.1 port 0 with a real Injector, and blocking clients on threads."""

from __future__ import annotations

import os
import socket

import pytest
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from qmtwist.context import Context, ControlCache
from qmtwist.dirwatch import DirWatches
from qmtwist.queue.commit import Injector
from qmtwist.queue.envelope import decodeTodo
from qmtwist.smtp.listener import makeSMTPService


class Running:
    def __init__(self, home, service, ctx):
        self.home = home
        self.service = service
        self.ctx = ctx

    @property
    def port(self) -> int:
        return self.service.port.getHost().port


@pytest.fixture
def startSMTP(home):
    started = []
    # as in the daemon: control/ and the rules file watched with inotify (control.md 2.4)
    watches = DirWatches(reactor)

    def start(rules: bytes | None = None, concurrency: int = 40, endpoint: str | None = None,
              catchAll: bool = True, runInThread=deferToThread, **kw):
        # The listener refuses unknown local users at RCPT (docs/behaviour/smtp-extensions.md
        # 20.5); tests about other things send to made-up users, so the home gets the alias
        # catch-all unless a test asks for the check.
        if catchAll:
            with open(os.path.join(home.alias, ".qmail-default"), "wb"):
                pass
        rulesPath = os.path.join(home.rules, "smtp")
        if rules is not None:
            with open(rulesPath, "wb") as f:
                f.write(rules)
        injector = Injector(home.queue, home.control, reactor, deferToThread)
        ctx = Context(home, reactor, injector, ControlCache(home, watches), runInThread,
                      watches=watches)
        svc = makeSMTPService(ctx, endpoint or "tcp:0:interface=127.0.0.1", rulesPath, concurrency,
                              **kw)
        svc.startService()
        started.append(svc)
        return Running(home, svc, ctx)

    yield start
    for svc in started:
        if svc.running:
            svc.stopService()
    watches.stopService()


def queuedMessages(home) -> list[tuple[object, bytes]]:
    """(envelope, mess bytes) of every message in todo/, in injection (qp) order."""
    out = []
    layout = home.queue
    for dirpath, _, names in os.walk(layout.sub("todo")):
        for name in names:
            n = int(name)
            with open(os.path.join(dirpath, name), "rb") as f:
                env = decodeTodo(f.read())
            with open(layout.mess(n), "rb") as f:
                out.append((n, env, f.read()))
    return [(e, m) for _, e, m in sorted(out, key=lambda t: t[1].qp)]


def queueFiles(home) -> list[str]:
    """Every file under mess/, intd/ and todo/ (to check nothing partial stays)."""
    out = []
    for d in ("mess", "intd", "todo", "pid"):
        for dirpath, _, names in os.walk(home.queue.sub(d)):
            out += [os.path.join(dirpath, n) for n in names]
    return out


class Client:
    """A blocking line client, used on a thread."""

    def __init__(self, port: int, timeout: float = 20, source: str | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readUntil(self, end: bytes) -> bytes:
        while end not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        i = self.buf.index(end) + len(end)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def readAll(self) -> bytes:
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.buf += chunk
        out, self.buf = self.buf, b""
        return out

    def close(self) -> None:
        self.sock.close()
