"""LocalAgent pieces that need no processes: interfaces, address split, records, exit codes."""

from __future__ import annotations

import os

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from qmtwist.context import Context, ControlCache
from qmtwist.delivery import Outcome
from qmtwist.interfaces import IDeliveryAgent, IUserDatabase
from qmtwist.local import agent as agentmod
from qmtwist.local.deliver import Job, JobResult, headerHasLine
from qmtwist.local.program import CRASHED, ProgramResult, classify
from qmtwist.users import User, UserDatabase, UserTable


def test_interfaces(home):
    ctx = Context(home, Clock(), None, ControlCache(home), lambda f: None)
    a = agentmod.LocalAgent(ctx, root=False)
    assert verifyObject(IDeliveryAgent, a) and a.channel == "local"
    db = UserDatabase(UserTable(home, root=False))
    assert verifyObject(IUserDatabase, db)
    got = []
    db.lookup(b"alias-x").addCallback(got.append)
    assert got == [User(b"alias", os.getuid(), os.getgid(), home.alias, b"-", b"x", True)]


@pytest.mark.parametrize("rcpt,split", [
    (b"bob-info@nowhere.mil", (b"bob-info", b"nowhere.mil")),
    (b"joe@x.com@fixme", (b"joe@x.com", b"fixme")),
    (b"@h", (b"", b"h")),
    (b"bare", (b"bare", b"")),
])
def test_splitAddress(rcpt, split):
    assert agentmod.splitAddress(rcpt) == split


def test_othersMayEnter(tmp_path):
    d = tmp_path / "private"
    d.mkdir(mode=0o700)
    f = d / "python"
    f.write_bytes(b"")
    os.chmod(tmp_path, 0o755)
    assert not agentmod._othersMayEnter(str(f))
    os.chmod(d, 0o755)
    os.chmod(f, 0o644)
    assert agentmod._othersMayEnter(str(f)) == all(
        os.stat(p).st_mode & 0o001 for p in [str(tmp_path)] + [
            os.sep.join(str(tmp_path).split(os.sep)[:i]) or "/"
            for i in range(2, len(str(tmp_path).split(os.sep)))])


def test_jsonRoundTrips():
    job = Job(b"u\xff", "/h", b"-", b"e\nx", b"l\0", b"h", b"", "/m", "1.2Q3", True,
              b"./Maildir/\n", "/bin", 12.5)
    assert Job.fromJSON(job.toJSON()) == job
    r = JobResult(Outcome.SUCCESS, b"out\xfe", 1, 2, (b"a@b", b"c@d"), b"ns", b"DT\n", 0)
    assert JobResult.fromJSON(r.toJSON()) == r


@pytest.mark.parametrize("code,result", [
    (0, ProgramResult(Outcome.SUCCESS, False, b"o")),
    (99, ProgramResult(Outcome.SUCCESS, True, b"o")),
    (100, ProgramResult(Outcome.FAILURE, True, b"o")),
    (64, ProgramResult(Outcome.FAILURE, True, b"o")),
    (112, ProgramResult(Outcome.FAILURE, True, b"o")),
    (111, ProgramResult(Outcome.DEFERRAL, True, b"o")),
    (1, ProgramResult(Outcome.DEFERRAL, True, b"o")),
    (None, ProgramResult(Outcome.DEFERRAL, True, b"o" + CRASHED)),
])
def test_classify(code, result):
    assert classify(code, b"o") == result


def test_headerHasLine():
    dt = b"Delivered-To: a@b\n"
    assert headerHasLine(b"X: 1\nDelivered-To: a@b\n\nbody\n", dt)
    assert not headerHasLine(b"X: 1\n\nDelivered-To: a@b\n", dt)
    assert not headerHasLine(b"Delivered-To: a@bc\n\n", dt)
