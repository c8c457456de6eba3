"""
LocalAgent with real files, real programs and a real injector on the running reactor
(daemon not root: everything in-process as the current uid). FAQ 3.2, 3.3, 4.1, 4.2, 4.4-4.6,
7.4, exit codes, ordering, loops, hostile local parts, mbox locks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import pytest_twisted

from qmtwist.delivery import Outcome, Report
from tests.integration.local.helpers import (
    MESSAGE, SENDER, World, deliverOne, maildirFiles, withoutReceived)

RECEIVED = b"Received: (qmail 1 invoked from network); 1 Jan 2026 00:00:00 -0000\n"


@pytest.fixture
def world():
    w = World.make()
    yield w
    w.cleanup()


def _mboxFrom(data: bytes) -> bytes:
    first, rest = data.split(b"\n", 1)
    assert re.fullmatch(rb"From \S+ \w{3} \w{3} \d\d \d\d:\d\d:\d\d \d{4}", first), first
    return rest


@pytest_twisted.ensureDeferred
async def test_defaultDeliveryMaildir(world):
    """A basic user without .qmail gets control/defaultdelivery (./Maildir/)."""
    h = world.userHome("ann")
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"ann@test.example"))
    assert r == Report(Outcome.SUCCESS, b"did 1+0+0\n")
    assert maildirFiles(os.path.join(h, "Maildir")) == [
        b"Return-Path: <sender@remote.example>\nDelivered-To: ann@test.example\n"
        + RECEIVED + MESSAGE]
    await agent.stop()


@pytest_twisted.ensureDeferred
async def test_trashAddress(world):
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"@test.example"))
    assert r == Report(Outcome.SUCCESS, b"did 0+0+0\n")
    assert os.listdir(os.path.join(world.home.alias, "Maildir", "new")) == []


@pytest_twisted.ensureDeferred
async def test_faq32VirtualDomain(world):
    """nowhere.mil:bob -> bob-info@nowhere.mil uses ~bob/.qmail-info, others .qmail-default."""
    h = world.userHome("bob")
    world.dotqmail(h, ".qmail-info", b"./info.mbox\n")
    world.dotqmail(h, ".qmail-default", b"./Maildir/\n")
    agent = world.agent()
    r1 = await deliverOne(agent, world.request(b"bob-info@nowhere.mil"))
    r2 = await deliverOne(agent, world.request(b"bob-root@nowhere.mil"))
    assert r1 == r2 == Report(Outcome.SUCCESS, b"did 1+0+0\n")
    with open(os.path.join(h, "info.mbox"), "rb") as f:
        assert _mboxFrom(f.read()) == (
            b"Return-Path: <sender@remote.example>\nDelivered-To: bob-info@nowhere.mil\n"
            + RECEIVED + b"Subject: test\nTo: someone\n\n>From the body\nline two\n\n")
    assert maildirFiles(os.path.join(h, "Maildir")) == [
        b"Return-Path: <sender@remote.example>\nDelivered-To: bob-root@nowhere.mil\n"
        + RECEIVED + MESSAGE]


@pytest_twisted.ensureDeferred
async def test_faq33TwoDomainsOneUser(world):
    h = world.userHome("bob")
    prog = b'|echo "$EXT|$EXT2|$DEFAULT|$HOST|$HOST2" >> ./%s\n'
    world.dotqmail(h, ".qmail-nowhere-default", prog % b"nowhere.log")
    world.dotqmail(h, ".qmail-everywhere-default", prog % b"everywhere.log")
    agent = world.agent()
    for rcpt in (b"bob-nowhere-Joe.X@nowhere.mil", b"bob-everywhere-sue@everywhere.org"):
        r = await deliverOne(agent, world.request(rcpt))
        assert r == Report(Outcome.SUCCESS, b"did 0+0+1\n")
    with open(os.path.join(h, "nowhere.log"), "rb") as f:
        assert f.read() == b"nowhere-Joe.X|Joe.X|Joe.X|nowhere.mil|nowhere\n"
    with open(os.path.join(h, "everywhere.log"), "rb") as f:
        assert f.read() == b"everywhere-sue|sue|sue|everywhere.org|everywhere\n"
    assert os.stat(os.path.join(h, "nowhere.log")).st_mode & 0o777 == 0o600  # umask 077


@pytest_twisted.ensureDeferred
async def test_programEnvironment(world):
    """docs/behaviour/local.md 4.5's example: alias-uucp-joe-x@far.org through ~alias/.qmail-uucp-default."""
    world.dotqmail(world.home.alias, ".qmail-uucp-default",
                   b"|env > ./env.out; pwd >> ./env.out\n")
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"alias-uucp-joe-x@far.org"))
    assert r == Report(Outcome.SUCCESS, b"did 0+0+1\n")
    with open(os.path.join(world.home.alias, "env.out"), "rb") as f:
        lines = f.read().split(b"\n")
    env = dict(x.split(b"=", 1) for x in lines if b"=" in x)
    assert lines[-2] == os.fsencode(world.home.alias)
    expect = {b"LOCAL": b"alias-uucp-joe-x", b"EXT": b"uucp-joe-x", b"EXT2": b"joe-x",
              b"EXT3": b"x", b"EXT4": b"", b"DEFAULT": b"joe-x", b"HOST": b"far.org",
              b"HOST2": b"far", b"HOST3": b"far", b"HOST4": b"far", b"USER": b"alias",
              b"HOME": os.fsencode(world.home.alias), b"SENDER": SENDER,
              b"NEWSENDER": SENDER, b"RECIPIENT": b"alias-uucp-joe-x@far.org",
              b"DTLINE": b"Delivered-To: alias-uucp-joe-x@far.org"}
    for k, v in expect.items():
        assert env[k] == v, k
    assert env[b"PATH"].startswith(os.fsencode(world.home.bin) + b":")


