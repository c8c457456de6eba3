"""
Queue control of a running C{twistd -n qmtwist} (docs/behaviour/queue-control.md): deferred
remote mail toward a port where nothing listens yet, then Postfix's smtp-sink started on it.

C{qmtwist ctl queue --json} shows the deferral reasons and next attempts; C{hold} keeps a
message from delivery across SIGALRM and a restart; C{release} and C{retry} deliver it;
C{delete} removes one with no bounce; an unknown ID exits 1; C{ctl why} prints a story from
the log found through C{HOME/run/logfile}; Twisted's per-port lines are not in the log;
C{--log-format json} writes JSON lines; C{mailq} run by an unprivileged account reads the queue
through the control socket (group C{qmtwistq}).
"""

from __future__ import annotations

import grp
import json
import os
import re
import subprocess
import sys
import time

import pytest

from qmtwist.home import Home, setup
from qmtwist.users import userCommand
from tests.integration.daemon import TWISTD, Daemon
from tests.integration.remote.peers import PostfixSmtpSink
from tests.support import freePort

ME = "test.example"
NO_LISTENERS = ["--smtp", "none", "--qmtp", "none", "--pop3", "none"]
REFUSED = "Sorry,_I_wasn't_able_to_establish_an_SMTP_connection._(#4.4.1)/"
REASON = "Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"

pytestmark = pytest.mark.skipif(not PostfixSmtpSink.available(),
                                reason="smtp-sink missing (Debian package postfix)")


def cli(home: Home, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qmtwist.cli", "--home", home.path, *args],
                          input=stdin, capture_output=True, check=False, timeout=60)


def inject(home: Home, rcpt: str, subject: str) -> None:
    r = cli(home, "inject", "-f", f"joe@{ME}", rcpt,
            stdin=f"Subject: {subject}\n\nhello\n".encode())
    assert r.returncode == 0, r.stderr


def newMessages(d: Daemon) -> list[int]:
    return [int(x.split()[-1]) for x in d.lines() if re.fullmatch(r"new msg \d+", x)]


def queueJson(home: Home) -> dict[int, dict]:
    r = cli(home, "ctl", "queue", "--json")
    assert (r.returncode, r.stderr) == (0, b"")
    rows = [json.loads(line) for line in r.stdout.decode().splitlines()]
    return {row["id"]: row for row in rows}


def started(d: Daemon, n: int) -> list[str]:
    return [x for x in d.lines() if re.fullmatch(rf"starting delivery \d+: msg {n} to .*", x)]


def daemonFor(tmp_path, home: Home, *extra: str) -> Daemon:
    log = str(tmp_path / "twistd.log")
    return Daemon(str(tmp_path), ["--home", home.path, *NO_LISTENERS, *extra], log,
                  twistd=TWISTD + [f"--logfile={log}"])


@pytest.fixture
def deferring(tmp_path):
    """A home whose remote.example mail goes to a free port on 127.0.0.1 (refused for now)."""
    home = Home(str(tmp_path / "home"))
    setup(home, me=ME)
    assert userCommand(home, ["add", "joe"]) == 0
    port = freePort()
    with open(os.path.join(home.control, "smtproutes"), "w") as f:
        f.write(f"remote.example:127.0.0.1:{port}\n")
    sink = PostfixSmtpSink()
    yield home, port, sink
    sink.stop()


