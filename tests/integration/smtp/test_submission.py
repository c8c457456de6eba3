"""
Submission through the whole daemon (twistd qmtwist as a child) with real clients: swaks,
Python's smtplib and s-nail authenticate (PLAIN, LOGIN) on --submission (STARTTLS) and
--submissions (implicit TLS); each message is delivered to the local Maildir and relayed to
Postfix's smtp-sink (docs/behaviour/submission.md 16). The refusals (538, 530, 535, 553, 421)
and the log lines of each AUTH attempt, refusal and TLS session are asserted.

Needs swaks, s-nail and postfix (smtp-sink): .ci/run installs them.
"""

from __future__ import annotations

import base64
import glob
import os
import smtplib
import ssl
import subprocess

import pytest

from tests.integration.daemon import Daemon
from tests.integration.pop3.test_listener import REPO, addUser
from tests.integration.remote.peers import PostfixSmtpSink
from tests.integration.smtp.test_tls import writeCertificate
from tests.support import freePort


def noVerify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture
def sink(tmp_path):
    dump = tmp_path / "sink"
    dump.mkdir()
    os.chmod(dump, 0o777)  # smtp-sink runs as nobody under root
    s = PostfixSmtpSink(["-d", str(dump) + "/%M."])
    s.start()
    s.dump = str(dump)
    yield s
    s.stop()


@pytest.fixture
def daemon(home, tmp_path, monkeypatch, sink):
    monkeypatch.setenv("PYTHONPATH", REPO)
    writeCertificate(os.path.join(home.control, "servercert.pem"))
    with open(os.path.join(home.control, "smtproutes"), "wb") as f:
        f.write(b":127.0.0.1:%d\n" % sink.port)
    addUser(home, "alice", b"secret")
    addUser(home, "bob", b"bobpw")
    ports = {name: freePort() for name in ("smtp", "submission", "submissions")}
    d = Daemon(str(tmp_path), [
        "--home", home.path, "--qmtp", "none", "--pop3", "none",
        "--smtp", f"tcp:{ports['smtp']}:interface=127.0.0.1",
        "--submission", f"tcp:{ports['submission']}:interface=127.0.0.1",
        "--submissions", f"ssl:{ports['submissions']}:interface=127.0.0.1"],
        str(tmp_path / "log"))
    d.ports = ports
    d.start()
    d.waitLine(f"submissions: listening on 127.0.0.1:{ports['submissions']}")
    d.waitLine(f"submission: listening on 127.0.0.1:{ports['submission']}")
    yield d
    assert d.stop() == 0


def maildir(home, user: str) -> list[bytes]:
    out = []
    for path in sorted(glob.glob(os.path.join(home.homes, user, "Maildir", "new", "*"))):
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def sunk(sink) -> list[bytes]:
    out = []
    for path in sorted(glob.glob(os.path.join(sink.dump, "*"))):
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def delivered(daemon, home, sink, subject: bytes) -> None:
    """The message with C{subject} reached alice's Maildir and the sink (relayed)."""
    [local] = daemon.waitFor(
        lambda: [m for m in maildir(home, "alice") if subject in m] or None,
        f"{subject!r} in alice's Maildir")
    assert b"(authenticated as alice)" in local
    [relayed] = daemon.waitFor(lambda: [m for m in sunk(sink) if subject in m] or None,
                               f"{subject!r} at smtp-sink")
    assert b"friend@remote.example" in relayed and b"(authenticated as alice)" in relayed


def swaks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["swaks", "--server", "127.0.0.1", "--helo", "client.example",
                           "--from", "alice@test.example", "--to",
                           "alice@test.example,friend@remote.example", *args],
                          capture_output=True, text=True, timeout=60)


def test_swaks_plain_starttls_and_login_implicit_tls(home, daemon, sink):
    r = swaks("--port", str(daemon.ports["submission"]), "--tls", "--auth", "PLAIN",
              "--auth-user", "alice", "--auth-password", "secret", "--header", "Subject: swaks1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "235 2.7.0 authentication successful" in r.stdout
    delivered(daemon, home, sink, b"swaks1")
    r = swaks("--port", str(daemon.ports["submissions"]), "--tlsc", "--auth", "LOGIN",
              "--auth-user", "alice", "--auth-password", "secret", "--header", "Subject: swaks2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "334 VXNlcm5hbWU6" in r.stdout
    delivered(daemon, home, sink, b"swaks2")
    # the log is buffered (operations.md 21.4.1): its lines follow the delivery within 0.25 s
    daemon.waitLine("submission: auth ok alice from 127.0.0.1 (LOGIN)")
    lines = daemon.lines()
    assert "submission: auth ok alice from 127.0.0.1 (PLAIN)" in lines
    assert "submission: auth ok alice from 127.0.0.1 (LOGIN)" in lines
    tls = [line for line in lines if line.startswith("submission: tls 127.0.0.1 TLSv1.")]
    assert len(tls) == 2, lines  # STARTTLS on submission, the handshake on submissions


def test_smtplib_starttls_login(home, daemon, sink):
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], local_hostname="c.example",
                      timeout=30) as s:
        s.ehlo()
        assert "auth" not in s.esmtp_features  # not before TLS
        s.starttls(context=noVerify())
        s.ehlo()
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        s.login("alice", "secret")
        s.sendmail("alice@test.example", ["alice@test.example", "friend@remote.example"],
                   b"Subject: smtplib1\r\n\r\nhello\r\n")
    delivered(daemon, home, sink, b"smtplib1")