@pytest_twisted.ensureDeferred
async def test_faq41ForwardProgram(world):
    """| forward "$LOCAL"@bigbang.af.mil in ~alias/.qmail-default queues a copy."""
    if not os.path.exists(os.path.join(world.home.bin, "forward")):
        pytest.skip("qmtwist.tools.forward not installed")
    world.dotqmail(world.home.alias, ".qmail-default", b'| forward "$LOCAL"@bigbang.af.mil\n')
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"Joe@test.example"))
    assert r.outcome is Outcome.SUCCESS, r
    assert r.text.endswith(b"did 0+0+1\n")
    [(env, data)] = world.todo()
    assert env.sender == SENDER and env.recipients == (b"Joe@bigbang.af.mil",)
    assert withoutReceived(data) == b"Delivered-To: Joe@test.example\n" + RECEIVED + MESSAGE


@pytest_twisted.ensureDeferred
async def test_faq42ListWithOwner(world):
    h = world.userHome("me")
    world.dotqmail(h, ".qmail-sos", b"a@x.example\n&b@y.example\n")
    world.dotqmail(h, ".qmail-sos-owner", b"./owner.mbox\n")
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"me-sos@test.example"))
    [(env, data)] = world.todo()
    assert r == Report(Outcome.SUCCESS, b"did 0+2+0\nqp %d\n" % env.qp)
    assert env.sender == b"me-sos-owner@test.example"
    assert env.recipients == (b"a@x.example", b"b@y.example")
    assert env.uid == os.getuid()
    first, rest = data.split(b"\n", 1)
    assert first.startswith(b"Received: (qmail %d invoked by uid %d); " % (env.qp, os.getuid()))
    assert rest == b"Delivered-To: me-sos@test.example\n" + RECEIVED + MESSAGE
    # a bounce of a list copy goes to me-sos-owner, which .qmail-sos-owner delivers
    r = await deliverOne(agent, world.request(b"me-sos-owner@test.example", sender=b""))
    assert r == Report(Outcome.SUCCESS, b"did 1+0+0\n")
    with open(os.path.join(h, "owner.mbox"), "rb") as f:
        assert _mboxFrom(f.read()).startswith(
            b"Return-Path: <>\nDelivered-To: me-sos-owner@test.example\n")
    # with -owner-default too: VERP sender
    world.dotqmail(h, ".qmail-sos-owner-default", b"./owner.mbox\n")
    await deliverOne(agent, world.request(b"me-sos@test.example"))
    assert sorted(e.sender for e, _ in world.todo()) == [
        b"me-sos-owner-@test.example-@[]", b"me-sos-owner@test.example"]


