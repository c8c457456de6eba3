"""
systemd (docs/behaviour/operations.md 21.3): the daemon under C{systemd-socket-activate} (the
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
import subprocess
import sys

import pytest

from qmtwist.home import Home, setup
from qmtwist.users import userCommand
from tests.integration.daemon import Daemon
from tests.integration.smtp.test_tls import noVerify, writeCertificate
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
    writeCertificate(os.path.join(home.control, "servercert.pem"))
    smtpPort, pop3Port = freePort(), freePort()
    sock = str(tmp_path / "notify")
    notify = notifySocket(sock)
    assert SSA is not None
    prefix = [SSA, "-l", f"127.0.0.1:{smtpPort}", "--fdname=smtp",
              "-l", f"127.0.0.1:{pop3Port}", "--fdname=pop3s",
              "-E", "PYTHONPATH", "-E", f"NOTIFY_SOCKET={sock}", *TWISTD_TAIL]
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", "systemd:domain=INET:name=smtp",
                               "--pop3", "systemd:domain=INET:name=pop3s:tls=yes", "--qmtp", "none"],
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
        # the log is buffered (0.25 s): wait for each line looked at below
        d.waitLine(f"smtp: listening on 127.0.0.1:{smtpPort}")
        d.waitLine(f"pop3: listening on 127.0.0.1:{pop3Port}")
        lines = d.lines()
        assert f"smtp: listening on 127.0.0.1:{smtpPort}" in lines
        assert f"pop3: listening on 127.0.0.1:{pop3Port}" in lines
        maildir = os.path.join(home.homes, "alice", "Maildir")
        waitFor(lambda: maildirFiles(maildir), "the message in alice's Maildir")
        # the pop3s socket (995's unit) speaks TLS from the first byte
        pop = poplib.POP3_SSL("127.0.0.1", pop3Port, timeout=30, context=noVerify())
        try:
            assert pop.getwelcome().startswith(b"+OK <")
            pop.user("alice")
            pop.pass_("secret")
            assert pop.stat()[0] == 1
            assert pop.sock.version() is not None  # an SSLSocket: TLS from the start
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


UNITS = os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "systemd")


def test_socket_units_name_the_services_endpoints():
    """Each socket unit's FileDescriptorName is the name= of one systemd: endpoint."""
    with open(os.path.join(UNITS, "qmtwist.service")) as f:
        service = f.read()
    names = {}
    for unit in sorted(os.listdir(UNITS)):
        if not unit.endswith(".socket"):
            continue
        with open(os.path.join(UNITS, unit)) as f:
            fields = dict(line.split("=", 1) for line in f.read().splitlines()
                          if "=" in line and not line.startswith("#"))
        names[fields["FileDescriptorName"]] = fields["ListenStream"]
        assert unit in service.split("Sockets=")[1].splitlines()[0].split()
        assert f"name={fields['FileDescriptorName']}" in service
    assert names == {"smtp": "25", "submission": "587", "smtps": "465", "pop3": "110",
                     "pop3s": "995"}
    assert "name=smtps:tls=yes" in service and "name=pop3s:tls=yes" in service
    assert "Type=notify" in service


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is missing: install the Debian package systemd")
def test_units_pass_systemd_analyze_verify(tmp_path):
    """systemd's own checker accepts the units (twistd's path set to this machine's)."""
    twistd = shutil.which("twistd")
    assert twistd is not None
    for unit in os.listdir(UNITS):
        with open(os.path.join(UNITS, unit)) as f:
            text = f.read().replace("/usr/local/bin/twistd", twistd)
        (tmp_path / unit).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
                       capture_output=True, text=True, cwd=str(tmp_path))
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
