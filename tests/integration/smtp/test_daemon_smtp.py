"""
SMTP through the whole daemon (twistd qmtwist as a child) into a Maildir: the delivered bytes,
Received and Return-Path lines (docs/behaviour/smtp.md 7.9), and FAQ 5.5's fixup re-injection.
"""

from __future__ import annotations

import os
import re
import smtplib
import socket
import shutil
import subprocess
import sys

import pytest

from tests.integration.daemon import Daemon, waitFor
from tests.support import freePort

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture
def daemon(home, tmp_path, monkeypatch):
    # children (twistd, pipe programs) import this checkout even if an older copy is installed
    monkeypatch.setenv("PYTHONPATH", REPO)
    port = freePort()
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", f"tcp:{port}:interface=127.0.0.1",
                               "--qmtp", "none", "--pop3", "none"], str(tmp_path / "log"))
    d.port = port
    yield d
    d.stop()


def newFiles(maildir: str) -> list[bytes]:
    d = os.path.join(maildir, "new")
    out = []
    for n in sorted(os.listdir(d)):
        with open(os.path.join(d, n), "rb") as f:
            out.append(f.read())
    return out


def test_smtplib_to_maildir(home, daemon):
    daemon.start()
    daemon.waitLine("tcpserver: status: 0/40")
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.example") as s:
        s.sendmail("alice@example.org", ["postmaster@test.example"], b"Subject: t\r\n\r\nbody\r\n")
    maildir = os.path.join(home.alias, "Maildir")
    [mess] = waitFor(lambda: newFiles(maildir), "a file in alias/Maildir/new")
    assert re.fullmatch(
        rb"Return-Path: <alice@example\.org>\n"
        rb"Delivered-To: [^\n]*postmaster@test\.example\n"
        rb"Received: \(qmail \d+ invoked from network\); \d+ \w\w\w \d{4} \d\d:\d\d:\d\d -0000\n"
        # a client without RELAYCLIENT: the inbound checks' field (docs/behaviour/authentication.md)
        rb"Authentication-Results: test\.example;\n(\t[^\n]+\n)+"
        rb"Received: from unknown \(HELO client\.example\) \(127\.0\.0\.1\)\n"
        rb"  by test\.example with SMTP; \d+ \w\w\w \d{4} \d\d:\d\d:\d\d -0000\n"
        rb"Subject: t\n\nbody\n", mess), mess
    daemon.waitLine("tcpserver: end 1 status 0")  # the log is written in batches (logbuffer)
    lines = daemon.lines()
    assert any(re.fullmatch(r"tcpserver: ok 1 test\.example:127\.0\.0\.1:%d :127\.0\.0\.1::\d+"
                            % daemon.port, line) for line in lines), lines
    assert "tcpserver: end 1 status 0" in lines


def _othersCanRun(path: str) -> bool:
    """Whether a non-root delivery user can run C{path} (every ancestor searchable by others)."""
    path = os.path.realpath(path)
    parts = [path]
    while os.path.dirname(parts[-1]) != parts[-1]:
        parts.append(os.path.dirname(parts[-1]))
    return all(os.stat(p).st_mode & 0o001 for p in parts)


@pytest.mark.skipif(os.getuid() == 0 and not _othersCanRun(sys.executable),
                    reason="as root, deliveries run as the alias user, who cannot run this Python "
                    "(%s is not searchable by others), so bin/qmail-inject fails" % sys.executable)
