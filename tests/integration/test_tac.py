"""The .tac files build the same services as the plugin and run under twistd -y."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from qmtwist.home import Home
from tests.support import freePort, waitFor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def runTac(tmp_path, tac: str, env: dict[str, str]) -> tuple[int, str]:
    log = tmp_path / "log"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
         "--pidfile=", "-y", os.path.join(REPO, "tac", tac)],
        cwd=str(tmp_path), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
        env=dict(os.environ, **env))
    try:
        waitFor(lambda: b"status: local 0/10 remote 0/20" in log.read_bytes()
                or proc.poll() is not None, f"{tac} to start")
        if tac == "single-host.tac":
            waitFor(lambda: log.read_bytes().count(b"tcpserver: status: 0/40") == 1,
                    "the SMTP listener")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return code, log.read_text(errors="replace")


@pytest.mark.parametrize("tac,env,listeners", [
    ("single-host.tac", {"QMTWIST_SMTP": "tcp:0:interface=127.0.0.1", "QMTWIST_QMTP": "none",
                         "QMTWIST_POP3": "none"}, 1),
    ("queue-only.tac", {}, 0),
])
def test_tac_files_run_the_mail_system(tmp_path, tac, env, listeners):
    home = tmp_path / "home"
    code, log = runTac(tmp_path, tac, dict(env, QMTWIST_HOME=str(home)))
    assert code == 0, log
    assert f"setup: created {home}" in log
    assert "status: local 0/10 remote 0/20" in log
    assert log.count("tcpserver: status: 0/40") == listeners
    assert "status: exiting" in log
    assert log.splitlines()[-1].endswith("] Server Shut Down."), log  # the buffer's last lines
    assert "Starting factory" not in log and "Stopping factory" not in log  # the noise filter
    assert Home(str(home)).isComplete()


def test_tac_log_format_json(tmp_path):
    """QMTWIST_LOG_FORMAT=json is the tac's --log-format json."""
    import json

    home = tmp_path / "home"
    code, log = runTac(tmp_path, "queue-only.tac", {"QMTWIST_HOME": str(home),
                                                    "QMTWIST_LOG_FORMAT": "json"})
    assert code == 0, log
    texts = [json.loads(x)["text"] for x in log.splitlines()]
    assert f"setup: created {home}" in texts and texts[-1] == "Server Shut Down."


def test_frontend_shares_the_queue_of_a_queue_only_host(tmp_path):
    """A --no-queue front end takes SMTP, the queue-only process delivers (the trigger FIFO)."""
    import smtplib

    port = freePort()
    home = tmp_path / "home"
    env = dict(os.environ, QMTWIST_HOME=str(home))
    twistd = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
              "--pidfile="]
    qlog, flog = tmp_path / "queue.log", tmp_path / "front.log"
    queue = subprocess.Popen(twistd + ["-y", os.path.join(REPO, "tac", "queue-only.tac")],
                             cwd=str(tmp_path), stdout=open(qlog, "wb"),
                             stderr=subprocess.STDOUT, env=env)
    front = None
    try:
        waitFor(lambda: b"status: local 0/10" in qlog.read_bytes(), "the queue service")
        front = subprocess.Popen(
            twistd + ["-y", os.path.join(REPO, "tac", "frontend.tac")], cwd=str(tmp_path),
            stdout=open(flog, "wb"), stderr=subprocess.STDOUT,
            env=dict(env, QMTWIST_SMTP=f"tcp:{port}:interface=127.0.0.1"))
        waitFor(lambda: b"tcpserver: status: 0/40" in flog.read_bytes(), "the front end")
        with smtplib.SMTP("127.0.0.1", port) as c:
            c.sendmail("a@example.org", ["postmaster@localhost"], b"Subject: f\r\n\r\nvia front\r\n")
        # the log is written in batches: a queue service's start-up status line would be in
        # the file by the time the session's end line is
        waitFor(lambda: b"tcpserver: end 1 status 0" in flog.read_bytes(), "the session's end")
        assert b"status: local" not in flog.read_bytes()  # no queue service there
        new = home / "alias" / "Maildir" / "new"
        [msg] = waitFor(lambda: list(new.iterdir()), "delivery by the queue-only process")
        assert msg.read_bytes().endswith(b"\n\nvia front\n")
        # the message's files go (and "end msg" is logged) just after the delivery
        waitFor(lambda: b"end msg" in qlog.read_bytes(), "end msg in the queue-only log")
    finally:
        for p in (front, queue):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
