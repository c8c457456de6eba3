"""
The POP3 listener over real sockets, with real Maildir files (docs/behaviour/pop3.md 10): poplib, getmail6 and
fetchmail as clients; the built-in checker (in-process, and as root a child per session running
as the user) and an external checkpassword program; C{bin/qmail-popup} under Debian's tcpserver.
"""

from __future__ import annotations

import io
import os
import poplib
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
import qmtwist
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from qmtwist.context import Context, ControlCache
from qmtwist.pop3.listener import makePOP3Service
from qmtwist.users import parseAssign, userCommand
from tests.conftest import logLines
from tests.support import tcpserverPort, until, waitFor

ONE = b"Subject: one\n\n.leading dot\nbody\n"
TWO = b"Subject: \xe9t\xe9 \xff\n\n\xff\xfe\x80 caf\xe9 \x00 8-bit, not UTF-8\n"
BIG = b"Subject: big\n\n" + b"".join(b"line %06d of a big message\n" % i for i in range(20000))
FILES = [("cur/1000.A.test:2,S", ONE), ("new/2000.B.test", TWO), ("new/3000.C.test", BIG)]


def addUser(home, name: str, password: bytes) -> tuple[int, int, str]:
    assert userCommand(home, ["add", name, "--password-stdin"], stdin=io.BytesIO(password + b"\n"),
                       stdout=io.StringIO(), stderr=io.StringIO()) == 0
    with open(home.sub("users", "assign"), "rb") as f:
        a = parseAssign(f.read()).exact[name.encode()]
    return a.uid, a.gid, a.home


def fill(maildir: str, uid: int, gid: int, files=FILES) -> None:
    for rel, data in files:
        path = os.path.join(maildir, rel)
        with open(path, "wb") as f:
            f.write(data)
        if os.getuid() == 0:
            os.chown(path, uid, gid)


def listing(maildir: str) -> dict[str, list[str]]:
    return {d: sorted(os.listdir(os.path.join(maildir, d))) for d in ("new", "cur")}


def asLines(data: bytes) -> list[bytes]:
    """What poplib returns for a message qmail-pop3d sends (with its extra empty line)."""
    return data.split(b"\n")[:-1] + [b""]


def service(home, **kw):
    ctx = Context(home, reactor, None, ControlCache(home), deferToThread)
    s = makePOP3Service(ctx, "tcp:0:interface=127.0.0.1", home.sub("rules", "pop3"), 40, **kw)
    s.startService()
    return s, s.port.getHost().port


REPO = os.path.dirname(os.path.dirname(os.path.abspath(qmtwist.__file__)))


@pytest.fixture(autouse=True)
def childrenImportThisTree(monkeypatch):
    """Children (launchers in HOME/bin) import the qmtwist under test, not an installed copy."""
    monkeypatch.setenv("PYTHONPATH", REPO)


def canRunAs(uid: int, gid: int) -> bool:
    """Whether a child running as uid/gid can start our interpreter and import qmtwist."""
    try:
        r = subprocess.run([sys.executable, "-c", "import twisted, qmtwist.pop3.stdio"],
                           user=uid, group=gid, extra_groups=[], cwd="/", capture_output=True,
                           env=dict(os.environ, PYTHONPATH=REPO))
    except OSError:
        return False
    return r.returncode == 0


ROOT_MODES = [False, pytest.param(True, marks=pytest.mark.skipif(
    os.getuid() != 0, reason="needs root (CI runs as root)"))]