def test_hold_release_retry_delete_and_why_on_a_running_daemon(tmp_path, deferring):
    home, port, sink = deferring
    d = daemonFor(tmp_path, home)
    d.start()
    try:
        d.waitLine("status: local 0/10 remote 0/20")
        for subject in ("held", "delivered", "deleted"):
            inject(home, f"{subject}@remote.example", subject)
            d.waitFor(lambda: len(newMessages(d)) == ["held", "delivered", "deleted"].index(
                subject) + 1, f"message {subject}")
        held, delivered, deleted = newMessages(d)
        for n in (held, delivered, deleted):
            d.waitLine(f": msg {n}: deferral: {REFUSED}")

        # ctl queue --json: every deferred message with its reason and next attempt
        rows = d.waitFor(lambda: (lambda q: q if all(
            r["recipients"][0]["next_attempt"] for r in q.values()) else None)(queueJson(home)),
            "every next attempt known")
        assert sorted(rows) == sorted([held, delivered, deleted])
        for n, subject in ((held, "held"), (delivered, "delivered"), (deleted, "deleted")):
            row = rows[n]
            assert (row["sender"], row["held"]) == (f"joe@{ME}", False)
            assert row["size"] == os.stat(home.queue.mess(n)).st_size
            assert row["arrival_time"] == os.stat(home.queue.info(n)).st_mtime
            [r] = row["recipients"]
            assert (r["address"], r["channel"], r["delay_reason"]) == (
                f"{subject}@remote.example", "remote", REASON)
            assert r["next_attempt"] > row["arrival_time"]

        # hold one, delete one (no bounce), an unknown ID exits 1
        r = cli(home, "ctl", "hold", str(held))
        assert (r.returncode, r.stderr) == (0, b"")
        assert queueJson(home)[held]["held"] is True
        r = cli(home, "ctl", "delete", str(deleted))
        assert (r.returncode, r.stderr) == (0, b"")
        assert deleted not in queueJson(home)
        for path in (home.queue.mess(deleted), home.queue.info(deleted),
                     home.queue.remote(deleted)):
            assert not os.path.exists(path)
        r = cli(home, "ctl", "release", "999999999")
        assert (r.returncode, r.stderr) == (1, b"qmtwist ctl: msg 999999999: not in the queue\n")
        r = cli(home, "ctl", "retry", str(held))
        assert (r.returncode, r.stderr) == (
            1, f"qmtwist ctl: msg {held}: held; release it first\n".encode())

        # the sink accepts now; ALRM delivers the one not held
        sink.start(port)
        assert cli(home, "ctl", "alrm").returncode == 0
        d.waitLine(f": msg {delivered}: success: 127.0.0.1_accepted_message./")
        d.waitLine(f"end msg {delivered}")
        assert len(started(d, held)) == 1  # only the first attempt, before the hold

        # a restart keeps the hold, ALRM again; a new message is delivered, the held one not
        assert d.stop() == 0
        d.start()
        d.waitLine("status: local 0/10 remote 0/20")
        assert cli(home, "ctl", "alrm").returncode == 0
        inject(home, "after@remote.example", "after restart")
        d.waitFor(lambda: len(newMessages(d)) == 1, "the message after the restart")
        [after] = newMessages(d)
        d.waitLine(f"end msg {after}")
        assert started(d, held) == []
        row = queueJson(home)[held]
        assert row["held"] is True
        assert row["recipients"][0]["delay_reason"] == REASON  # from why/, before the restart

        # release: back on its own schedule (ALRM did not touch it), then retry: delivered
        assert cli(home, "ctl", "release", str(held)).returncode == 0
        row = queueJson(home)[held]
        assert row["held"] is False
        assert row["recipients"][0]["next_attempt"] > time.time()
        assert cli(home, "ctl", "retry", str(held)).returncode == 0
        d.waitLine(f": msg {held}: success: 127.0.0.1_accepted_message./")
        d.waitLine(f"end msg {held}")
        assert queueJson(home) == {}
    finally:
        assert d.stop() == 0

    # no bounce anywhere: not for the deleted message, not for the others
    allLines = d.lines(all_=True)
    assert not [x for x in allLines if x.startswith("bounce msg")]
    maildir = os.path.join(home.homes, "joe", "Maildir")
    assert all(os.listdir(os.path.join(maildir, s)) == [] for s in ("new", "cur"))
    assert f"delete msg {deleted}: removed by qmtwist ctl, no bounce" in allLines

    # Twisted's per-port and per-factory lines are gone
    assert not [x for x in allLines if " starting on " in x or "Starting factory" in x
                or "Stopping factory" in x or re.search(r"\(\w+ Port .* Closed\)", x)]

    # ctl why: the story of the held message, found through run/logfile
    with open(os.path.join(home.run, "logfile")) as f:
        assert f.read() == str(tmp_path / "twistd.log") + "\n"
    r = cli(home, "ctl", "why", str(held))
    assert r.returncode == 0, r.stderr
    story = [line.split("] ", 1)[1] for line in r.stdout.decode().splitlines()]
    assert story[0] == f"new msg {held}"
    assert story[1].startswith(f"info msg {held}: bytes ")
    assert re.fullmatch(rf"starting delivery \d+: msg {held} to remote held@remote.example",
                        story[2])
    assert re.fullmatch(rf"delivery \d+: msg {held}: deferral: " + re.escape(REFUSED), story[3])
    assert f"hold msg {held}" in story and f"release msg {held}" in story
    assert story[-1] == f"end msg {held}"
    r = cli(home, "ctl", "why", "999999999")
    assert (r.returncode, r.stderr) == (1, b"qmtwist ctl: why: no log line about msg 999999999\n")