def test_faq55_fixup(home, daemon):
    with open(os.path.join(home.rules, "smtp"), "w") as f:
        f.write('127.:allow,RELAYCLIENT="@fixme"\n')
    with open(os.path.join(home.control, "virtualdomains"), "w") as f:
        f.write("fixme:fixup\n")
    with open(os.path.join(home.alias, ".qmail-fixup-default"), "w") as f:
        f.write('| [ "@$HOST" = "@fixme" ] || ( echo Permission denied; exit 100 )\n'
                '| qmail-inject -f "$SENDER" -- "$EXT2"\n')
    daemon.start()
    daemon.waitLine("tcpserver: status: 0/40")
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="broken.example") as s:
        s.sendmail("alice@example.org", ["postmaster@test.example"],
                   b"Subject: fix me\r\n\r\nbody\r\n")
    maildir = os.path.join(home.alias, "Maildir")
    [mess] = waitFor(lambda: newFiles(maildir), "the fixed-up message in alias/Maildir/new",
                     deadline=60)
    header, _, body = mess.partition(b"\n\n")
    assert body == b"body\n"
    assert header.startswith(b"Return-Path: <alice@example.org>\n")
    names = [line.split(b":", 1)[0].lower() for line in header.split(b"\n")
             if line and not line[:1].isspace()]
    assert b"subject" in names and b"message-id" in names and b"date" in names
    # Program deliveries get no Delivered-To line (docs/behaviour/local.md 4.9): the re-injected copy carries
    # only its final one, and nothing of the broken "@fixme" envelope survives.
    assert header.startswith(b"Return-Path: <alice@example.org>\n"
                             b"Delivered-To: postmaster@test.example\nReceived: (qmail ")
    assert b"fixme" not in mess
    received = [line for line in header.split(b"\n") if line.startswith(b"Received: (qmail ")]
    assert len(received) == 2
    assert b" invoked by uid " in received[0] and b" invoked from network" in received[1]


def test_faq51_smtp_concurrency_option(home, daemon):
    """twistd qmtwist --smtp-concurrency 3: the fourth client gets no greeting until one leaves."""
    from tests.integration.smtp.conftest import Client

    daemon.args += ["--smtp-concurrency", "3"]
    daemon.start()
    daemon.waitLine("tcpserver: status: 0/3")
    clients = [Client(daemon.port) for _ in range(3)]
    assert [c.readUntil(b"\r\n") for c in clients] == [b"220 test.example ESMTP\r\n"] * 3
    fourth = Client(daemon.port)
    for c in clients:
        c.send(b"NOOP\r\n")
        assert c.readUntil(b"\r\n") == b"250 2.0.0 ok\r\n"
    fourth.sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        fourth.sock.recv(100)
    fourth.sock.setblocking(True)
    clients[0].send(b"QUIT\r\n")
    assert clients[0].readAll() == b"221 2.0.0 test.example\r\n"
    assert fourth.readUntil(b"\r\n") == b"220 test.example ESMTP\r\n"
    for c in clients[1:] + [fourth]:
        c.close()
    daemon.waitLine("tcpserver: end 4 status 0")
    lines = [line for line in daemon.lines() if line.startswith("tcpserver:")]
    assert "tcpserver: status: 3/3" in lines
    assert lines.index("tcpserver: end 1 status 0") < lines.index("tcpserver: pid 4 from 127.0.0.1")


def test_swaks_delivers_to_maildir(home, daemon):
    """Debian's swaks as the client, through the whole daemon into ~alias/Maildir."""
    swaks = shutil.which("swaks")
    if swaks is None:
        if os.environ.get("CI"):
            pytest.fail("swaks is missing in CI (.ci/run installs it)")
        pytest.skip("swaks (Debian package) is not installed")
    daemon.start()
    daemon.waitLine("tcpserver: status: 0/40")
    r = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(daemon.port), "--helo", "client.example",
         "--from", "carol@example.org", "--to", "postmaster@test.example",
         "--header", "Subject: via swaks", "--body", "swaks body"],
        capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(rb"<-  250 2.0.0 ok \d+ qp \d+", r.stdout), r.stdout
    [mess] = waitFor(lambda: newFiles(os.path.join(home.alias, "Maildir")),
                     "the swaks message in alias/Maildir/new")
    header, _, body = mess.partition(b"\n\n")
    lines = header.split(b"\n")
    assert lines[0] == b"Return-Path: <carol@example.org>"
    assert lines[1] == b"Delivered-To: postmaster@test.example"
    assert re.match(rb"Received: \(qmail \d+ invoked from network\); \d+ \w+ \d{4} "
                    rb"\d\d:\d\d:\d\d -0000$", lines[2])
    # a client without RELAYCLIENT: the inbound checks' field (docs/behaviour/authentication.md)
    assert lines[3] == b"Authentication-Results: test.example;"
    i = 4
    while lines[i].startswith(b"\t"):
        i += 1
    assert re.match(rb"Received: from unknown \(HELO client\.example\) \(127\.0\.0\.1\)$",
                    lines[i])
    assert re.match(rb"  by test\.example with SMTP; \d+ \w+ \d{4} \d\d:\d\d:\d\d -0000$",
                    lines[i + 1])
    assert b"Subject: via swaks" in lines
    assert body.rstrip(b"\n").endswith(b"swaks body")


