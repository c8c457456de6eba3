"""
The whole daemon (twistd qmtwist as a child): three QMTP packages in one connection and an SMTP
message reach a virtual user's Maildir; the user reads them over POP3 with the built-in checker
(FAQ 5.2, 5.3; docs/behaviour/qmtp.md 9, pop3.md 10).
"""

from __future__ import annotations

import os
import poplib
import re
import smtplib
import socket

import pytest

from qmtwist.qmtp.netstring import NetstringParser, encode, encodeList
from tests.integration.daemon import Daemon, waitFor
from tests.integration.pop3.test_listener import (
    REPO, addUser)
from tests.support import freePort


@pytest.fixture
def daemon(pop3home, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", REPO)
    ports = {name: freePort() for name in ("smtp", "qmtp", "pop3")}
    d = Daemon(str(tmp_path), ["--home", pop3home.path]
               + [a for n, p in ports.items() for a in (f"--{n}", f"tcp:{p}:interface=127.0.0.1")],
               str(tmp_path / "log"))
    d.ports = ports
    yield d
    d.stop()


def package(message: bytes, sender: bytes, recipients: list[bytes]) -> bytes:
    return encode(message) + encode(sender) + encodeList(recipients)


def qmtp(port: int, data: bytes, count: int) -> list[bytes]:
    out: list[bytes] = []
    parser = NetstringParser(out.append)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        while len(out) < count:
            chunk = sock.recv(65536)
            if not chunk:
                break
            parser.feed(chunk)
    return out


def test_qmtp_and_smtp_to_maildir_then_pop3(pop3home, daemon):
    home = pop3home
    addUser(home, "joe", b"secret")
    with open(os.path.join(home.control, "databytes"), "w") as f:
        f.write("1000\n")
    daemon.start()
    daemon.waitLine("tcpserver: status: 0/40")
    answers = qmtp(daemon.ports["qmtp"], (
        package(b"\nSubject: relay\n\nx\n", b"a@b.example", [b"victim@elsewhere.example"])
        + package(b"\n" + b"y" * 1001, b"a@b.example", [b"joe@test.example"])
        + package(b"\rSubject: by qmtp\r\n\r\n\xe9\xff\r\n", b"a@b.example",
                  [b"joe@test.example"])), 3)
    assert answers[:2] == [
        b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
        b"Dsorry, that message size exceeds my databytes limit (#5.3.4)"]
    assert re.fullmatch(rb"Kok \d+ qp \d+", answers[2]), answers
    with smtplib.SMTP("127.0.0.1", daemon.ports["smtp"], local_hostname="client.example") as s:
        s.sendmail("alice@example.org", ["joe@test.example"], b"Subject: by smtp\r\n\r\nhi\r\n")
    maildir = os.path.join(home.homes, "joe", "Maildir")
    waitFor(lambda: len(os.listdir(os.path.join(maildir, "new"))) == 2, "two deliveries to joe")

    p = poplib.POP3("127.0.0.1", daemon.ports["pop3"], timeout=30)
    assert p.getwelcome().endswith(b"@test.example>")
    p.user("joe")
    p.pass_("secret")
    count, _size = p.stat()
    messages = [b"\n".join(p.retr(i)[1]) for i in range(1, count + 1)]
    p.dele(1)
    p.dele(2)
    p.quit()
    assert count == 2
    byQmtp = [m for m in messages if b"Subject: by qmtp" in m]
    bySmtp = [m for m in messages if b"Subject: by smtp" in m]
    assert len(byQmtp) == 1 and len(bySmtp) == 1
    assert re.fullmatch(
        rb"Return-Path: <a@b\.example>\n"
        rb"Delivered-To: joe@test\.example\n"
        rb"Received: \(qmail \d+ invoked from network\); [^\n]+\n"
        rb"Received: from unknown \(127\.0\.0\.1\)\n"
        rb"  by test\.example with QMTP; [^\n]+\n"
        rb"Subject: by qmtp\n\n\xe9\xff\n", byQmtp[0]), byQmtp[0]
    assert bySmtp[0].endswith(b"Subject: by smtp\n\nhi\n")
    waitFor(lambda: os.listdir(os.path.join(maildir, "new")) == []
            and os.listdir(os.path.join(maildir, "cur")) == [], "QUIT's deletions")

    p = poplib.POP3("127.0.0.1", daemon.ports["pop3"], timeout=30)
    p.user("joe")
    with pytest.raises(poplib.error_proto, match="authorization failed"):
        p.pass_("wrong")
    daemon.waitLine("pop3: authorization failed for joe from 127.0.0.1")