def test_json_log_lines(tmp_path, deferring):
    home, _port, _sink = deferring
    d = daemonFor(tmp_path, home, "--log-format", "json")
    d.start()
    try:
        inject(home, "x@remote.example", "json")
        d.waitFor(lambda: any(REFUSED in line for line in d.lines()), "the deferral")
    finally:
        assert d.stop() == 0
    with open(d.logPath) as f:
        events = [json.loads(line) for line in f]  # every line is one JSON object
    texts = [e["text"] for e in events]
    [n] = [int(t.split()[-1]) for t in texts if re.fullmatch(r"new msg \d+", t)]
    [deferral] = [e for e in events if REFUSED in e["text"]]
    assert deferral["log_namespace"] == "qmail-send"
    assert re.fullmatch(rf"delivery 1: msg {n}: deferral: " + re.escape(REFUSED),
                        deferral["text"])
    assert (deferral["id"], deferral["outcome"]) == (n, "deferral")
    assert not [t for t in texts if " starting on " in t or "Starting factory" in t]
    r = cli(home, "ctl", "why", str(n))
    assert r.returncode == 0, r.stderr
    assert [x.split("] ", 1)[1] for x in r.stdout.decode().splitlines()][0] == f"new msg {n}"


# -- mailq for an unprivileged account -------------------------------------------------------

from tests.integration.tools.conftest import ROOT  # noqa: E402
from tests.integration.tools.test_unprivileged import PYTHON, USER, world  # noqa: E402,F401


def queueGroup() -> int:
    """The gid of group qmtwistq, made with groupadd when missing (as useradd makes accounts)."""
    try:
        return grp.getgrnam("qmtwistq").gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", "qmtwistq"], check=True)
        return grp.getgrnam("qmtwistq").gr_gid


def asUser(pw, groups: list[int], deps: str, *argv: str) -> subprocess.CompletedProcess[bytes]:
    ids = ["--groups=" + ",".join(map(str, groups))] if groups else ["--clear-groups"]
    return subprocess.run(
        ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", *ids, PYTHON, *argv],
        capture_output=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{deps}",
                                  "USER": USER}, timeout=60)


def test_mailq_for_a_user_in_group_qmtwistq_through_the_socket(world):  # noqa: F811
    home, pw, deps = world
    gid = queueGroup()
    top = os.path.dirname(home.path)
    with open(os.path.join(home.control, "smtproutes"), "w") as f:
        f.write(f"remote.example:127.0.0.1:{freePort()}\n")
    d = Daemon(top, ["--home", home.path, *NO_LISTENERS], os.path.join(top, "twistd.log"))
    d.start()
    try:
        d.waitLine("status: local 0/10 remote 0/20")
        inject(home, "far@remote.example", "stuck")
        d.waitLine(f"deferral: {REFUSED}")
        [n] = newMessages(d)
        sock = os.stat(os.path.join(home.run, "qmtwist-ctl.sock"))
        assert (sock.st_mode & 0o777, sock.st_gid) == (0o660, gid)

        mailq = os.path.join(home.bin, "mailq")
        r = asUser(pw, [gid], deps, mailq)
        assert (r.returncode, r.stderr) == (0, b"")
        lines = r.stdout.decode().splitlines()
        assert re.fullmatch(rf".* GMT  #{n}  \d+  <joe@{ME}> ", lines[0])
        assert lines[1:3] == ["\tremote\tfar@remote.example",
                              "\t\tlast deferral: " + REASON.rstrip("\n")]
        assert re.fullmatch(r"\t\tnext attempt: \d+ \w+ \d{4} \d\d:\d\d:\d\d GMT", lines[3])

        # outside the group: neither the queue nor the socket
        r = asUser(pw, [], deps, mailq)
        assert r.returncode == 111
        assert b"Permission denied" in r.stderr and b"permission denied" in r.stderr
        # in the group, but changes are for root and the daemon's user
        r = asUser(pw, [gid], deps, "-m", "qmtwist.cli", "--home", home.path, "ctl", "hold",
                   str(n))
        assert (r.returncode, r.stderr) == (1, b"qmtwist ctl: hold: permission denied (root or "
                                               b"the daemon's user only)\n")
        assert queueJson(home)[n]["held"] is False
    finally:
        assert d.stop() == 0
