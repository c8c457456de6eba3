"""
systemd (docs/behaviour/operations.md 3): the daemon under C{systemd-socket-activate} (the
Debian package systemd; it needs no systemd as PID 1) with named descriptors, as the socket units
of contrib/systemd/ hand them over, and the sd_notify messages on a NOTIFY_SOCKET the test
listens on.
"""

from __future__ import annotations

import io
import os
import poplib
import shutil
import signal
import smtplib
import socket
import sys

import pytest

from qmtwist.home import Home, setup
from qmtwist.users import userCommand
from tests.integration.daemon import Daemon
from tests.integration.test_daemon import maildirFiles
from tests.support import freePort, waitFor

SSA = shutil.which("systemd-socket-activate")
TWISTD_TAIL = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def notifySocket(address: str | bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(30)
    return s


def received(s: socket.socket) -> list[str]:
    """The next datagram, as its lines."""
    return s.recv(4096).decode().splitlines()


@pytest.mark.skipif(SSA is None, reason="systemd-socket-activate is missing: install the "
                    "Debian package systemd")
def test_socket_activation_with_named_descriptors(tmp_path):
    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    assert userCommand(home, ["add", "alice", "--password-stdin"],
                       stdin=io.BytesIO(b"secret\n")) == 0
    smtpPort, pop3Port = freePort(), freePort()
    sock = str(tmp_path / "notify")
    notify = notifySocket(sock)
    assert SSA is not None
    prefix = [SSA, "-l", f"127.0.0.1:{smtpPort}", "--fdname=smtp",
              "-l", f"127.0.0.1:{pop3Port}", "--fdname=pop3",
              "-E", "PYTHONPATH", "-E", f"NOTIFY_SOCKET={sock}", *TWISTD_TAIL]
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", "systemd:domain=INET:name=smtp",
                               "--pop3", "systemd:domain=INET:name=pop3", "--qmtp", "none"],
               str(tmp_path / "log"), twistd=prefix)
    d.start()
    try:
        # systemd-socket-activate starts the daemon at the first connection, like a socket unit
        waitFor(lambda: os.path.getsize(d.logPath) > 0, "systemd-socket-activate listening")
        with smtplib.SMTP("127.0.0.1", smtpPort, timeout=30) as s:
            code, text = s.ehlo()
            assert code == 250 and text.startswith(b"test.example")
            s.sendmail("joe@example.org", ["alice@test.example"], b"Subject: sa\r\n\r\nhi\r\n")
        assert received(notify)[0] == "READY=1"
        lines = d.lines()
        assert f"smtp: listening on 127.0.0.1:{smtpPort}" in lines
        assert f"pop3: listening on 127.0.0.1:{pop3Port}" in lines
        maildir = os.path.join(home.homes, "alice", "Maildir")
        waitFor(lambda: maildirFiles(maildir), "the message in alice's Maildir")
        pop = poplib.POP3("127.0.0.1", pop3Port, timeout=30)
        try:
            assert pop.getwelcome().startswith(b"+OK <")
            pop.user("alice")
            pop.pass_("secret")
            assert pop.stat()[0] == 1
        finally:
            pop.quit()
        d.send(signal.SIGTERM)
        assert received(notify)[0] == "STOPPING=1"
        assert d.stop() == 0
    finally:
        d.stop()
        notify.close()


def test_ready_and_stopping_on_an_abstract_notify_socket(tmp_path):
    """C{@name} in NOTIFY_SOCKET is Linux's abstract namespace (what systemd itself uses)."""
    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    name = f"qmtwist-test-{os.getpid()}-{freePort()}"
    notify = notifySocket(b"\0" + name.encode())
    smtpPort = freePort()
    env = dict(os.environ, NOTIFY_SOCKET="@" + name)
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", f"tcp:{smtpPort}:interface=127.0.0.1",
                               "--qmtp", "none", "--pop3", "none"], str(tmp_path / "log"),
               env=env)
    d.start()
    try:
        ready = received(notify)
        assert ready[0] == "READY=1"
        assert ready[1].startswith("STATUS=")
        # READY comes after the listener is bound: a connection now gets the greeting
        with socket.create_connection(("127.0.0.1", smtpPort), timeout=30) as c:
            assert c.recv(100).startswith(b"220 test.example ESMTP")
        d.send(signal.SIGTERM)
        assert received(notify)[0] == "STOPPING=1"
        assert d.stop() == 0
    finally:
        d.stop()
        notify.close()