@pytest_twisted.ensureDeferred
async def test_faq44PrelineProcmail(world):
    procmail = shutil.which("procmail")
    if procmail is None:
        pytest.skip("Debian package procmail is not installed")
    if not os.path.exists(os.path.join(world.home.bin, "preline")):
        pytest.skip("qmtwist.tools.preline not installed")
    h = world.userHome("pm")
    # FAQ 4.4's line; procmail's SYSTEM_MBOX is given as DEFAULT instead of patching config.h
    world.dotqmail(h, ".qmail", b'| preline procmail DEFAULT="$HOME/procmail.mbox"\n')
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"pm@test.example"))
    assert r == Report(Outcome.SUCCESS, b"did 0+0+1\n")
    with open(os.path.join(h, "procmail.mbox"), "rb") as f:
        data = f.read()
    assert data.startswith(b"From sender@remote.example ")
    assert _mboxFrom(data) == (
        b"Return-Path: <sender@remote.example>\nDelivered-To: pm@test.example\n" + RECEIVED
        + b"Subject: test\nTo: someone\n\n>From the body\nline two\n\n")


@pytest_twisted.ensureDeferred
async def test_faq45PrelineFilter(world):
    if not os.path.exists(os.path.join(world.home.bin, "preline")):
        pytest.skip("qmtwist.tools.preline not installed")
    h = world.userHome("el")
    script = os.path.join(h, "filter")
    with open(script, "w") as f:
        f.write("#!/bin/sh\ncat > \"$HOME/filtered\"\necho filtered ok\n")
    os.chmod(script, 0o755)
    world.dotqmail(h, ".qmail", b"| preline ./filter\n")
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"el@test.example"))
    assert r == Report(Outcome.SUCCESS, b"filtered ok\ndid 0+0+1\n")
    with open(os.path.join(h, "filtered"), "rb") as f:
        assert _mboxFrom(f.read()) == (
            b"Return-Path: <sender@remote.example>\nDelivered-To: el@test.example\n" + RECEIVED
            + MESSAGE)


@pytest_twisted.ensureDeferred
async def test_faq46DotsAndCase(world):
    world.dotqmail(world.home.alias, ".qmail-p:d:q:bach", b"./bach.mbox\n")
    world.dotqmail(world.home.alias, ".qmail-P.D.Q.Bach", b"./wrong.mbox\n")
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"P.D.Q.Bach@test.example"))
    assert r == Report(Outcome.SUCCESS, b"did 1+0+0\n")
    assert os.path.exists(os.path.join(world.home.alias, "bach.mbox"))
    r = await deliverOne(agent, world.request(b"p.d.q.BACH@test.example"))
    assert r == Report(Outcome.SUCCESS, b"did 1+0+0\n")
    with open(os.path.join(world.home.alias, "bach.mbox"), "rb") as f:
        assert f.read().count(b"\nDelivered-To: ") == 2
    assert not os.path.exists(os.path.join(world.home.alias, "wrong.mbox"))


@pytest_twisted.ensureDeferred
async def test_faq74MovieAlias(world):
    """movie.edu:alias-movie; ~alias/.qmail-movie-bob forwards to bob's workstation."""
    world.dotqmail(world.home.alias, ".qmail-movie-bob", b"bob@bobshost.movie.edu\n")
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"alias-movie-bob@movie.edu"))
    [(env, data)] = world.todo()
    assert r == Report(Outcome.SUCCESS, b"did 0+1+0\nqp %d\n" % env.qp)
    assert env.recipients == (b"bob@bobshost.movie.edu",) and env.sender == SENDER
    assert data.startswith(b"Received: (qmail %d invoked by alias); " % env.qp)
    assert withoutReceived(data) == (
        b"Delivered-To: alias-movie-bob@movie.edu\n" + RECEIVED + MESSAGE)
    r = await deliverOne(agent, world.request(b"alias-movie-nobody@movie.edu"))
    assert r == Report(Outcome.FAILURE, b"Sorry, no mailbox here by that name. (#5.1.1)\n")


@pytest_twisted.ensureDeferred
async def test_exitCodes(world):
    h = world.userHome("x")
    world.dotqmail(h, ".qmail-perm", b"|echo no such list; exit 100\n&never@x\n")
    world.dotqmail(h, ".qmail-temp", b"|echo busy >&2; exit 111\n")
    world.dotqmail(h, ".qmail-other", b"|exit 3\n")
    world.dotqmail(h, ".qmail-sixfour", b"|exit 64\n")
    world.dotqmail(h, ".qmail-crash", b"|kill -9 $$\n")
    world.dotqmail(h, ".qmail-stop", b"&early@x.example\n|exit 99\n./never.mbox\n&late@x\n")
    agent = world.agent()

    async def d(ext: bytes) -> Report:
        return await deliverOne(agent, world.request(b"x-" + ext + b"@test.example"))

    assert await d(b"perm") == Report(Outcome.FAILURE, b"no such list\n")
    assert await d(b"temp") == Report(Outcome.DEFERRAL, b"busy\n")
    assert (await d(b"other")).outcome is Outcome.DEFERRAL
    assert (await d(b"sixfour")).outcome is Outcome.FAILURE
    assert await d(b"crash") == Report(Outcome.DEFERRAL, b"Aack, child crashed. (#4.3.0)\n")
    assert world.todo() == []
    r = await d(b"stop")
    [(env, _)] = world.todo()
    assert r == Report(Outcome.SUCCESS, b"did 0+1+1\nqp %d\n" % env.qp)
    assert env.recipients == (b"early@x.example",)
    assert not os.path.exists(os.path.join(h, "never.mbox"))


