"""
Daemon memory does not grow with the message size (docs/behaviour/local.md 4.4).

One large message to several local users (Maildir, mbox, a program, a forward) through the
real daemon: its peak resident size (VmHWM, not a time) grows by less than the size of the
message, because local delivery streams from the queue file (as root, the helper gets the file
as a descriptor) and never holds a message whole. Before, each delivery held the message (as
root twice more, in base64 and JSON): 100 MB to 10 users took the daemon to 3.4 GB.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.integration.daemon import Daemon, waitFor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SIZE = 48 * 1024 * 1024
USERS = 5


def peakRSS(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def qmtwist(home, *args: str, stdin: bytes | None = None) -> None:
    r = subprocess.run([sys.executable, "-m", "qmtwist.cli", "--home", home.path, *args],
                       input=stdin, capture_output=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_largeMessageToManyUsersKeepsDaemonSmall(home, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", REPO)
    names = [f"big{i}" for i in range(USERS)]
    for n in names:
        qmtwist(home, "user", "add", n)
    # one of them also gets an mbox, a program and a forward to another of them
    with open(os.path.join(home.homes, "big0", ".qmail"), "wb") as f:
        f.write(b"./Maildir/\n./Mailbox\n|wc -c > ./count\n&big1@test.example\n")
    if os.getuid() == 0:
        st = os.stat(os.path.join(home.homes, "big0"))
        os.chown(os.path.join(home.homes, "big0", ".qmail"), st.st_uid, st.st_gid)
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", "none", "--qmtp", "none",
                               "--pop3", "none"], str(tmp_path / "log"))
    d.start()
    try:
        d.waitLine("status: local 0/10 remote 0/20")
        before = peakRSS(d.proc.pid)
        line = b"x" * 999 + b"\n"
        body = b"Subject: big\n\n" + line * (SIZE // len(line))
        qmtwist(home, "inject", "-f", "alice@test.example",
                *[f"{n}@test.example" for n in names], stdin=body)
        del body

        def delivered() -> bool:
            counts = [len(os.listdir(os.path.join(home.homes, n, "Maildir", "new"))) for n in names]
            return counts == [1, 2] + [1] * (USERS - 2)

        waitFor(delivered, "every copy in its Maildir", deadline=240)
        d.waitLine("end msg", deadline=120)
        after = peakRSS(d.proc.pid)
        with open(os.path.join(home.homes, "big0", "count"), "rb") as f:
            assert int(f.read()) > SIZE - len(line)  # the program read the whole message on its stdin
        assert os.path.getsize(os.path.join(home.homes, "big0", "Mailbox")) > SIZE - len(line)
    finally:
        assert d.stop() == 0
    growth = after - before
    print(f"daemon peak RSS {before >> 20} MB -> {after >> 20} MB for {USERS} users x {SIZE >> 20} MB")
    assert growth < SIZE, f"daemon peak RSS grew {growth >> 20} MB for a {SIZE >> 20} MB message"