@pytest.mark.parametrize("root", ROOT_MODES, ids=lambda r: "child-as-user" if r else "in-process")
@pytest_twisted.ensureDeferred
async def test_poplib_sessions(pop3home, logEvents, root):
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"pw")
    maildir = os.path.join(userHome, "Maildir")
    fill(maildir, uid, gid)
    s, port = service(home, root=root)
    try:
        def first():
            p = poplib.POP3("127.0.0.1", port, timeout=30)
            welcome = p.getwelcome()
            p.user("joe")
            p.pass_("pw")
            out = dict(welcome=welcome, stat=p.stat(), uidl=p.uidl()[1], list=p.list()[1],
                       one=p.retr(1)[1], two=p.retr(2)[1], top=p.top(3, 2)[1])
            p.dele(1)
            p.quit()
            return out

        got = await deferToThread(first)
        assert got["welcome"].startswith(b"+OK <") and got["welcome"].endswith(b"@test.example>")
        assert got["stat"] == (3, len(ONE) + len(TWO) + len(BIG))
        assert got["uidl"] == [b"1 1000.A.test", b"2 2000.B.test", b"3 3000.C.test"]
        assert got["list"] == [b"1 %d" % len(ONE), b"2 %d" % len(TWO), b"3 %d" % len(BIG)]
        assert got["one"] == asLines(ONE)
        assert got["two"] == asLines(TWO)  # byte for byte, 8-bit and NUL included
        assert got["top"] == [b"Subject: big", b"", b"line 000000 of a big message",
                              b"line 000001 of a big message", b""]
        await until(lambda: listing(maildir)["new"] == [], "QUIT's changes")
        assert listing(maildir) == {"new": [], "cur": ["2000.B.test:2,", "3000.C.test:2,"]}

        def interrupted():
            p = poplib.POP3("127.0.0.1", port, timeout=30)
            p.user("joe")
            p.pass_("pw")
            uidl = p.uidl()[1]
            p.dele(1)
            p._putcmd("RETR 2")
            first = p.sock.recv(1000)
            p.sock.close()  # vanish mid-RETR, no QUIT
            return uidl, first

        uidl, first = await deferToThread(interrupted)
        assert uidl == [b"1 2000.B.test", b"2 3000.C.test"]
        assert first.startswith(b"+OK \r\nSubject: big\r\n")
        await until(lambda: any(x.startswith("tcpserver: end 2 status")
                                for x in logLines(logEvents)), "session 2 end")

        def third():
            p = poplib.POP3("127.0.0.1", port, timeout=30)
            p.user("joe")
            p.pass_("pw")
            out = p.stat(), p.uidl()[1], p.retr(1)[1]
            p.quit()
            return out

        stat, uidl, two = await deferToThread(third)
        assert stat == (2, len(TWO) + len(BIG))
        assert uidl == [b"1 2000.B.test", b"2 3000.C.test"]
        assert two == asLines(TWO)
        assert listing(maildir) == {"new": [], "cur": ["2000.B.test:2,", "3000.C.test:2,"]}
    finally:
        await s.stopService()


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_bad_input(pop3home, logEvents):
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"pw")
    fill(os.path.join(userHome, "Maildir"), uid, gid)
    s, port = service(home, root=False)
    try:
        def wrong():
            p = poplib.POP3("127.0.0.1", port, timeout=30)
            out = []
            for cmd in ("STAT", "RETR 1", "PASS pw", "USER " + "x" * 3000, "USER joe"):
                try:
                    out.append(p._shortcmd(cmd))
                except poplib.error_proto as e:
                    out.append(e.args[0])
            try:
                p.pass_("wrong")
            except poplib.error_proto as e:
                out.append(e.args[0])
            out.append(p.sock.recv(100))
            return out

        got = await deferToThread(wrong)
        assert got == [b"-ERR authorization first", b"-ERR authorization first",
                       b"-ERR USER first", b"+OK ", b"+OK ", b"-ERR authorization failed", b""]
        await until(lambda: "tcpserver: end 1 status 256" in logLines(logEvents), "end line")
        assert "pop3: authorization failed for joe from 127.0.0.1" in logLines(logEvents)
    finally:
        await s.stopService()


CHECKPW = '''#!{python}
# A checkpassword program honouring djb's interface (FAQ 5.3), for tests.
import os, sys
data = b""
while True:
    chunk = os.read(3, 600)
    if not chunk:
        break
    data += chunk
    if len(data) > 512:
        sys.exit(2)
parts = data.split(b"\\0")
if len(parts) < 4:
    sys.exit(2)
with open({log!r}, "ab") as f:
    f.write(parts[0] + b" " + parts[2] + b"\\n")
if (parts[0], parts[1]) != (b"joe", b"pw"):
    sys.exit(1)
os.environ.update(USER="joe", HOME={home!r}, SHELL="/bin/sh")
os.chdir({home!r})
if os.getuid() == 0 and {setpriv}:
    # the interpreter is only readable with this capability here; the uid is still the user's
    os.execvp("setpriv", ["setpriv", "--reuid={uid}", "--regid={gid}", "--clear-groups",
                          "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
                          "--"] + sys.argv[1:])
if os.getuid() == 0:
    os.setgroups([])
    os.setgid({gid})
    os.setuid({uid})
os.execvp(sys.argv[1], sys.argv[1:])
'''