@pytest_twisted.ensureDeferred
async def test_firstFailureStopsLaterLinesAndForwards(world):
    h = world.userHome("y")
    world.dotqmail(h, ".qmail", b"./first.mbox\n&fw@x.example\n|exit 111\n./second.mbox\n")
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"y@test.example"))
    assert r.outcome is Outcome.DEFERRAL
    assert os.path.exists(os.path.join(h, "first.mbox"))
    assert not os.path.exists(os.path.join(h, "second.mbox"))
    assert world.todo() == []
    # a retry runs the whole file again
    world.dotqmail(h, ".qmail", b"./first.mbox\n&fw@x.example\n|true\n./second.mbox\n")
    r = await deliverOne(agent, world.request(b"y@test.example", repeat=True))
    assert r.outcome is Outcome.SUCCESS and r.text.startswith(b"did 2+1+1\nqp ")
    with open(os.path.join(h, "first.mbox"), "rb") as f:
        assert f.read().count(b"\nDelivered-To: y@test.example\n") == 2


@pytest_twisted.ensureDeferred
async def test_loopDetected(world):
    h = world.userHome("lp")
    world.dotqmail(h, ".qmail", b"&lp@test.example\n")
    agent = world.agent()
    looping = world.mess(b"Delivered-To: lp@test.example\nSubject: x\n\nbody\n")
    r = await deliverOne(agent, world.request(b"lp@test.example", looping))
    assert r == Report(Outcome.FAILURE,
                       b"This message is looping: it already has my Delivered-To line. (#5.4.6)\n")
    # the same text in the body is no loop; the forwarded copy is, one hop later
    inBody = world.mess(b"Subject: x\n\nDelivered-To: lp@test.example\n")
    r = await deliverOne(agent, world.request(b"lp@test.example", inBody))
    assert r.outcome is Outcome.SUCCESS
    [(env, data)] = world.todo()
    copy = world.mess(withoutReceived(data))
    r = await deliverOne(agent, world.request(b"lp@test.example", copy))
    assert r.outcome is Outcome.FAILURE and b"looping" in r.text


@pytest_twisted.ensureDeferred
async def test_hostileLocalParts(world):
    """Hostile extensions reach only .qmail-default, and only through the environment."""
    marker = os.path.join(world.base, "pwned")
    with open(os.path.join(world.base, ".qmail-x"), "wb") as f:
        f.write(b"|touch %s\n" % os.fsencode(marker))
    world.dotqmail(world.home.alias, ".qmail-default",
                   b'|printf "[%s]" "$EXT" >> ./seen\n')
    agent = world.agent()
    hostile = [b"../.qmail-x", b"../../x", b"a/b", b"a\0b", b"$(touch " + os.fsencode(marker) +
               b")", b"`touch pwned`;touch pwned|&", b"a\nb", b"x" * 1000, b"..", b"-../x"]
    for ext in hostile:
        r = await deliverOne(agent, world.request(ext + b"@test.example"))
        assert r == Report(Outcome.SUCCESS, b"did 0+0+1\n"), ext
    assert not os.path.exists(marker)
    assert not os.path.exists(os.path.join(world.home.alias, "pwned"))
    with open(os.path.join(world.home.alias, "seen"), "rb") as f:
        seen = f.read()
    expect = b"".join(b"[" + e.replace(b"\0", b"_") + b"]" for e in hostile)
    assert seen == expect
    assert sorted(os.listdir(world.base)) == sorted(
        [".qmail-x", "home"] + [f"mess{i}" for i in range(1, len(hostile) + 1)])


HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
if sys.argv[2] == "flock":
    fcntl.flock(fd, fcntl.LOCK_EX)
else:
    fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
for i in range(50):
    os.write(fd, b"holder line %d\n" % i)
