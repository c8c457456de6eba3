"""
The spine end to end: twistd qmtwist as a real child, real files, real signals.
"""

from __future__ import annotations

import os
import random
import signal
import smtplib
import subprocess
import sys
import threading
import time

import pytest

from qmtwist.home import Home, setup
from qmtwist.queue import crashpoint
from qmtwist.queue.store import inject
from qmtwist.users import userCommand
from tests.integration.daemon import Daemon, twistdWith
from tests.support import freePort, waitFor

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
                  f"delivery 1: msg {n}: success: did_1+0+0/", f"end msg {n}"]
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


@pytest.mark.parametrize(("who", "point"), [
    (who, point) for point in crashpoint.POINTS for who in ("qmail-queue", "daemon")
    if who == "daemon" or point not in crashpoint.DAEMON_ONLY])
def test_sigkill_at_a_commit_point_the_process_reports(tmp_path, who, point):
    """
    docs/behaviour/queue.md 5.1, 5.10 and 5.11: killed inside its commit round at a point it
    reports (qmtwist/queue/crashpoint.py), a process has committed the message or left nothing
    that will ever be delivered. Killed once the todo link exists, the message is delivered
    exactly once, although nobody was told it was queued; killed before, it never is (its files
    stay as leftovers). Both an injecting program (qmail-queue's synchronous round) and the
    daemon (an SMTP message in its group commit) are killed; then the daemon starts (recovery)
    and delivers a message queued after the kill. The daemon's points of the in-process
    hand-off (5.11) come after the link: the message's files written in its round, and the
    next round's removal of its todo entry, before and after that is durable (the client has
    its 250 by then).
    """
    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    assert userCommand(home, ["add", "alice"]) == 0
    maildir = os.path.join(home.homes, "alice", "Maildir")
    marker = str(tmp_path / "paused")
    paused = dict(os.environ, QMTWIST_TEST_PAUSE=f"{point}:{marker}")
    port = freePort()
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", f"tcp:{port}:interface=127.0.0.1",
                               "--qmtp", "none", "--pop3", "none"], str(tmp_path / "log"),
               env=paused if who == "daemon" else None)
    try:
        if who == "daemon":
            d.start()
            d.waitLine("tcpserver: status: 0/40")
            answers: list[object] = []

            def send() -> None:
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=60) as c:
                        c.sendmail("crash@example.org", ["alice@test.example"],
                                   b"Subject: killed-0\r\n\r\ntoken killed-0\r\n")
                    answers.append("queued")
                except (OSError, smtplib.SMTPException) as e:
                    answers.append(e)

            client = threading.Thread(target=send)
            client.start()
            d.waitFor(lambda: os.path.exists(marker), f"the daemon's commit round at {point}")
            if point in crashpoint.ANSWERED:  # paused in the round after the message's
                client.join(60)
                assert answers == ["queued"]
            d.stop(signal.SIGKILL)
            client.join(60)
            if point not in crashpoint.ANSWERED:
                assert len(answers) == 1 and answers[0] != "queued"  # no 250 was sent
            d.env = None
        else:  # the program runs, and is killed, before the daemon starts on the queue
            child = subprocess.Popen([sys.executable, "-c", INJECTOR, home.path, "killed", "1",
                                      "alice@test.example"], stdout=subprocess.PIPE, env=paused)
            try:
                waitFor(lambda: os.path.exists(marker) or child.poll() is not None,
                        f"the injecting program's commit round at {point}")
                assert child.poll() is None, "the program ended without pausing"
                child.kill()
                out, _ = child.communicate(timeout=30)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.communicate(timeout=30)
            assert out == b""  # it never reported the message queued
        d.start()
        d.waitLine("status: local 0/10 remote 0/20")
        inject(home.queue, b"crash@example.org", [b"alice@test.example"],
               b"Subject: wake\n\ntoken wake\n", b"by uid 0", controlDir=home.control)

        def settled() -> bool:
            tokens = {t for t, _ in _copies(maildir)} if os.path.isdir(maildir) else set()
            return "wake" in tokens and not os.listdir(home.queue.sub("todo")) \
                and not any(os.listdir(home.queue.sub("info", i)) for i in range(23))

        d.waitFor(settled, "the wake-up message delivered and nothing committed waiting")
        committed = point not in crashpoint.UNCOMMITTED
        assert _copies(maildir) == {
            ("wake", "alice"): 1, **({("killed-0", "alice"): 1} if committed else {})}
        leftovers = sum(len(os.listdir(home.queue.sub("mess", i))) for i in range(23))
        assert leftovers == (0 if committed else 1)  # removed by recovery after 36 hours
    finally:
        d.stop()


def _copies(maildir: str) -> dict[tuple[str, str], int]:
    """(token, the first user that had it) -> number of files, for one Maildir."""
    out: dict[tuple[str, str], int] = {}
    for path in maildirFiles(maildir):
        with open(path, "rb") as f:
            data = f.read()
        header = data.split(b"\n\n", 1)[0].decode()
        delivered = [x.split(": ", 1)[1].split("@")[0] for x in header.split("\n")
                     if x.startswith("Delivered-To: ")]
        token = data.rsplit(b"token ", 1)[1].strip().decode()
        key = (token, delivered[-1])
        out[key] = out.get(key, 0) + 1
    return out


# twistd as on a disk whose fsync takes 5 ms (a spinning disk; this machine's may take 0.2 ms):
# the daemon's fsync(2) calls (the todo directory, fwd/ records, D marks) are made slower, so a
# forward spends as long between its commit and its recipient's D mark as it would there, and
# random kills land in that window often enough to matter. The test itself never waits on it.
SLOW_FSYNC_TWISTD = twistdWith("""
import os, time
_fsync = os.fsync
def fsync(fd):
    time.sleep(0.005)
    _fsync(fd)
os.fsync = fsync
""")
PACE = 0.5  # seconds between two messages of one client: a load the daemon keeps up with