def writeCheckpw(home, uid, gid, userHome) -> tuple[str, str]:
    path = home.sub("checkpw")
    log = home.sub("checkpw.log")
    with open(path, "w") as f:
        f.write(CHECKPW.format(python=sys.executable, log=log, home=userHome, uid=uid, gid=gid,
                               setpriv=os.getuid() == 0 and not canRunAs(uid, gid)))
    os.chmod(path, 0o755)
    return path, log


@pytest_twisted.ensureDeferred
async def test_external_checkpassword(pop3home):
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"ignored")
    maildir = os.path.join(userHome, "Maildir")
    fill(maildir, uid, gid)
    checkpw, log = writeCheckpw(home, uid, gid, userHome)
    s, port = service(home, checkpassword=checkpw)
    try:
        def good():
            p = poplib.POP3("127.0.0.1", port, timeout=30)
            welcome = p.getwelcome()
            p.user("joe")
            p.pass_("pw")
            out = welcome, p.uidl()[1], p.retr(2)[1]
            p.dele(2)
            p.quit()
            return out

        def bad():
            p = poplib.POP3("127.0.0.1", port, timeout=30)
            p.user("joe")
            with pytest.raises(poplib.error_proto) as e:
                p.pass_("nope")
            return e.value.args[0]

        welcome, uidl, two = await deferToThread(good)
        assert uidl == [b"1 1000.A.test", b"2 2000.B.test", b"3 3000.C.test"]
        assert two == asLines(TWO)
        assert await deferToThread(bad) == b"-ERR authorization failed"
        await until(lambda: "2000.B.test" not in str(listing(maildir)), "QUIT's changes")
        assert listing(maildir) == {"new": [], "cur": ["1000.A.test:2,S", "3000.C.test:2,"]}
        with open(log, "rb") as f:
            lines = f.read().split(b"\n")
        stamp = welcome.split(b" ", 1)[1]
        assert lines[0] == b"joe " + stamp and lines[1].startswith(b"joe <")
    finally:
        await s.stopService()