"""


@pytest.mark.parametrize("kind", ["flock", "fcntl"])
@pytest_twisted.ensureDeferred
async def test_mboxWaitsForOtherWriter(world, kind):
    h = world.userHome("mb")
    world.dotqmail(h, ".qmail", b"./mbox\n")
    path = os.path.join(h, "mbox")
    open(path, "wb").close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path, kind],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"locked\n"
        agent = world.agent()
        [d] = agent.deliver([world.request(b"mb@test.example")])
        assert not d.called  # cannot finish while the lock is held
        holder.stdin.write(b"go\n")
        holder.stdin.close()
        r = await d
    finally:
        holder.kill()
        holder.wait()
    assert r == Report(Outcome.SUCCESS, b"did 1+0+0\n")
    with open(path, "rb") as f:
        data = f.read()
    theirs = b"".join(b"holder line %d\n" % i for i in range(50))
    assert data.startswith(theirs)
    assert _mboxFrom(data[len(theirs):]).startswith(b"Return-Path: <sender@remote.example>\n")


@pytest_twisted.ensureDeferred
async def test_exactlyOnceMaildir(world):
    h = world.userHome("eo")
    agent = world.agent()
    mess = world.mess()
    r1 = await deliverOne(agent, world.request(b"eo@test.example", mess, repeat=False))
    r2 = await deliverOne(agent, world.request(b"eo@test.example", mess, repeat=True))
    assert r1 == r2 == Report(Outcome.SUCCESS, b"did 1+0+0\n")
    assert len(maildirFiles(os.path.join(h, "Maildir"))) == 1


@pytest_twisted.ensureDeferred
async def test_safetyChecks(world):
    h = world.userHome("sc")
    os.chmod(h, 0o777)
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"sc@test.example"))
    assert r == Report(Outcome.DEFERRAL, b"Uh-oh: home directory is writable. (#4.7.0)\n")
    os.chmod(h, 0o755)
    world.dotqmail(h, ".qmail", b"\n./mbox\n")
    r = await deliverOne(agent, world.request(b"sc@test.example"))
    assert r == Report(Outcome.DEFERRAL, b"Uh-oh: first line of .qmail file is blank. (#4.2.1)\n")
    shutil.rmtree(os.path.join(world.home.alias, "Maildir", "tmp"))
    r = await deliverOne(agent, world.request(b"root@test.example"))
    assert r == Report(Outcome.DEFERRAL, b"Temporary error on maildir delivery. (#4.3.0)\n")


@pytest_twisted.ensureDeferred
async def test_concurrentDeliveries(world):
    h = world.userHome("many")
    world.dotqmail(h, ".qmail", b"./Maildir/\n./mbox\n")
    agent = world.agent()
    mess = world.mess()
    ds = agent.deliver([world.request(b"many@test.example", mess, position=i) for i in range(20)])
    for d in ds:
        assert await d == Report(Outcome.SUCCESS, b"did 2+0+0\n")
    assert len(maildirFiles(os.path.join(h, "Maildir"))) == 20
    with open(os.path.join(h, "mbox"), "rb") as f:
        assert f.read().count(b"\nDelivered-To: many@test.example\n") == 20


@pytest_twisted.ensureDeferred
async def test_logNamesFailingLine(world, logEvents):
    h = world.userHome("lg")
    world.dotqmail(h, ".qmail", b"# c\n./ok.mbox\n|echo nope; exit 100\n")
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"lg@test.example"))
    assert r == Report(Outcome.FAILURE, b"nope\n")
    [e] = [e for e in logEvents if e.get("line") == 3]
    assert e["file"] == os.path.join(h, ".qmail") and e["outcome"] == "failure"
    assert e["rcpt"] == "lg@test.example" and e["text"] == b"nope\n"


@pytest_twisted.ensureDeferred
async def test_programPastTimeoutlocalIsKilledAndDeferred(world):
    """A program that never exits is killed after control/timeoutlocal and deferred [qmtwist]."""
    with open(os.path.join(world.home.control, "timeoutlocal"), "wb") as f:
        f.write(b"1\n")
    world.dotqmail(world.home.alias, ".qmail-stuck",
                   b"|echo started; echo $$ > ./stuck.pid; exec sleep 1000\n")
    agent = world.agent()
    r = await deliverOne(agent, world.request(b"alias-stuck@test.example"))
    assert r.outcome is Outcome.DEFERRAL
    assert r.text == (b"started\nProgram ran longer than 1 seconds (control/timeoutlocal); "
                      b"killed. (#4.3.0)\n")
    with open(os.path.join(world.home.alias, "stuck.pid")) as f:
        pid = int(f.read())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone (sleep was exec'd in the shell's place)