def test_sigkill_under_smtp_and_inject_load_forwards_exactly_once(tmp_path):
    """
    docs/behaviour/queue.md 5.10: random SIGKILLs of the real daemon while two SMTP clients and
    two qmail-inject loops queue mail for alice (a Maildir), bob (a Maildir line and a forward
    to carol) and erin (forwards only, to carol and dave). After a final restart every
    acknowledged message is in each Maildir exactly once, forwarded copies included, and the
    queue holds nothing that waits for delivery (fwd/ included). Before forwards were recorded
    (fwd/), each run of this test found second forwarded copies in carol's Maildir (6 to 53 in
    about 115 messages).
    """
    home = Home(str(tmp_path / "home"))
    setup(home, me="test.example")
    for name in ("alice", "bob", "carol", "dave", "erin"):
        assert userCommand(home, ["add", name]) == 0
    for name, text in (("bob", b"./Maildir/\n&carol@test.example\n"),
                       ("erin", b"&carol@test.example\n&dave@test.example\n")):
        userHome = os.path.join(home.homes, name)
        path = os.path.join(userHome, ".qmail")
        with open(path, "wb") as f:
            f.write(text)
        st = os.stat(userHome)
        os.chown(path, st.st_uid, st.st_gid)
    port = freePort()
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp",
                               f"tcp:{port}:interface=127.0.0.1", "--qmtp", "none",
                               "--pop3", "none"], str(tmp_path / "log"), SLOW_FSYNC_TWISTD)
    rcpts = ["alice@test.example", "bob@test.example", "erin@test.example"]
    acked: set[str] = set()
    maybe: set[str] = set()  # sent, but the answer was lost in a crash
    stop = threading.Event()
    failures: list[str] = []

    def smtpLoad(tag: str) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            token = f"{tag}-{i}"
            body = (f"Subject: {token}\r\n\r\ntoken {token}\r\n").encode()
            try:
                c = smtplib.SMTP("127.0.0.1", port, timeout=10)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)  # the daemon is restarting
                continue
            try:
                with c:
                    c.sendmail("crash@example.org", rcpts, body)
                acked.add(token)
            except (OSError, smtplib.SMTPException):
                maybe.add(token)
            stop.wait(PACE)

    def injectLoad(tag: str) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            token = f"{tag}-{i}"
            r = subprocess.run([os.path.join(home.bin, "qmail-inject"), "-f",
                                "crash@example.org", *rcpts],
                               input=f"Subject: {token}\n\ntoken {token}\n".encode(),
                               capture_output=True)
            if r.returncode == 0:
                acked.add(token)
            else:
                failures.append(f"qmail-inject {token}: {r.returncode} {r.stderr!r}")
            stop.wait(PACE)

    threads = [threading.Thread(target=smtpLoad, args=(f"s{k}",)) for k in range(2)]
    threads += [threading.Thread(target=injectLoad, args=(f"i{k}",)) for k in range(2)]
    rng = random.Random(4321)
    kills = 10
    began = time.monotonic()
    d.start()
    try:
        d.waitLine("tcpserver: status: 0/40")
        for t in threads:
            t.start()
        for _ in range(kills):
            time.sleep(rng.uniform(1.0, 2.5))  # a random moment to crash at, not a wait
            d.stop(signal.SIGKILL)
            d.start()
            d.waitLine("status: local 0/10 remote 0/20")
        stop.set()
        for t in threads:
            t.join(60)
        d.stop(signal.SIGKILL)  # and the final restart
        d.start()
        d.waitLine("status: local 0/10 remote 0/20")
        assert failures == []
        boxes = {n: os.path.join(home.homes, n, "Maildir")
                 for n in ("alice", "bob", "carol", "dave")}
        wanted = {"alice": ["alice"], "bob": ["bob"], "carol": ["bob", "erin"], "dave": ["erin"]}

        def settled() -> bool:
            if not all(t in {k[0] for k in _copies(boxes["carol"])} for t in acked):
                return False
            return not any(os.listdir(home.queue.sub(x)) for x in ("todo", "bounce", "fwd")) \
                and not any(os.listdir(home.queue.sub(x, i)) for x in ("info", "local", "remote")
                            for i in range(23))

        waitFor(settled, "every acknowledged message delivered and nothing waiting",
                deadline=120)
        total = 0
        for box, via in wanted.items():
            copies = _copies(boxes[box])
            total += sum(copies.values())
            expected = {(t, v): 1 for t in acked for v in via}
            got = {k: c for k, c in copies.items() if k[0] in acked}
            extra = {k: c for k, c in got.items() if c != 1}
            missing = set(expected) - set(got)
            assert got == expected, (
                f"{box}: {sum(extra.values()) - len(extra)} extra copies of {len(extra)}"
                f" (message, forwarder) pairs, {len(missing)} missing; {sorted(extra)[:5]}")
            # a message whose 250 was lost may be delivered, but only once
            assert all(c == 1 and k[0] in maybe for k, c in copies.items() if k not in got)
        # what may stay: files of SMTP sessions killed before their commit point (no todo, no
        # info: never delivered, removed after 36 hours)
        orphans = sum(len(os.listdir(home.queue.sub("mess", i))) for i in range(23))
        print(f"\nforward crash test: {len(acked)} acknowledged messages "
              f"({len(maybe)} unanswered), {kills + 1} SIGKILLs, {total} Maildir copies, "
              f"{orphans} uncommitted leftovers, {time.monotonic() - began:.0f} s")
    finally:
        stop.set()
        for t in threads:
            if t.is_alive():
                t.join(60)
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
