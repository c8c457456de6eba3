"""mbox quoting, appending and locking (docs/behaviour/local.md 4.7)."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading

import pytest

from qmtwist.errors import TemporaryFailure
from qmtwist.local import mbox

PREFIX = (b"From s@x Thu Jan 01 00:00:00 1970\n", b"Return-Path: <s@x>\n",
          b"Delivered-To: u@h\n")


def test_quote():
    assert mbox.quote(b"a\nFrom x\n>From y\n>>From z\nFromage\n From\n") == (
        b"a\n>From x\n>>From y\n>>>From z\nFromage\n From\n\n")
    assert mbox.quote(b"no final newline") == b"no final newline\n\n"


def test_deliverAppendsMode0600(tmp_path):
    p = tmp_path / "mbox"
    mbox.deliver(str(p), PREFIX, b"Subject: a\n\nFrom here\n")
    mbox.deliver(str(p), PREFIX, b"Subject: b\n\nbody")
    assert p.read_bytes() == (
        b"".join(PREFIX) + b"Subject: a\n\n>From here\n\n" + b"".join(PREFIX)
        + b"Subject: b\n\nbody\n\n")
    assert os.stat(p).st_mode & 0o777 == 0o600


def test_openFailure(tmp_path):
    with pytest.raises(TemporaryFailure) as e:
        mbox.deliver(str(tmp_path / "nodir" / "mbox"), PREFIX, b"x\n")
    assert e.value.text == (
        f"Unable to open {tmp_path}/nodir/mbox: no such file or directory. (#4.2.1)")


def test_flockHolderBlocksThenTimesOut(tmp_path):
    p = tmp_path / "mbox"
    p.write_bytes(b"")
    with open(p, "ab") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        with pytest.raises(TemporaryFailure) as e:
            mbox.deliver(str(p), PREFIX, b"x\n", timeout=0.2)
    assert e.value.text == "File has been locked for 30 seconds straight. (#4.3.0)"
    assert p.read_bytes() == b""


HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
os.write(fd, b"HOLDER LINE 1\nHOLDER LINE 2\n")
"""


def test_fcntlHolderExcludesWriter(tmp_path):
    """A second process holding an fcntl lock: our write waits until it is done."""
    p = tmp_path / "mbox"
    p.write_bytes(b"")
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(p)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    assert child.stdout.readline() == b"locked\n"
    errors = []

    def writer():
        try:
            mbox.deliver(str(p), PREFIX, b"mine\n", timeout=20)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    t.join(0.3)
    assert t.is_alive()  # still waiting for the lock
    assert p.read_bytes() == b""
    child.stdin.write(b"go\n")
    child.stdin.close()
    child.wait()
    t.join(20)
    assert not errors
    assert p.read_bytes() == b"HOLDER LINE 1\nHOLDER LINE 2\n" + b"".join(PREFIX) + b"mine\n\n"


def test_fcntlHolderTimesOut(tmp_path):
    p = tmp_path / "mbox"
    p.write_bytes(b"")
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(p)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline() == b"locked\n"
        with pytest.raises(TemporaryFailure):
            mbox.deliver(str(p), PREFIX, b"x\n", timeout=0.2)
    finally:
        child.kill()
        child.wait()
