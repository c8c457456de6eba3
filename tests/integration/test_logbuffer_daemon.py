"""
The real daemon's buffered log (docs/behaviour/operations.md 21.4.1): after a normal stop the
file holds every line up to twistd's last ("status: exiting", "Server Shut Down."), in qmail's
text, without Twisted's factory noise; SIGUSR1 rotates after the waiting lines were written.
"""

from __future__ import annotations

import json
import signal
import smtplib

from qmtwist.home import Home, setup
from tests.integration.daemon import Daemon, waitFor
from tests.support import freePort


def test_a_stopped_daemons_log_ends_with_its_last_lines(tmp_path):
    home = Home(str(tmp_path / "home"))
    setup(home)
    port = freePort()
    logPath = tmp_path / "twistd.log"
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", f"tcp:{port}:interface=127.0.0.1",
                               "--qmtp", "none", "--pop3", "none"], str(tmp_path / "out"),
               twistd=None)
    d.twistd = d.twistd + ["--logfile", str(logPath)]
    d.start()
    try:
        waitFor(lambda: logPath.exists() and b"tcpserver: status: 0/" in logPath.read_bytes(),
                "the SMTP listener in the log file")
        with smtplib.SMTP("127.0.0.1", port) as c:
            c.sendmail("a@example.org", ["postmaster@localhost"], b"Subject: l\r\n\r\nlog\r\n")
        waitFor(lambda: b"end msg" in logPath.read_bytes(), "end msg in the log")
        d.send(signal.SIGUSR1)  # rotation: what waits is written to the old file first
        waitFor(lambda: (tmp_path / "twistd.log.1").exists(), "the rotated log")
        assert b"end msg" in (tmp_path / "twistd.log.1").read_bytes()
        with smtplib.SMTP("127.0.0.1", port) as c:
            c.sendmail("a@example.org", ["postmaster@localhost"], b"Subject: 2\r\n\r\nlog\r\n")
        waitFor(lambda: b"end msg" in logPath.read_bytes(), "end msg in the new log")
    finally:
        code = d.stop()
    assert code == 0
    text = logPath.read_text()
    lines = [x.split("] ", 1)[1] for x in text.splitlines()]
    assert lines[-3:] == ["status: exiting", "Main loop terminated.", "Server Shut Down."], text
    assert "[qmail-send#info] status: exiting\n" in text
    assert "Starting factory" not in text and "Stopping factory" not in text
    assert " starting on " not in text and "Port " not in text  # the port noise
    assert any(x.startswith("tcpserver: ok 2 ") for x in lines), text
    assert not (tmp_path / "out").read_bytes()  # nothing to stdout


def test_json_log_is_buffered_and_complete(tmp_path):
    home = Home(str(tmp_path / "home"))
    setup(home)
    logPath = tmp_path / "twistd.log"
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", "none", "--qmtp", "none",
                               "--pop3", "none", "--log-format", "json"], str(tmp_path / "out"))
    d.twistd = d.twistd + ["--logfile", str(logPath)]
    d.start()
    try:
        waitFor(lambda: logPath.exists() and b"status: local 0/" in logPath.read_bytes(),
                "the queue's status line")
    finally:
        code = d.stop()
    assert code == 0
    texts = [json.loads(x)["text"] for x in logPath.read_text().splitlines()]
    assert texts[-3:] == ["status: exiting", "Main loop terminated.", "Server Shut Down."]