def _rc(text: str, path: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


@pytest.mark.skipif(shutil.which("getmail") is None,
                    reason="Debian package getmail6 is not installed")
@pytest_twisted.ensureDeferred
async def test_getmail6_retrieves_and_deletes(pop3home):
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"pw")
    maildir = os.path.join(userHome, "Maildir")
    fill(maildir, uid, gid, FILES[:2])
    s, port = service(home, root=False)
    gdir = home.sub("getmail")
    dest = home.sub("dest") + "/"
    for d in ("", "tmp", "new", "cur"):
        os.makedirs(os.path.join(dest, d), exist_ok=True)
        if os.getuid() == 0:
            os.chown(os.path.join(dest, d), uid, gid)
    os.makedirs(gdir)
    _rc(f"[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\nport = {port}\n"
        f"username = joe\npassword = pw\n\n[destination]\ntype = Maildir\npath = {dest}\n"
        + (f"user = {pwd.getpwuid(uid).pw_name}\n\n" if os.getuid() == 0 else "\n") +
        "[options]\ndelete = true\nread_all = true\nreceived = false\ndelivered_to = false\n"
        "verbose = 0\n", os.path.join(gdir, "getmailrc"))
    try:
        r = await deferToThread(
            subprocess.run, ["getmail", "--getmaildir", gdir, "--rcfile", "getmailrc"],
            capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
    finally:
        await s.stopService()
    got = []
    for name in os.listdir(os.path.join(dest, "new")):
        with open(os.path.join(dest, "new", name), "rb") as f:
            got.append(f.read())
    # getmail adds a Return-Path line of its own; the rest is the message
    print("GETMAIL", got)
    bodies = sorted(m.split(b"\n", 1)[1] if m.startswith(b"Return-Path:") else m for m in got)
    assert bodies == sorted([ONE + b"\n", TWO + b"\n"]) or bodies == sorted([ONE, TWO])
    assert listing(maildir) == {"new": [], "cur": []}


@pytest.mark.skipif(shutil.which("fetchmail") is None,
                    reason="Debian package fetchmail is not installed")
@pytest_twisted.ensureDeferred
async def test_fetchmail_retrieves_and_deletes(pop3home):
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"pw")
    maildir = os.path.join(userHome, "Maildir")
    fill(maildir, uid, gid, FILES[:2])
    s, port = service(home, root=False)
    out = home.sub("fetched")
    os.makedirs(out)
    rc = _rc(f"set no syslog\npoll 127.0.0.1 with proto POP3 port {port} auth password\n"
             f"  user \"joe\" there with password \"pw\" is \"root\" here\n"
             f"  mda \"/bin/sh -c 'cat > {out}/$$'\" fetchall nokeep sslproto ''\n",
             home.sub("fetchmailrc"))
    env = dict(os.environ, HOME=home.path, FETCHMAILHOME=home.path)
    try:
        r = await deferToThread(
            subprocess.run, ["fetchmail", "-f", rc, "--nodetach", "--nosyslog"],
            capture_output=True, timeout=60, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        await s.stopService()
    got = []
    for name in os.listdir(out):
        with open(os.path.join(out, name), "rb") as f:
            got.append(f.read())
    # fetchmail puts its own Received field (three lines) on top
    bodies = [m.split(b"(single-drop); ", 1)[1].split(b"\n", 1)[1] for m in got]
    assert all(m.startswith(b"Received: from 127.0.0.1 [127.0.0.1]\n") for m in got)
    assert sorted(bodies) == sorted(m + b"\n" for m in (ONE, TWO))
    assert listing(maildir) == {"new": [], "cur": []}


@pytest.mark.skipif(shutil.which("tcpserver") is None,
                    reason="Debian package ucspi-tcp (tcpserver) is not installed")
def test_bin_qmail_popup_under_tcpserver(pop3home):
    """FAQ 5.3 literally: tcpserver 0 pop3 qmail-popup HOST checkpassword qmail-pop3d Maildir."""
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"ignored")
    maildir = os.path.join(userHome, "Maildir")
    fill(maildir, uid, gid)
    checkpw, _log = writeCheckpw(home, uid, gid, userHome)
    child = subprocess.Popen(
        ["tcpserver", "-1", "-H", "-R", "127.0.0.1", "0", home.sub("bin", "qmail-popup"),
         "test.example", checkpw, home.sub("bin", "qmail-pop3d"), "Maildir"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=REPO))
    try:
        port = tcpserverPort(child)
        p = poplib.POP3("127.0.0.1", port, timeout=30)
        assert p.getwelcome().endswith(b"@test.example>")
        p.user("joe")
        p.pass_("pw")
        assert p.uidl()[1] == [b"1 1000.A.test", b"2 2000.B.test", b"3 3000.C.test"]
        assert p.retr(2)[1] == asLines(TWO)
        p.dele(1)
        p.quit()
        p = poplib.POP3("127.0.0.1", port, timeout=30)
        p.user("joe")
        with pytest.raises(poplib.error_proto, match="authorization failed"):
            p.pass_("wrong")
        waitFor(lambda: not listing(maildir)["new"], "QUIT's changes", deadline=20)
        assert listing(maildir) == {"new": [], "cur": ["2000.B.test:2,", "3000.C.test:2,"]}
    finally:
        child.terminate()
        child.wait(10)
        child.stdout.close()


@pytest_twisted.ensureDeferred
async def test_rules_deny_closes_without_greeting(pop3home, logEvents):
    home = pop3home
    with open(home.sub("rules", "pop3"), "w") as f:
        f.write("127.0.0.1:deny\n")
    s, port = service(home, root=False)
    try:
        def connect():
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                return sock.recv(100)

        assert await deferToThread(connect) == b""
        await until(lambda: any(x.startswith("tcpserver: deny 1 ")
                                for x in logLines(logEvents)), "deny line")
    finally:
        await s.stopService()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root (CI runs as root)")
@pytest_twisted.ensureDeferred
async def test_root_login_never_imports_from_the_users_home(pop3home):
    """A package planted in the user's home must not run while the session child is root."""
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"pw")
    marker = os.path.join(tempfile.mkdtemp(prefix="qmtwist-plant-"), "ran")
    os.chmod(os.path.dirname(marker), 0o777)
    for pkg in ("qmtwist", "twisted"):
        planted = os.path.join(userHome, pkg)
        os.mkdir(planted)
        with open(os.path.join(planted, "__init__.py"), "w") as f:
            f.write(f"import os\nopen({marker!r} + str(os.getuid()), 'w').close()\n")
        os.chown(planted, uid, gid)
    fill(os.path.join(userHome, "Maildir"), uid, gid, FILES[:1])
    s, port = service(home, root=True)
    try:
        def session():
            p = poplib.POP3("127.0.0.1", port, timeout=30)
            p.user("joe")
            p.pass_("pw")
            out = p.stat()
            p.quit()
            return out

        assert await deferToThread(session) == (1, len(ONE))
        assert not [n for n in os.listdir(os.path.dirname(marker))]
    finally:
        await s.stopService()
        shutil.rmtree(os.path.dirname(marker), ignore_errors=True)