def test_faq31_receiving_for_another_host_name(home, daemon):
    """FAQ 3.1: af.mil added to locals and rcpthosts; HUP; x@af.mil accepted and delivered."""
    daemon.start()
    daemon.waitLine("tcpserver: status: 0/40")
    with smtplib.SMTP("127.0.0.1", daemon.port) as s:
        code, _ = s.docmd("MAIL FROM:<a@example.org>")
        assert code == 250
        code, text = s.docmd("RCPT TO:<x@af.mil>")
        assert (code, text) == (553, b"5.7.1 sorry, that domain isn't in my list of allowed rcpthosts "
                                     b"(#5.7.1)")
    with open(os.path.join(home.control, "locals"), "a") as f:
        f.write("af.mil\n")
    with open(os.path.join(home.control, "rcpthosts"), "a") as f:
        f.write("af.mil\n")
    with open(os.path.join(home.alias, ".qmail-x"), "w") as f:
        f.write("./Maildir/\n")
    os.chown(os.path.join(home.alias, ".qmail-x"), os.stat(home.alias).st_uid,
             os.stat(home.alias).st_gid)
    daemon.send(__import__("signal").SIGHUP)
    daemon.waitLine("hup: reread control files, users and rules")
    with smtplib.SMTP("127.0.0.1", daemon.port) as s:
        s.sendmail("a@example.org", ["x@af.mil"], b"Subject: 3.1\r\n\r\nfor af.mil\r\n")
    [mess] = waitFor(lambda: newFiles(os.path.join(home.alias, "Maildir")),
                     "the af.mil message in alias/Maildir/new")
    assert mess.split(b"\n")[1] == b"Delivered-To: x@af.mil"
    daemon.waitLine("to local x@af.mil")  # the log is written in batches (logbuffer)


def _greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                return data  # denied: closed before any byte
            data += chunk
        s.sendall(b"QUIT\r\n")
        return data


def _inotifyDescriptors(pid: int) -> int:
    fds = os.path.join("/proc", str(pid), "fd")
    count = 0
    for n in os.listdir(fds):
        try:
            count += os.readlink(os.path.join(fds, n)) == "anon_inode:inotify"
        except OSError:
            pass
    return count


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def test_daemonSeesEditsMadeRightBeforeAConnection(home, daemon):
    """control/ and the rules file are watched with inotify (docs/behaviour/control.md 2.4): an
    edit made right before a connection applies to it."""
    daemon.start()
    daemon.waitLine("tcpserver: status: 0/40")
    assert _greeting(daemon.port).startswith(b"220 test.example ESMTP")
    # control/ and rules/ are watched, through one descriptor
    assert _inotifyDescriptors(daemon.proc.pid) == 1
    path = os.path.join(home.control, "smtpgreeting")
    for name in (b"one", b"two", b"three"):
        _write(path + ".tmp", name + b".example\n")
        os.rename(path + ".tmp", path)
        assert _greeting(daemon.port).startswith(b"220 " + name + b".example ESMTP")
    _write(os.path.join(home.rules, "smtp"), b"127.:deny\n")
    assert _greeting(daemon.port) == b""
    os.unlink(os.path.join(home.rules, "smtp"))
    assert _greeting(daemon.port).startswith(b"220 three.example ESMTP")
    # the log is written in batches: a warning would come from a connection's checks, before
    # that connection's end line; wait for the last one's (the sixth connection)
    daemon.waitLine("tcpserver: end 6 status 0")
    assert not [line for line in daemon.lines() if "inotify" in line]
