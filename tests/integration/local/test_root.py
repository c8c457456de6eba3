"""
LocalAgent as root: per-uid helper children, file ownership, the uid programs see, never uid 0.
CI runs as root; elsewhere these tests skip.
"""

from __future__ import annotations

import os
import pwd

import pytest
import pytest_twisted

from qmtwist.delivery import Outcome, Report
from qmtwist.home import virtualAccount
from tests.integration.local.helpers import SENDER, World, deliverOne, maildirFiles

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="needs root (CI runs as root)")

IDS = (b"./Maildir/\n"
       b"|{ id -u; id -g; awk '/^Uid/{print $2}' /proc/$PPID/status; id -G; } > ./ids.$$; "
       b"mv ./ids.$$ ./ids\n")


@pytest.fixture
def world():
    w = World.make()
    yield w
    w.cleanup()


def _accounts() -> list[tuple[int, int]]:
    first = virtualAccount()
    nobody = pwd.getpwnam("nobody")
    return [first, (nobody.pw_uid, nobody.pw_gid)]


@pytest_twisted.ensureDeferred
async def test_twoUsersTwoUids(world):
    (u1, g1), (u2, g2) = _accounts()
    assert u1 != u2 and 0 not in (u1, u2)
    h1 = world.userHome("one", u1, g1)
    h2 = world.userHome("two", u2, g2)
    world.dotqmail(h1, ".qmail", IDS)
    world.dotqmail(h2, ".qmail", IDS)
    agent = world.agent(root=True)
    try:
        ds = agent.deliver([world.request(b"one@test.example", position=0),
                            world.request(b"two@test.example", position=1),
                            world.request(b"one@test.example", position=2)])
        for d in ds:
            assert await d == Report(Outcome.SUCCESS, b"did 1+0+1\n")
        assert sorted(agent.helpers) == sorted([(u1, g1), (u2, g2)])
        for h, uid, gid in ((h1, u1, g1), (h2, u2, g2)):
            with open(os.path.join(h, "ids"), "rb") as f:
                # the program's uid and gid, the uid of the helper that started it, and its
                # groups: only the assignment's gid, as qmail's prot_gid sets them
                assert f.read() == b"%d\n%d\n%d\n%d\n" % (uid, gid, uid, gid)
            new = os.path.join(h, "Maildir", "new")
            for n in os.listdir(new):
                st = os.stat(os.path.join(new, n))
                assert (st.st_uid, st.st_gid) == (uid, gid)
                assert st.st_mode & 0o777 == 0o600
        assert len(maildirFiles(os.path.join(h1, "Maildir"))) == 2
        assert len(maildirFiles(os.path.join(h2, "Maildir"))) == 1
    finally:
        await agent.stop()
    assert agent.helpers == {}


@pytest_twisted.ensureDeferred
async def test_neverUid0(world):
    with open(os.path.join(world.home.users, "assign"), "ab") as f:
        f.write(b"=toor:toor:0:0:%s:::\n" % os.fsencode(world.base))
    agent = world.agent(root=True)
    r = await deliverOne(agent, world.request(b"toor@test.example"))
    assert r == Report(Outcome.DEFERRAL, b"Not allowed to perform deliveries as root.\n")
    assert agent.helpers == {}
    await agent.stop()


@pytest_twisted.ensureDeferred
async def test_aliasForwardAndExactlyOnceAsRoot(world):
    uid = os.stat(world.home.alias).st_uid
    assert uid != 0
    world.dotqmail(world.home.alias, ".qmail-movie-bob",
                   b"bob@bobshost.movie.edu\n|id -u >> ./movie.ids\n")
    agent = world.agent(root=True)
    try:
        r = await deliverOne(agent, world.request(b"alias-movie-bob@movie.edu"))
        [(env, data)] = world.todo()
        assert r == Report(Outcome.SUCCESS, b"did 0+1+1\nqp %d\n" % env.qp)
        assert env.recipients == (b"bob@bobshost.movie.edu",) and env.sender == SENDER
        assert data.startswith(b"Received: (qmail %d invoked by alias); " % env.qp)
        with open(os.path.join(world.home.alias, "movie.ids"), "rb") as f:
            assert f.read() == b"%d\n" % uid
        mess = world.mess()
        for repeat in (False, True):
            r = await deliverOne(agent, world.request(b"postmaster@test.example", mess,
                                                      repeat=repeat))
            assert r == Report(Outcome.SUCCESS, b"did 1+0+0\n")
        assert len(maildirFiles(os.path.join(world.home.alias, "Maildir"))) == 1
        # HUP: helpers are retired and new ones started on demand
        old = agent.helpers[(uid, os.stat(world.home.alias).st_gid)]
        agent.reload()
        await old.ended
        r = await deliverOne(agent, world.request(b"alias-movie-bob@movie.edu"))
        assert r.outcome is Outcome.SUCCESS
        assert agent.helpers[(uid, os.stat(world.home.alias).st_gid)] is not old
    finally:
        await agent.stop()


@pytest_twisted.ensureDeferred
async def test_hostileLocalPartAsRoot(world):
    marker = os.path.join(world.base, "pwned")
    world.dotqmail(world.home.alias, ".qmail-default", b'|printf "[%s]" "$EXT" >> ./seen\n')
    agent = world.agent(root=True)
    try:
        for ext in (b"../x", b"$(touch " + os.fsencode(marker) + b")", b"y" * 1000):
            r = await deliverOne(agent, world.request(ext + b"@test.example"))
            assert r == Report(Outcome.SUCCESS, b"did 0+0+1\n")
    finally:
        await agent.stop()
    assert not os.path.exists(marker)
    with open(os.path.join(world.home.alias, "seen"), "rb") as f:
        assert f.read().startswith(b"[../x][$(touch ")


@pytest_twisted.ensureDeferred
async def test_bigMessageThroughHelper(world):
    """A 3 MB message crosses the pipe to the helper and reaches Maildir and a program intact."""
    uid, gid = virtualAccount()
    h = world.userHome("big", uid, gid)
    world.dotqmail(h, ".qmail", b"./Maildir/\n|cat > ./copy\n")
    body = b"".join(b"line %07d of a big message\n" % i for i in range(110000))
    mess = world.mess(b"Subject: big\n\n" + body)
    agent = world.agent(root=True)
    try:
        r = await deliverOne(agent, world.request(b"big@test.example", mess))
    finally:
        await agent.stop()
    assert r == Report(Outcome.SUCCESS, b"did 1+0+1\n")
    with open(mess, "rb") as f:
        queued = f.read()
    [stored] = maildirFiles(os.path.join(h, "Maildir"))
    assert stored == (b"Return-Path: <sender@remote.example>\nDelivered-To: big@test.example\n"
                      + queued)
    with open(os.path.join(h, "copy"), "rb") as f:
        assert f.read() == queued
