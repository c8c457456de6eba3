"""
The daemon logs one C{pop3: tls IP PROTOCOL CIPHER} line per TLS session, after STLS and on a
POP3S (C{ssl:}) listener, the same line as the SMTP listener's (docs/behaviour/pop3.md 10.1,
submission.md 16.5; qmtwist/tlslog.py).
"""

from __future__ import annotations

import os
import poplib
import re

from tests.integration.daemon import Daemon
from tests.integration.pop3.test_listener import REPO, addUser
from tests.integration.pop3.test_tls import noVerify
from tests.integration.smtp.test_tls import writeCertificate
from tests.support import freePort

TLSLINE = re.compile(r"pop3: tls 127\.0\.0\.1 (TLSv1\.[23]) ([A-Z0-9_-]+)$")


def tlsLines(d: Daemon) -> list[re.Match]:
    return [m for m in (TLSLINE.search(line) for line in d.lines()) if m]


def waitEnds(d: Daemon, n: int) -> None:
    """Wait for the end lines of C{n} sessions: the log is written in batches, and a
    session's every line is written before its end line."""
    d.waitFor(lambda: sum(line.startswith("tcpserver: end ") for line in d.lines()) == n,
              f"{n} session end line(s)")


def test_stls_and_pop3s_log_protocol_and_cipher(pop3home, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", REPO)
    addUser(pop3home, "joe", b"secret")
    pem = os.path.join(pop3home.control, "servercert.pem")
    writeCertificate(pem)
    plain, tls = freePort(), freePort()
    d = Daemon(str(tmp_path), ["--home", pop3home.path,
                               "--pop3", f"tcp:{plain}:interface=127.0.0.1",
                               "--pop3", f"ssl:{tls}:interface=127.0.0.1:privateKey={pem}"],
               str(tmp_path / "log"))
    d.start()
    try:
        d.waitLine("tcpserver: status: 0/40")
        p = poplib.POP3("127.0.0.1", plain, timeout=30)
        p.capa()
        assert tlsLines(d) == []  # nothing before the handshake
        p.stls(context=noVerify())
        cipher = p.sock.cipher()  # (name, protocol, bits) as the client sees it
        p.user("joe")
        p.pass_("secret")
        p.quit()
        waitEnds(d, 1)  # so that a line before the handshake would be in the file by now
        assert len(tlsLines(d)) == 1, d.tail()  # one line for the session, at the handshake
        m = tlsLines(d)[0]
        assert (m.group(1), m.group(2)) == (cipher[1], cipher[0])

        s = poplib.POP3_SSL("127.0.0.1", tls, timeout=30, context=noVerify())
        cipher = s.sock.cipher()
        s.quit()
        waitEnds(d, 2)
        assert len(tlsLines(d)) == 2, d.tail()  # one line per session
        m = tlsLines(d)[1]
        assert (m.group(1), m.group(2)) == (cipher[1], cipher[0])
    finally:
        d.stop()
