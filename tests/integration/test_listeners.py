"""
Repeated listener options in one daemon (docs/commands.md "Listeners"): SMTP on two IPv4 ports
with their own rules files and on IPv6 ::1, POP3 and POP3S side by side.
"""

from __future__ import annotations

import os
import poplib
import smtplib
import socket

import pytest

from tests.integration.daemon import Daemon
from tests.integration.pop3.test_listener import REPO, addUser
from tests.integration.smtp.test_submission import noVerify
from tests.integration.smtp.test_tls import writeCertificate
from tests.support import freePort


def freePort6() -> int:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


def test_repeated_listeners_each_with_its_rules(home, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", REPO)
    try:
        v6 = freePort6()
    except OSError as e:  # pragma: no cover - the CI machine has ::1
        pytest.fail(f"cannot bind ::1: {e}")
    writeCertificate(os.path.join(home.control, "servercert.pem"))
    addUser(home, "joe", b"pw")
    relayRules = tmp_path / "relay.rules"
    relayRules.write_text('127.0.0.1:allow,RELAYCLIENT=""\n')
    plainRules = tmp_path / "plain.rules"
    plainRules.write_text(":allow\n")
    ports = [freePort() for _ in range(4)]
    d = Daemon(str(tmp_path), [
        "--home", home.path, "--qmtp", "none", "--no-queue",
        "--smtp", f"tcp:{ports[0]}:interface=127.0.0.1",
        "--smtp", f"tcp:{ports[1]}:interface=127.0.0.1",
        "--smtp", f"tcp6:{v6}:interface=\\:\\:1",
        "--smtp-rules", str(relayRules), "--smtp-rules", str(plainRules),
        "--pop3", f"tcp:{ports[2]}:interface=127.0.0.1",
        "--pop3", f"ssl:{ports[3]}:interface=127.0.0.1"], str(tmp_path / "log"))
    d.start()
    try:
        for address in (f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", f"[::1]:{v6}"):
            d.waitLine(f"smtp: listening on {address}")
        for port in ports[2:]:
            d.waitLine(f"pop3: listening on 127.0.0.1:{port}")

        def relay(host: str, port: int) -> int:
            with smtplib.SMTP(host, port, timeout=30) as s:
                s.ehlo("c.example")
                s.docmd("MAIL", "FROM:<a@b.example>")
                return s.docmd("RCPT", "TO:<x@elsewhere.example>")[0]

        assert relay("127.0.0.1", ports[0]) == 250  # its rules: RELAYCLIENT
        assert relay("127.0.0.1", ports[1]) == 553  # the second rules file: no relay
        assert relay("::1", v6) == 553  # the last rules file given serves the rest
        pop = poplib.POP3("127.0.0.1", ports[2], timeout=30)
        assert pop.getwelcome().startswith(b"+OK")
        pop.user("joe")
        pop.pass_("pw")
        assert pop.stat() == (0, 0)
        pop.quit()
        pops = poplib.POP3_SSL("127.0.0.1", ports[3], timeout=30, context=noVerify())
        pops.user("joe")
        pops.pass_("pw")
        assert pops.stat() == (0, 0)
        pops.quit()
    finally:
        status = d.stop()
    assert status == 0
