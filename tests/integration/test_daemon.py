"""
The spine end to end: twistd qmtwist as a real child, real files, real signals.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from qmtwist.home import Home, setup
from qmtwist.users import userCommand
from tests.integration.daemon import Daemon, waitFor

NO_LISTENERS = ["--smtp", "none", "--qmtp", "none", "--pop3", "none"]


def queueEmpty(home: Home) -> bool:
    for d in ("todo", "intd", "bounce"):
        if os.listdir(home.queue.sub(d)):
            return False
    for d in ("mess", "info", "local", "remote"):
        for i in range(23):
            if os.listdir(home.queue.sub(d, i)):
                return False
    return True


def maildirFiles(path: str) -> list[str]:
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        out.extend(os.path.join(d, n) for n in os.listdir(d))
    return out


def qmtwist(home: Home, *args: str, stdin: bytes = b"", env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qmtwist.cli", "--home", home.path, *args],
        input=stdin, capture_output=True, env=env)


def test_twistd_with_no_argument_creates_home_and_logs(tmp_path):
    d = Daemon(str(tmp_path), [], str(tmp_path / "log"))
    env_home = tmp_path / "qmtwist-home"
    assert not env_home.exists()
    d.start()
    try:
        d.waitLine("status: local 0/10 remote 0/20")
        waitFor(lambda: sum("tcpserver: status: 0/40" in x for x in d.lines()) == 3,
                "the three listeners' status lines")
        assert (env_home / "control" / "me").exists()
        assert (env_home / "queue" / "todo").is_dir()
        lines = d.lines()
        assert f"setup: created {env_home}" in lines
        for port in ("2525", "2209", "2110"):
            assert any(port in line for line in lines), f"no listener line for {port}"
    finally:
        assert d.stop() == 0
    assert "status: exiting" in d.lines()


def test_inject_to_local_user_ends_in_maildir(tmp_path):
    home = Home(str(tmp_path / "home"))
    d = Daemon(str(tmp_path), ["--home", home.path, *NO_LISTENERS], str(tmp_path / "log"))
    d.start()
    try:
        d.waitLine("status: local 0/10 remote 0/20")
        assert qmtwist(home, "user", "add", "alice").returncode == 0
        me = open(os.path.join(home.control, "me"), "rb").read().strip()
        r = qmtwist(home, "inject", "-f", "joe@example.org", "alice",
                    stdin=b"Subject: tour\n\nhello alice\n")
        assert r.returncode == 0, r.stderr
        maildir = os.path.join(home.homes, "alice", "Maildir")
        files = waitFor(lambda: maildirFiles(maildir), "the message in alice's Maildir")
        d.waitLine("end msg")
        with open(files[0], "rb") as f:
            text = f.read()
        assert text.startswith(
            b"Return-Path: <joe@example.org>\nDelivered-To: alice@" + me + b"\nReceived: (qmail ")
        assert text.endswith(b"\n\nhello alice\n")
        assert os.path.dirname(files[0]).endswith("/new")
        assert queueEmpty(home)
        lines = d.lines()
        n = [line for line in lines if line.startswith("new msg ")][0].split()[-1]
        wanted = [f"new msg {n}", f"info msg {n}: bytes ",
                  f"starting delivery 1: msg {n} to local alice@{me.decode()}",
                  "delivery 1: success: did_1+0+0/", f"end msg {n}"]
        positions = [next(i for i, line in enumerate(lines) if line.startswith(w))
                     for w in wanted]
        assert positions == sorted(positions)
    finally:
        assert d.stop() == 0
    assert "status: exiting" in d.lines()


def test_sighup_rereads_locals_and_bad_control_keeps_last_value(tmp_path):
    home = Home(str(tmp_path / "home"))
    d = Daemon(str(tmp_path), ["--home", home.path, *NO_LISTENERS], str(tmp_path / "log"))
    setup(home, me="test.example")
    with open(os.path.join(home.control, "smtproutes"), "wb") as f:
        f.write(b"af.mil:127.0.0.1:1\n")  # a port that refuses: an immediate deferral
    d.start()
    try:
        d.waitLine("status: local 0/10 remote 0/20")
        r = qmtwist(home, "inject", "-f", "joe@example.org", "boss@af.mil",
                    stdin=b"Subject: 1\n\n1\n")
        assert r.returncode == 0, r.stderr
        d.waitLine("to remote boss@af.mil")
        with open(os.path.join(home.control, "locals"), "ab") as f:
            f.write(b"af.mil\n")
        with open(os.path.join(home.control, "concurrencylocal"), "wb") as f:
            f.write(b"many\n")
        assert qmtwist(home, "ctl", "hup").returncode == 0  # FAQ's kill -HUP, via run/qmtwist.pid
        d.waitLine("warning: control/concurrencylocal line 1: not a number; keeping previous"
                   " value 10")
        r = qmtwist(home, "inject", "-f", "joe@example.org", "boss@af.mil",
                    stdin=b"Subject: 2\n\n2\n")
        assert r.returncode == 0
        d.waitLine("to local boss@af.mil")
        waitFor(lambda: any("deferral" in x for x in d.lines()),
                "the remote attempt to end in a deferral (port 1 refuses)")
        assert len([x for x in d.lines() if "to remote boss@af.mil" in x]) == 1
        # FAQ 7.2: ALRM retries the deferred remote delivery now
        assert qmtwist(home, "ctl", "alrm").returncode == 0
        waitFor(lambda: len([x for x in d.lines() if "to remote boss@af.mil" in x]) == 2,
                "a second remote attempt after qmtwist ctl alrm")
        # FAQ 7.1: qmtwist ctl term stops cleanly
        assert qmtwist(home, "ctl", "term").returncode == 0
        assert d.proc.wait(30) == 0
    finally:
        assert d.stop() == 0
    assert not os.path.exists(home.pidfile)
    lines = d.lines()
    assert lines.index([x for x in lines if "status: exiting" in x][0]) > \
        lines.index([x for x in lines if "to local boss@af.mil" in x][0])


INJECTOR = r"""
import sys
from qmtwist.home import Home, setup
from qmtwist.queue import store
home = Home(sys.argv[1])
tag, count, rcpt = sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
for i in range(count):
    token = b"%s-%d" % (tag.encode(), i)
    store.inject(home.queue, b"crash@example.org", [rcpt],
                 b"Subject: " + token + b"\n\ntoken " + token + b"\n", b"by uid 0",
                 controlDir=home.control)
    sys.stdout.write(token.decode() + "\n")
    sys.stdout.flush()
