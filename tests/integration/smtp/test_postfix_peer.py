"""
A real Postfix sends to the daemon's --smtp listener (docs/behaviour/smtp-extensions.md 20.3,
12.5): an SMTPUTF8 message with a UTF-8 envelope and UTF-8 headers is delivered byte for byte
into a Maildir through a .qmail file named in UTF-8, and an unknown local user is refused at RCPT
(Postfix bounces it itself, and nothing is queued here). Needs root and the Debian package postfix.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys

import pytest

from qmtwist.home import Home, setup
from tests.integration.daemon import Daemon, waitFor
from tests.integration.postfix import PrivatePostfix, available
from tests.support import freePort

pytestmark = pytest.mark.skipif(not available(), reason="needs root and Postfix (package postfix)")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BODY = ("From: Tést <tést@postfix.example>\r\nTo: alice-tést@test.example\r\n"
        "Subject: ünïcödé ☃\r\nDate: Wed, 25 Nov 2026 09:00:00 +0000\r\n"
        "Message-ID: <1@postfix.example>\r\n\r\nline one\r\n.\r\n..two dots\r\n"
        "8-bit: \xe7\xe0 \u2603\r\nend\r\n").encode()


def files(d: str) -> list[str]:
    return [os.path.join(d, n) for n in os.listdir(d)] if os.path.isdir(d) else []


@pytest.fixture
def daemonAndPostfix(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    r = subprocess.run([sys.executable, "-m", "qmtwist.cli", "--home", home.path, "user", "add",
                        "alice"], capture_output=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    alice = os.path.join(home.homes, "alice")
    dot = os.path.join(alice, ".qmail-tést")
    with open(dot, "wb") as f:
        f.write(b"./Maildir/\n")
    st = os.stat(alice)
    os.chown(dot, st.st_uid, st.st_gid)
    port = freePort()
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", f"tcp:{port}:interface=127.0.0.1",
                               "--qmtp", "none", "--pop3", "none"], str(tmp_path / "log"))
    d.start()
    d.waitLine("status: local 0/10 remote 0/20")
    pf = PrivatePostfix(str(tmp_path / "pf"), {"smtputf8_enable": "yes",
                                               "relayhost": f"[127.0.0.1]:{port}"})
    pf.start()
    yield d, home, pf
    pf.stop()
    assert d.stop() == 0


def test_postfix_sends_smtputf8_and_we_deliver_byte_for_byte(daemonAndPostfix):
    d, home, pf = daemonAndPostfix
    with smtplib.SMTP("127.0.0.1", pf.port) as s:
        s.sendmail("tést@postfix.example", ["alice-tést@test.example"], BODY,
                   mail_options=["SMTPUTF8"])
    maildir = os.path.join(home.homes, "alice", "Maildir", "new")
    [path] = waitFor(lambda: files(maildir), "the message in alice's Maildir", deadline=60,
                     context=lambda: d.tail() + pf.log())
    with open(path, "rb") as f:
        got = f.read()
    head, _, rest = got.partition(b"Received: from ")
    assert head.startswith('Return-Path: <"tést"@postfix.example>\n'
                           'Delivered-To: alice-tést@test.example\n'.encode())
    assert b" with UTF8SMTP; " in rest.split(b"\n")[1]  # our line: the session said SMTPUTF8
    assert got.endswith(BODY.replace(b"\r\n", b"\n"))  # Postfix's Received above, then ours
    # Postfix logs the 250 through its own log daemon, not before the Maildir file exists
    waitFor(lambda: "status=sent (250 2.0.0 ok " in pf.log(), "Postfix's status=sent line",
            deadline=60, context=pf.log)


def test_unknown_local_user_is_refused_at_rcpt(daemonAndPostfix):
    d, home, pf = daemonAndPostfix
    with smtplib.SMTP("127.0.0.1", pf.port) as s:
        s.sendmail("joe@postfix.example", ["nobody-here@test.example"],
                   b"Subject: x\r\n\r\nbody\r\n")
    waitFor(lambda: "said: 550 5.1.1 sorry, no mailbox here by that name (#5.1.1)" in pf.log(),
            "Postfix's bounce line for the 550", deadline=60, context=pf.log)
    # the log is written in batches: a queued message's "new msg" would come before the end of
    # Postfix's session (the daemon's only one), so wait for that line first
    d.waitLine("tcpserver: end 1 status ")
    assert not any("new msg" in line for line in d.lines())