def test_snail_starttls(home, daemon, sink, tmp_path):
    env = dict(os.environ, HOME=str(tmp_path), MAILRC="/dev/null")
    r = subprocess.run(
        ["s-nail", "-n", "-#", "-S", "v15-compat", "-S", "sendwait",
         "-S", f"mta=smtp://alice@127.0.0.1:{daemon.ports['submission']}",
         "-S", "smtp-use-starttls", "-S", "smtp-auth=plain",
         "-S", f"password-alice@127.0.0.1:{daemon.ports['submission']}=secret",
         "-S", "tls-verify=ignore", "-S", f"DEAD={tmp_path}/dead.letter",
         "-S", "hostname=client.example", "-r", "alice@test.example",
         "-s", "snail1", "alice@test.example", "friend@remote.example"],
        input=b"hello from s-nail\n", capture_output=True, env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    delivered(daemon, home, sink, b"snail1")


def plain(authzid: str, user: str, password: str) -> str:
    return "PLAIN " + base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def tlsSession(daemon) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", daemon.ports["submission"], local_hostname="c.example",
                     timeout=30)
    s.starttls(context=noVerify())
    s.ehlo()
    return s


def test_refusals_and_their_log_lines(home, daemon, sink):
    # plaintext AUTH: 538
    with smtplib.SMTP("127.0.0.1", daemon.ports["submission"], timeout=30) as s:
        s.ehlo()
        assert s.docmd("AUTH", plain("", "alice", "secret")) == (
            538, b"5.7.11 encryption required for requested authentication mechanism (#5.7.11)")
    # relay (indeed any mail) without AUTH on the submission port
    with tlsSession(daemon) as s:
        assert s.docmd("MAIL", "FROM:<alice@test.example>")[0] == 530
        assert s.docmd("RCPT", "TO:<friend@remote.example>")[0] == 503
    # borrowing bob's identity with alice's password
    with tlsSession(daemon) as s:
        assert s.docmd("AUTH", plain("bob", "alice", "secret")) == (
            535, b"5.7.8 authentication failed (#5.7.8)")
        s.login("alice", "secret")
        # another user's address
        assert s.docmd("MAIL", "FROM:<bob@test.example>") == (
            553, b"5.7.1 sorry, that address is not yours to send from (#5.7.1)")
        assert s.docmd("MAIL", "FROM:<alice-list@test.example>")[0] == 250
    # the third bad password ends the session
    with tlsSession(daemon) as s:
        assert s.docmd("AUTH", plain("", "alice", "bad1"))[0] == 535
        assert s.docmd("AUTH", plain("", "alice", "bad2"))[0] == 535
        assert s.docmd("AUTH", plain("", "alice", "bad3")) == (
            421, b"4.7.0 too many failed logins, closing connection (#4.7.0)")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.docmd("NOOP")
    # port 25 logs its refusals and TLS sessions too
    with smtplib.SMTP("127.0.0.1", daemon.ports["smtp"], timeout=30) as s:
        s.starttls(context=noVerify())
        s.ehlo()
        s.docmd("MAIL", "FROM:<a@b.example>")
        assert s.docmd("RCPT", "TO:<x@remote.example>")[0] == 553
    want = [
        "submission: refused 127.0.0.1 538 5.7.11 AUTH PLAIN",
        "submission: refused 127.0.0.1 530 5.7.0 MAIL FROM:<alice@test.example>",
        "submission: refused 127.0.0.1 503 5.5.1 RCPT TO:<friend@remote.example>",
        "submission: auth failed alice from 127.0.0.1 (PLAIN): authorization identity bob refused",
        "submission: refused 127.0.0.1 535 5.7.8 AUTH PLAIN",
        "submission: auth ok alice from 127.0.0.1 (PLAIN)",
        "submission: refused 127.0.0.1 553 5.7.1 MAIL FROM:<bob@test.example>",
        "submission: auth failed alice from 127.0.0.1 (PLAIN): no such user or bad password",
        "submission: refused 127.0.0.1 421 4.7.0 AUTH PLAIN",
        "smtp: refused 127.0.0.1 553 5.7.1 RCPT TO:<x@remote.example>",
    ]
    lines = daemon.waitFor(
        lambda: (lambda ls: ls if all(w in ls for w in want) else None)(daemon.lines()),
        "every refusal and AUTH attempt in the log")
    assert sum(line == want[-3] for line in lines) == 3  # each failed attempt has its line
    assert [line for line in lines if line.startswith("smtp: tls 127.0.0.1 TLSv1.")]
    assert not [line for line in lines if "secret" in line or "bad1" in line]
    assert not [line for line in lines if plain("", "alice", "bad1")[6:] in line]
    assert maildir(home, "alice") == []  # nothing of it was delivered
