"""POP3 logins: the built-in checker and the checkpassword relay (docs/behaviour/pop3.md 10.2, 10.5)."""

from __future__ import annotations

import io
import os

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from qmtwist.interfaces import IPasswordChecker
from qmtwist.pop3.checkpassword import (
    Account, BuiltinChecker, BuiltinLogin, CheckpasswordLogin, LoginRefused, Result, checkBuiltin)
from qmtwist.users import parseAssign, userCommand


def addUser(home, name: str, password: bytes | None) -> None:
    args = ["add", name] + (["--password-stdin"] if password is not None else [])
    stdin = io.BytesIO((password or b"") + b"\n")
    assert userCommand(home, args, stdin=stdin, stdout=io.StringIO(), stderr=io.StringIO()) == 0


def assigned(home, name: bytes) -> tuple[int, int]:
    """The uid and gid user add chose (ours, or qmtwistv's when the tests run as root)."""
    with open(home.sub("users", "assign"), "rb") as f:
        a = parseAssign(f.read()).exact[name]
    return a.uid, a.gid


def test_builtin_accepts_user_made_by_user_add(home):
    addUser(home, "joe", b"s3cret \xe9")
    account = checkBuiltin(home, b"joe", b"s3cret \xe9")
    uid, gid = assigned(home, b"joe")
    assert account == Account(b"joe", uid, gid, home.sub("homes", "joe"))
    assert account.maildir == home.sub("homes", "joe", "Maildir")
    with open(home.sub("users", "passwd"), "rb") as f:
        passwd = f.read()
    assert passwd.startswith(b"joe:$scrypt$ln=14,r=8,p=1$") and b"s3cret" not in passwd
    assert os.stat(home.sub("users", "passwd")).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("user, password", [
    (b"joe", b"wrong"),
    (b"joe", b"s3cret"),       # prefix of the real one
    (b"JOE", b"s3cret!"),      # names are exact
    (b"nobody", b"s3cret!"),
    (b"nopw", b""),            # a user without a passwd line cannot log in
    (b"joe", b"x" * 600),      # over checkpassword's 512 bytes
])
def test_builtin_refuses(home, user, password):
    addUser(home, "joe", b"s3cret!")
    addUser(home, "nopw", None)
    with pytest.raises(LoginRefused):
        checkBuiltin(home, user, password)


def test_builtin_checker_interface(home):
    addUser(home, "joe", b"pw")
    checker = BuiltinChecker(home, maybeDeferred)
    verifyObject(IPasswordChecker, checker)
    got = []
    checker.check(b"joe", b"pw").addCallback(got.append)
    assert got[0].name == b"joe"


class FakeProcessReactor:
    """Records spawnProcess calls; the test ends the child with a chosen status."""

    def __init__(self):
        self.spawned = []

    def spawnProcess(self, proto, executable, args, env=None, path=None, uid=None, gid=None,
                     usePTY=False, childFDs=None):
        transport = FakeProcessTransport()
        self.spawned.append(dict(proto=proto, executable=executable, args=args, env=env,
                                 path=path, uid=uid, gid=gid, childFDs=childFDs,
                                 transport=transport))
        proto.makeConnection(transport)
        return transport


class FakeProcessTransport:
    def __init__(self):
        self.written = {}
        self.closed = []

    def writeToChild(self, fd, data):
        self.written[fd] = self.written.get(fd, b"") + data

    def closeChildFD(self, fd):
        self.closed.append(fd)


class Session:
    def __init__(self):
        self.env = {"TCPREMOTEIP": b"127.0.0.1"}
        self.transport = StringTransport()
        self.relays = []

    def startRelay(self, relay):
        self.relays.append(relay)


