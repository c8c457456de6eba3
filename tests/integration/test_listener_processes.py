"""
C{--listener-processes N} with a real daemon (docs/behaviour/operations.md 21.7): N front ends
accept on the daemon's own sockets and inject; the daemon keeps the queue; a front end that
dies is replaced; TERM stops them all; a front end whose daemon was killed stops by itself.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys

from qmtwist.home import Home, setup
from tests.integration.daemon import Daemon
from tests.support import freePort, waitFor

STARTED = re.compile(r"frontend: started listener process (\d+)")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def frontEnds(d: Daemon) -> list[int]:
    return [int(m.group(1)) for line in d.lines() for m in [STARTED.search(line)] if m]


def start(tmp_path, processes: int = 2, extra: list[str] | None = None) -> tuple[Daemon, Home, int]:
    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    subprocess.run([sys.executable, "-m", "qmtwist.cli", "--home", home.path, "user", "add",
                    "alice"], check=True, capture_output=True)
    port = freePort()
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", f"tcp:{port}:interface=127.0.0.1",
                               "--qmtp", "none", "--pop3", "none",
                               "--listener-processes", str(processes), *(extra or [])],
               str(tmp_path / "log"))
    d.start()
    d.waitFor(lambda: len(frontEnds(d)) >= processes, "the listener processes")
    # each front end logs its own listener line once it serves the handed-over socket
    d.waitFor(lambda: sum(f"smtp: listening on 127.0.0.1:{port}" in x for x in d.lines())
              == processes + 1, "every process listening")
    return d, home, port


def send(port: int, n: int) -> list[bytes]:
    replies = []
    for i in range(n):
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
            s.ehlo("client.example")
            s.mail("joe@example.org")
            s.rcpt("alice@test.example")
            code, text = s.data(f"Subject: {i}\r\n\r\nmessage {i}\r\n".encode())
            assert code == 250, text
            replies.append(text)
    return replies


def maildir(home: Home) -> list[str]:
    new = os.path.join(home.homes, "alice", "Maildir", "new")
    return os.listdir(new) if os.path.isdir(new) else []


def test_front_ends_accept_the_daemon_delivers(tmp_path):
    d, home, port = start(tmp_path)
    try:
        pids = frontEnds(d)
        replies = send(port, 12)
        waitFor(lambda: len(maildir(home)) == 12, "12 messages in alice's Maildir")
        # "ok TIME qp N": N begins with the process id of the front end that accepted it
        takers = {pid for pid in pids for r in replies if f"qp {pid}".encode() in r}
        assert takers, replies  # the sessions ran in the front ends, not in the daemon
        assert all(any(f"qp {pid}".encode() in r for pid in pids) for r in replies)
        # the log is written in batches (docs/behaviour/operations.md 21.4.1): wait for it
        def newMsgLines() -> int:
            return sum(line.startswith("new msg ") for line in d.lines())

        d.waitFor(lambda: newMsgLines() >= 12, "a new msg line for each message")
        assert newMsgLines() == 12  # each message queued once
    finally:
        assert d.stop() == 0
    for pid in frontEnds(d):
        assert not alive(pid)
    assert d.lines()[-1].endswith("Server Shut Down.") or "status: exiting" in d.lines()
    # the front ends stop on TERM and then see their standard input close: no traceback
    assert not [x for x in d.lines() if "Unhandled Error" in x or "ReactorNotRunning" in x]


def test_a_front_end_that_dies_is_replaced(tmp_path):
    d, home, port = start(tmp_path, processes=1)
    try:
        first = frontEnds(d)[0]
        os.kill(first, signal.SIGKILL)
        d.waitLine(f"warning: listener process {first} exited with signal 9; "
                   "starting another in 1s")
        d.waitFor(lambda: len(frontEnds(d)) == 2, "a new listener process")
        second = frontEnds(d)[1]
        d.waitFor(lambda: sum("smtp: listening on" in x for x in d.lines()) == 3,
                  "the new one listening")
        replies = send(port, 2)
        assert all(f"qp {second}".encode() in r for r in replies), replies
        waitFor(lambda: len(maildir(home)) == 2, "both messages delivered")
    finally:
        assert d.stop() == 0
    assert not alive(second)


def test_front_ends_stop_when_the_daemon_is_killed(tmp_path):
    d, home, port = start(tmp_path)
    pids = frontEnds(d)
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    # standard input from the daemon reads end of file: each front end stops like on TERM
    waitFor(lambda: not any(alive(p) for p in pids), "the front ends to stop", 30)


def test_sighup_reaches_the_front_ends(tmp_path):
    d, home, port = start(tmp_path, processes=1)
    try:
        rules = os.path.join(home.rules, "smtp")
        with open(rules, "w") as f:
            f.write("127.0.0.1:deny\n")
        d.send(signal.SIGHUP)
        d.waitLine("hup: reread control files, users and rules")

        def refused() -> bool:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                    s.noop()
                return False
            except (smtplib.SMTPException, OSError):
                return True

        waitFor(refused, "the front end to apply the new rule")
    finally:
        assert d.stop() == 0


def test_a_listener_with_its_own_key_cannot_be_shared(tmp_path):
    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    r = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "qmtwist", "--home", home.path, "--smtp", "none", "--qmtp", "none",
         "--pop3", f"ssl:{freePort()}:interface=127.0.0.1:privateKey=/nonexistent.pem",
         "--listener-processes", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert ("alert: cannot start: --listener-processes: ssl:" in r.stdout + r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