"""


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    home = Home(str(tmp_path / "home"))
    d = Daemon(str(tmp_path), ["--home", home.path, *NO_LISTENERS], str(tmp_path / "log"))
    d.start()
    d.waitLine("status: local 0/10 remote 0/20")
    assert userCommand(home, ["add", "alice"]) == 0
    me = open(os.path.join(home.control, "me")).read().strip()
    rng = random.Random(1234)
    injectors = [
        subprocess.Popen([sys.executable, "-c", INJECTOR, home.path, f"p{k}", "40",
                          f"alice@{me}"], stdout=subprocess.PIPE)
        for k in range(3)]
    try:
        for _ in range(4):
            time.sleep(rng.uniform(0.2, 0.8))  # a random moment to crash at, not a wait
            d.stop(signal.SIGKILL)
            d.start()
            d.waitLine("status: local 0/10 remote 0/20")
        acked = set()
        for p in injectors:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            acked.update(out.decode().split())
        assert len(acked) == 120
        maildir = os.path.join(home.homes, "alice", "Maildir")
        waitFor(lambda: queueEmpty(home) and len(maildirFiles(maildir)) >= 120,
                "every message delivered and the queue empty", deadline=120)
        seen: dict[str, int] = {}
        for path in maildirFiles(maildir):
            with open(path, "rb") as f:
                token = f.read().rsplit(b"token ", 1)[1].strip().decode()
            seen[token] = seen.get(token, 0) + 1
        assert set(seen) == acked
        assert [t for t, c in seen.items() if c != 1] == []
        assert os.listdir(os.path.join(maildir, "tmp")) == []
    finally:
        for p in injectors:
            if p.poll() is None:
                p.kill()
        d.stop()


@pytest.mark.parametrize("envelope,code", [
    (b"", 54),
    (b"Fjoe@x\0Tfred@y\0", 54),
    (b"Xjoe@x\0\0", 91),
    (b"Fjoe@x\0Tfr\ned@y\0\0", 91),
    (b"Fjoe@x\0T" + b"a" * 1003 + b"\0\0", 11),
])
def test_qmail_queue_bad_envelopes_leave_nothing(home, envelope, code):
    r = subprocess.run(
        [os.path.join(home.bin, "qmail-queue")],
        input=b"Subject: x\n\nbody\n",
        stderr=subprocess.PIPE,
        **_envelopeOnFd1(envelope))  # descriptor 1 carries the envelope
    assert r.returncode == code
    assert queueEmpty(home)
    assert os.listdir(home.queue.sub("pid")) == []


def _envelopeOnFd1(envelope: bytes) -> dict:
    rfd, wfd = os.pipe()
    os.write(wfd, envelope)
    os.close(wfd)
    return {"stdout": rfd}


def test_qmail_queue_accepts_good_envelope(home):
    r = subprocess.run([os.path.join(home.bin, "qmail-queue")], input=b"Subject: x\n\nbody\n",
                       stderr=subprocess.PIPE, **_envelopeOnFd1(b"Fjoe@x\0Tfred@y\0\0"))
    assert r.returncode == 0, r.stderr
    [todo] = os.listdir(home.queue.sub("todo"))
    with open(home.queue.todo(int(todo)), "rb") as f:
        assert f.read().endswith(b"Fjoe@x\0Tfred@y\0")
    with open(home.queue.mess(int(todo)), "rb") as f:
        data = f.read()
    assert data.startswith(b"Received: (qmail ") and b" invoked by uid %d); " % os.getuid() in data
    assert data.endswith(b"\nSubject: x\n\nbody\n")
