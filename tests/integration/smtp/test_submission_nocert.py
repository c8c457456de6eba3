"""
A --submission (STARTTLS) listener on a home without control/servercert.pem can take no mail:
the daemon says so in one warning line at start and on each SIGHUP while the file is missing
(docs/behaviour/submission.md 16.1).
"""

from __future__ import annotations

import os
import signal
import smtplib

from tests.integration.daemon import Daemon
from tests.integration.pop3.test_listener import REPO, addUser
from tests.integration.smtp.test_tls import writeCertificate
from tests.support import freePort


def test_warning_at_start_and_on_sighup(home, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", REPO)
    addUser(home, "alice", b"secret")
    port, smtp = freePort(), freePort()
    endpoint = f"tcp:{port}:interface=127.0.0.1"
    warning = (f"warning: submission on {endpoint} has no control/servercert.pem: STARTTLS "
               "and AUTH are not offered, so no one can submit")
    d = Daemon(str(tmp_path), ["--home", home.path, "--qmtp", "none", "--pop3", "none",
                               "--smtp", f"tcp:{smtp}:interface=127.0.0.1",
                               "--submission", endpoint], str(tmp_path / "log"))
    d.start()
    try:
        d.waitLine(f"submission: listening on 127.0.0.1:{port}")
        d.waitLine(warning)
        assert sum(warning in line for line in d.lines()) == 1

        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example") as s:
            s.ehlo()
            assert not s.has_extn("starttls") and not s.has_extn("auth")
            code, _ = s.mail("alice@test.example")
            assert code == 530  # what the warning means

        d.send(signal.SIGHUP)
        d.waitFor(lambda: sum(warning in line for line in d.lines()) == 2,
                  "the warning again after SIGHUP")

        writeCertificate(os.path.join(home.control, "servercert.pem"))
        d.send(signal.SIGHUP)
        d.waitFor(lambda: sum("hup: reread control files" in line for line in d.lines()) == 2,
                  "the second SIGHUP")
        # the session below starts after the SIGHUP's own check was queued on the threads
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example") as s:
            s.ehlo()
            assert s.has_extn("starttls")
        d.waitLine("tcpserver: end 2 status 0")
        assert sum(warning in line for line in d.lines()) == 2  # no third: the file is there
        # the log is written in batches: looked at only now, long after the start's and both
        # SIGHUPs' checks, so that a warning for the MX listener would be in the file
        assert not any("has no control/servercert.pem" in line and "smtp on" in line
                       for line in d.lines())  # the MX listener needs no AUTH
    finally:
        assert d.stop() == 0