@pytest.mark.parametrize("reason, result", [
    (ProcessDone(0), Result.DONE),
    (ProcessTerminated(1), Result.FAILED),
    (ProcessTerminated(111), Result.FAILED),
    (ProcessTerminated(None, signal=11), Result.CRASHED),
])
def test_checkpassword_interface(reason, result):
    reactor = FakeProcessReactor()
    login = CheckpasswordLogin(reactor, ["/bin/checkpassword", "/h/bin/qmail-pop3d", "Maildir"])
    session = Session()
    got = []
    login.start(session, b"joe", b"pw", b"<1.2@h>", False).addCallback(got.append)
    [spawn] = reactor.spawned
    assert spawn["executable"] == "/bin/checkpassword"
    assert spawn["args"] == [b"/bin/checkpassword", b"/h/bin/qmail-pop3d", b"Maildir"]
    assert spawn["childFDs"] == {0: "w", 1: "r", 2: "r", 3: "w"}
    assert spawn["env"][b"TCPREMOTEIP"] == b"127.0.0.1"
    t = spawn["transport"]
    assert t.written == {3: b"joe\0pw\0<1.2@h>\0"} and t.closed == [3]
    [relay] = session.relays
    relay.fromClient(b"STAT\r\n")
    relay.childDataReceived(1, b"+OK 0 0\r\n")
    assert t.written[0] == b"STAT\r\n" and session.transport.value() == b"+OK 0 0\r\n"
    relay.clientGone()
    assert t.closed == [3, 0]
    assert got == []
    relay.processEnded(Failure(reason))
    assert got == [(result, None)]


def test_builtin_login_not_root_serves_in_process(home):
    addUser(home, "joe", b"pw")
    login = BuiltinLogin(BuiltinChecker(home, maybeDeferred), home, FakeProcessReactor(), False)
    got = []
    login.start(Session(), b"joe", b"pw", b"<1@h>", False).addCallback(got.append)
    login.start(Session(), b"joe", b"bad", b"<1@h>", False).addCallback(got.append)
    login.start(Session(), b"joe", b"pw", b"<1@h>", True).addCallback(got.append)
    assert got == [(Result.SERVE, home.sub("homes", "joe", "Maildir")),
                   (Result.FAILED, None), (Result.FAILED, None)]


def test_builtin_login_as_root_runs_pop3d_as_the_user(home):
    addUser(home, "joe", b"pw")
    uid, gid = assigned(home, b"joe")
    reactor = FakeProcessReactor()
    login = BuiltinLogin(BuiltinChecker(home, maybeDeferred), home, reactor, True, "/py")
    session = Session()
    got = []
    login.start(session, b"joe", b"pw", b"<1@h>", False).addCallback(got.append)
    [spawn] = reactor.spawned
    assert spawn["executable"] == "/py"
    # started as root, drops to the user before reading anything (never uid=/gid= in the fork
    # of the multithreaded daemon)
    # -P and cwd "/": nothing the user can write is ever on sys.path while the child is root
    assert spawn["args"] == ["/py", "-P", "-m", "qmtwist.pop3.child", "--drop", str(uid),
                             str(gid), "--home", home.sub("homes", "joe"), "Maildir"]
    assert (spawn["uid"], spawn["gid"]) == (None, None)
    assert spawn["path"] == "/"
    assert spawn["env"][b"USER"] == b"joe" and spawn["env"][b"HOME"] == os.fsencode(
        home.sub("homes", "joe"))
    assert spawn["childFDs"] == {0: "w", 1: "r", 2: "r"}
    session.relays[0].processEnded(Failure(ProcessDone(0)))
    assert got == [(Result.DONE, None)]


def test_builtin_login_as_root_never_serves_uid_0(home):
    with open(home.sub("users", "assign"), "ab") as f:
        f.write(b"=boss:boss:0:0:/root:::\n")
    from qmtwist.users import hashPassword
    with open(home.sub("users", "passwd"), "ab") as f:
        f.write(b"boss:" + hashPassword(b"pw") + b"\n")
    reactor = FakeProcessReactor()
    login = BuiltinLogin(BuiltinChecker(home, maybeDeferred), home, reactor, True)
    got = []
    login.start(Session(), b"boss", b"pw", b"<1@h>", False).addCallback(got.append)
    assert got == [(Result.FAILED, None)] and reactor.spawned == []
