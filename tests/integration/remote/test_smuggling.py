"""
No bare CR or bare LF on the wire (RFC 5321 2.3.8): SMTP smuggling through us is impossible.

A message whose body holds C{<CR>.<CR>}, C{<CR>.<LF>}, C{<LF>.<CR><LF>} or NUL comes in by SMTP or
by qmail-inject, is forwarded by a C{.qmail} file to a remote address, and reaches a raw sink that
records every byte our SMTP client sends. The sink's bytes must hold exactly one transaction:
every CR is followed by LF, every LF is preceded by CR, and the only C{<CRLF>.<CRLF>} is the
end of our DATA (docs/behaviour/remote.md 11.4).
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import subprocess
import sys
import threading

import pytest

from tests.integration.daemon import Daemon, waitFor
from tests.support import freePort

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class RawSink(threading.Thread):
    """A minimal SMTP server on a thread that keeps every byte each connection sent."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = self.sock.getsockname()[1]
        self.sessions: list[bytes] = []

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.sessions.append(self.serve(conn))

    def serve(self, conn: socket.socket) -> bytes:
        raw = b""
        conn.sendall(b"220 sink.example ESMTP\r\n")
        inData = False
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            raw += chunk
            # Answer by the sink's own reading: a line ends at CRLF only.
            while True:
                if inData:
                    end = raw.find(b"\r\n.\r\n", self._mark)
                    if end < 0:
                        break
                    self._mark = end + 5
                    inData = False
                    conn.sendall(b"250 ok\r\n")
                    continue
                nl = raw.find(b"\r\n", getattr(self, "_mark", 0))
                if nl < 0:
                    break
                line = raw[getattr(self, "_mark", 0):nl]
                self._mark = nl + 2
                verb = line[:4].upper()
                if verb == b"DATA":
                    inData = True
                    self._mark -= 2  # the DATA section's first line starts after this CRLF
                    conn.sendall(b"354 go\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                else:
                    conn.sendall(b"250 ok\r\n")
        conn.close()
        self._mark = 0
        return raw

    def close(self) -> None:
        self.sock.close()


VARIANTS = [
    b"hello\r.\rMAIL FROM:<ceo@bank.example>\r",
    b"hello\r.\nMAIL FROM:<ceo@bank.example>\n",
    b"hello\n.\r\nMAIL FROM:<ceo@bank.example>\n",
    b"nul\x00.\x00\r\n.\x00\n",
    b"end with bare cr\r",
]


def assertCleanWire(raw: bytes) -> None:
    assert re.search(rb"\r(?!\n)", raw) is None, raw
    assert re.search(rb"(?<!\r)\n", raw) is None, raw
    # one or more transactions (a cached connection carries several, remote.md 11.8), then QUIT
    *transactions, last = raw.split(b"\r\n.\r\n")
    assert transactions and last == b"QUIT\r\n", raw
    for t in transactions:
        commands, sep, _data = t.partition(b"\r\nDATA\r\n")
        assert sep and commands.count(b"MAIL FROM:") == 1, raw


@pytest.fixture
def forwarding(home, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", REPO)
    sink = RawSink()
    sink.start()
    with open(os.path.join(home.control, "smtproutes"), "wb") as f:
        f.write(b"remote.example:127.0.0.1:%d\n" % sink.port)
    with open(os.path.join(home.alias, ".qmail-fwd"), "wb") as f:
        f.write(b"&friend@remote.example\n")
    port = freePort()
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", f"tcp:{port}:interface=127.0.0.1",
                               "--qmtp", "none", "--pop3", "none"], str(tmp_path / "log"))
    d.port = port
    d.start()
    d.waitLine("status: local 0/10 remote 0/20")
    yield d, sink
    d.stop()
    sink.close()


def test_bareCRAndNULNeverReachTheWire(home, forwarding):
    d, sink = forwarding
    for body in VARIANTS:
        inj = subprocess.run(
            [sys.executable, "-m", "qmtwist.cli", "--home", home.path, "inject", "-f",
             "alice@test.example", "fwd@test.example"],
            input=b"Subject: smuggle\n\n" + body, capture_output=True, cwd=REPO)
        assert inj.returncode == 0, inj.stderr
    # By SMTP too: the variants qmail-smtpd accepts (a bare LF gets 451 at once).
    with smtplib.SMTP("127.0.0.1", d.port) as s:
        s.sendmail("alice@example.org", ["fwd@test.example"],
                   b"Subject: smuggle\r\n\r\nhello\r.\r\nMAIL FROM:<ceo@bank.example>\r\n"
                   b"nul\x00\r\n")
    n = len(VARIANTS) + 1
    # connections may carry several messages (remote.md 11.8): count the final dots
    waitFor(lambda: sum(raw.count(b"\r\n.\r\n") for raw in sink.sessions) >= n,
            f"{n} messages at the sink", deadline=60)
    for raw in sink.sessions:
        assertCleanWire(raw)
    # The content survives as lines: the smuggled command is body text, dot-stuffed where needed.
    joined = b"".join(sink.sessions)
    assert b"\r\nhello\r\n..\r\nMAIL FROM:<ceo@bank.example>\r\n" in joined
    assert b"\r\nnul\x00.\x00\r\n..\x00\r\n" in joined
    assert b"\r\nend with bare cr\r\n.\r\n" in joined
