"""
SMTPUTF8 in remote delivery against real Postfix peers (docs/behaviour/smtp-extensions.md 20.6):
a private Postfix with smtputf8_enable=yes takes a UTF-8 envelope and delivers it byte for byte
into a virtual Maildir; Postfix's smtp-sink, which does not offer SMTPUTF8, gets nothing and the
message bounces with 5.6.7. Needs the Debian package postfix and root (the private Postfix).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

import pytest
import pytest_twisted

from qmtwist.delivery import Report
from qmtwist.home import Home, setup
from tests.integration.daemon import Daemon, waitFor
from tests.integration.postfix import PrivatePostfix, available
from tests.integration.remote.peers import PostfixSmtpSink
from tests.integration.remote.test_delivery import agent, control, deliverAll, message, request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SENDER = "jöe@test.example".encode()
RCPT = "tést@example.net".encode()
TEXT = ("Received: (qmail 1 invoked by uid 0); 25 Nov 2026 09:00:00 -0000\n"
        "From: Jöe <jöe@test.example>\nTo: tést@example.net\nSubject: ünïcödé ☃\n"
        "Date: Wed, 25 Nov 2026 09:00:00 +0000\nMessage-ID: <1@test.example>\n\n"
        ".leading dot\nçà et là\n").encode()
NOT_OFFERED = (b"Connected to 127.0.0.1 but it does not offer SMTPUTF8, needed for a UTF-8 "
               b"address. (#5.6.7)\n")


@pytest.fixture
def postfixPeer(tmp_path):
    if not available():
        pytest.skip("needs root and Postfix (Debian package postfix)")
    nobody = pwd.getpwnam("nobody")
    vmail = tmp_path / "vmail"
    os.mkdir(vmail)
    os.chown(vmail, nobody.pw_uid, nobody.pw_gid)
    pf = PrivatePostfix(str(tmp_path / "pf"), {})
    maps = os.path.join(pf.conf, "vmailbox")
    with open(maps, "wb") as f:
        f.write(RCPT + " tést/\n".encode())
    subprocess.run(["postconf", "-c", pf.conf, "-e", "smtputf8_enable=yes",
                    "virtual_mailbox_domains=example.net", f"virtual_mailbox_base={vmail}",
                    f"virtual_mailbox_maps=texthash:{maps}",
                    f"virtual_uid_maps=static:{nobody.pw_uid}",
                    f"virtual_gid_maps=static:{nobody.pw_gid}"], check=True)
    pf.start()
    pf.maildir = os.path.join(vmail, "tést", "new")  # type: ignore[attr-defined]
    yield pf
    pf.stop()


@pytest_twisted.ensureDeferred
async def test_utf8_envelope_to_postfix_with_smtputf8(home, tmp_path, postfixPeer) -> None:
    control(home, "smtproutes", b":127.0.0.1:%d\n" % postfixPeer.port)
    [r] = await deliverAll(agent(home, None), [request(message(tmp_path, TEXT), RCPT, SENDER)])
    assert r.outcome.value == "success", r
    assert r.text.startswith(b"127.0.0.1 accepted message.\nRemote host said: 250 2.0.0 Ok")

    def delivered():
        d = postfixPeer.maildir
        return [os.path.join(d, n) for n in os.listdir(d)] if os.path.isdir(d) else []

    [path] = waitFor(delivered, "the message in Postfix's virtual Maildir",
                     context=postfixPeer.log)
    with open(path, "rb") as f:
        got = f.read()
    assert got.endswith(TEXT), got  # Postfix's own lines above ours, ours byte for byte
    # Postfix refuses a non-ASCII MAIL FROM without the SMTPUTF8 parameter ("553 5.6.7 Must
    # declare SMTPUTF8"), so this delivery shows we sent it
    assert got.startswith(b"Return-Path: <" + SENDER + b">\n")


@pytest.mark.skipif(not PostfixSmtpSink.available(), reason="smtp-sink missing (Debian package postfix)")
@pytest_twisted.ensureDeferred
async def test_smtp_sink_without_smtputf8_fails_only_the_utf8_recipient(home, tmp_path) -> None:
    sink = PostfixSmtpSink()
    sink.start()
    try:
        control(home, "smtproutes", b":127.0.0.1:%d\n" % sink.port)
        path = message(tmp_path, TEXT)
        reports = await deliverAll(agent(home, None), [
            request(path, RCPT), request(path, b"plain@example.net", pos=1)])
        utf8Sender = await deliverAll(agent(home, None), [
            request(path, b"plain@example.net", SENDER)])
    finally:
        sink.stop()
    assert reports == [Report.failure(NOT_OFFERED),
                       Report.success(b"127.0.0.1 accepted message.\n"
                                      b"Remote host said: 250 2.0.0 Ok\n")]
    assert utf8Sender == [Report.failure(NOT_OFFERED)]


def test_daemon_bounces_5_6_7_to_the_sender(tmp_path, monkeypatch) -> None:
    """Through the whole daemon: the bounce reaches the sender's Maildir with the 5.6.7 text."""
    if not PostfixSmtpSink.available():
        pytest.skip("smtp-sink missing (Debian package postfix)")
    sink = PostfixSmtpSink()
    port = sink.start()
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    home = Home(str(tmp_path / "home"))
    setup(home, me="sender.example")
    control(home, "smtproutes", b":127.0.0.1:%d\n" % port)
    cli = [sys.executable, "-m", "qmtwist.cli", "--home", home.path]
    assert subprocess.run(cli + ["user", "add", "joe"], cwd=REPO).returncode == 0
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", "none", "--qmtp", "none",
                               "--pop3", "none"], str(tmp_path / "log"))
    d.start()
    try:
        d.waitLine("status: local 0/10 remote 0/20")
        inj = subprocess.run(cli + ["inject", "-f", "joe@sender.example", "tést@remote.example"],
                             input="Subject: ünï\n\nhi\n".encode(), capture_output=True, cwd=REPO)
        assert inj.returncode == 0, inj.stderr
        d.waitLine(": failure: Connected_to_127.0.0.1_but_it_does_not_offer_SMTPUTF8,"
                   "_needed_for_a_UTF-8_address._(#5.6.7)/")
        new = os.path.join(home.homes, "joe", "Maildir", "new")
        [bounce] = waitFor(lambda: os.listdir(new), "the bounce in joe's Maildir")
        with open(os.path.join(new, bounce), "rb") as f:
            text = f.read()
        assert "<tést@remote.example>:\n".encode() in text
        assert b"does not offer SMTPUTF8, needed for a UTF-8 address. (#5.6.7)" in text
    finally:
        sink.stop()
        assert d.stop() == 0
