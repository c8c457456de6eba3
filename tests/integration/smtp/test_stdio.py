"""HOME/bin/qmail-smtpd on descriptors 0/1 (docs/behaviour/home.md 1.4): pipes, tcp-env, and Debian's
tcpserver."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.integration.smtp.conftest import Client, queuedMessages
from tests.integration.smtp.test_listener import MSG, checkMessage
from tests.support import tcpserverPort

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def childEnv(**extra: str) -> dict[str, str]:
    # The launcher imports qmtwist; make it this checkout's even if another copy is installed.
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": REPO}
    env.update(extra)
    return env


DIALOGUE = (b"HELO client.example\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@test.example>\r\n"
            b"RCPT TO:<joe@x.com>\r\nDATA\r\n" + MSG + b".\r\nQUIT\r\n")


def test_stdio_pipes(home):
    """inetd style: the whole dialogue on a pipe, end of input after QUIT; replies all arrive."""
    prog = os.path.join(home.bin, "qmail-smtpd")
    r = subprocess.run([prog], input=DIALOGUE, capture_output=True, timeout=60,
                       env=childEnv(TCPREMOTEIP="127.0.0.1", TCPLOCALHOST="test.example",
                                    RELAYCLIENT="@fixme"))
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rb"220 test.example ESMTP\r\n250 test.example\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n"
                        rb"250 2.1.5 ok\r\n354 go ahead\r\n250 2.0.0 ok \d+ qp \d+\r\n"
                        rb"221 2.0.0 test.example\r\n",
                        r.stdout), r.stdout
    [(env, mess)] = queuedMessages(home)
    assert list(env.recipients) == [b"bob@test.example@fixme", b"joe@x.com@fixme"]
    assert checkMessage(mess) == b"Subject: t\n\nbody\n"


def test_stdio_refuses_relay_without_relayclient(home):
    prog = os.path.join(home.bin, "qmail-smtpd")
    r = subprocess.run([prog], input=DIALOGUE, capture_output=True, timeout=60,
                       env=childEnv(TCPREMOTEIP="127.0.0.1", TCPLOCALHOST="test.example"))
    assert b"553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\r\n" in r.stdout
    [(env, mess)] = queuedMessages(home)
    assert list(env.recipients) == [b"bob@test.example"]


def test_tcp_env_sets_variables(home, tmp_path):
    """bin/tcp-env on a socket pair: TCP variables from the socket, then exec of the program."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    out = tmp_path / "env"
    script = f"env > {out}"
    p = subprocess.run([os.path.join(home.bin, "tcp-env"), "/bin/sh", "-c", script],
                       stdin=conn, env=childEnv(RELAYCLIENT=""), timeout=60)
    assert p.returncode == 0
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["TCPREMOTEIP"] == "127.0.0.1"
    assert env["TCPREMOTEPORT"] == str(client.getsockname()[1])
    assert env["TCPLOCALPORT"] == str(server.getsockname()[1])
    assert env["PROTO"] == "TCP" and env["RELAYCLIENT"] == ""
    for s in (client, conn, server):
        s.close()


TCPSERVER = shutil.which("tcpserver")


@pytest.mark.skipif(TCPSERVER is None, reason="tcpserver not installed (Debian package ucspi-tcp)")
@pytest_twisted.inlineCallbacks
def test_faq51_under_debian_tcpserver(home):
    """tcpserver -v -c 2 ... HOME/bin/qmail-smtpd: third client waits; mail is queued."""
    proc = subprocess.Popen(
        [TCPSERVER, "-1", "-v", "-R", "-H", "-l", "test.example", "-c", "2", "127.0.0.1", "0",
         os.path.join(home.bin, "qmail-smtpd")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=childEnv())
    try:
        def talk():
            port = tcpserverPort(proc)
            first = proc.stderr.readline()  # "tcpserver: status: 0/2" once listening
            a, b = Client(port), Client(port)
            greetings = [a.readUntil(b"\r\n"), b.readUntil(b"\r\n")]
            c = Client(port)
            a.send(b"NOOP\r\n"), b.send(b"NOOP\r\n")
            assert a.readUntil(b"\r\n") == b.readUntil(b"\r\n") == b"250 2.0.0 ok\r\n"
            c.sock.setblocking(False)
            try:
                early = c.sock.recv(100)
            except BlockingIOError:
                early = None
            c.sock.setblocking(True)
            a.send(DIALOGUE)
            replies = a.readAll()
            late = c.readUntil(b"\r\n")
            for x in (b, c):
                x.send(b"QUIT\r\n")
                x.readAll()
            return first, greetings, early, replies, late

        first, greetings, early, replies, late = yield deferToThread(talk)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log = proc.stderr.read()
        proc.stdout.close()
    assert first == b"tcpserver: status: 0/2\n"
    assert greetings == [b"220 test.example ESMTP\r\n"] * 2 and early is None
    assert late == b"220 test.example ESMTP\r\n"
    assert replies.endswith(b"221 2.0.0 test.example\r\n") and b"\r\n250 2.0.0 ok " in replies
    assert b"tcpserver: status: 2/2\n" in log
    [(env, mess)] = queuedMessages(home)
    assert list(env.recipients) == [b"bob@test.example"]
    assert checkMessage(mess) == b"Subject: t\n\nbody\n"
