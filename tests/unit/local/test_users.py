"""users/assign, qmail-getpw rules, the lookup chain, user add/del/list, users/passwd."""

from __future__ import annotations

import io
import os
import pwd

import pytest

from qmtwist import users
from qmtwist.errors import TemporaryFailure
from qmtwist.users import User

ASSIGN = b"""# comment
=joe:joe:1001:1001:/home/joe:::
+joe-:joe:1001:1001:/home/joe:-::
+j:jay:1002:1002:/home/jay:-:pre-:
=Mixed:mx:1003:1003:/home/mx:-:ext:
+list-x:lx:1004:1004:/home/lx:-::
+list-:l:1005:1005:/home/l:-:a-:
=bad:only:three
=rel:r:1:1:relative:::
=nonnum:n:x:1:/h:::
.
=after:a:1:1:/h:::
"""


def table():
    warnings = []
    t = users.parseAssign(ASSIGN, warnings.append)
    return t, warnings


def test_parseWarnings():
    _, w = table()
    assert w == [
        "warning: users/assign line 8: wrong field count; line ignored",
        "warning: users/assign line 9: home directory not absolute; line ignored",
        "warning: users/assign line 10: uid or gid not numeric; line ignored"]


def test_exactBeatsPrefix():
    t, _ = table()
    assert t.find(b"JOE") == User(b"joe", 1001, 1001, "/home/joe", b"", b"")
    assert t.find(b"joe-Foo") == User(b"joe", 1001, 1001, "/home/joe", b"-", b"Foo")
    assert t.find(b"mixed") == User(b"mx", 1003, 1003, "/home/mx", b"-", b"ext")
    assert t.find(b"after") is None


def test_longestPrefixWins():
    t, _ = table()
    assert t.find(b"jim") == User(b"jay", 1002, 1002, "/home/jay", b"-", b"pre-im")
    assert t.find(b"list-xY") == User(b"lx", 1004, 1004, "/home/lx", b"-", b"Y")
    assert t.find(b"list-y") == User(b"l", 1005, 1005, "/home/l", b"-", b"a-y")
    assert t.find(b"other") is None


class _Pw:
    def __init__(self, uid, home):
        self.pw_uid, self.pw_gid, self.pw_dir = uid, uid, home


class _St:
    def __init__(self, uid, mode=0o40755):
        self.st_uid, self.st_mode = uid, mode


def test_getpwRules():
    accounts = {"joe": _Pw(1001, "/home/joe"), "joe-foo": _Pw(1002, "/home/jf"),
                "root": _Pw(0, "/root"), "nohome": _Pw(1003, "/none"),
                "wrongowner": _Pw(1004, "/home/w")}
    homes = {"/home/joe": _St(1001), "/home/jf": _St(1002), "/root": _St(0),
             "/home/w": _St(1)}

    def getpwnam(n):
        return accounts[n]

    def statHome(p):
        if p not in homes:
            raise FileNotFoundError(p)
        return homes[p]

    f = lambda local: users.findSystemUser(local, getpwnam, statHome)  # noqa: E731
    assert f(b"joe") == User(b"joe", 1001, 1001, "/home/joe", b"", b"")
    assert f(b"joe-foo-Bar") == User(b"joe-foo", 1002, 1002, "/home/jf", b"-", b"Bar")
    assert f(b"joe-x-y") == User(b"joe", 1001, 1001, "/home/joe", b"-", b"x-y")
    assert f(b"root") is None
    assert f(b"nohome") is None
    assert f(b"wrongowner") is None
    assert f(b"x" * 40) is None

    def broken(n):
        raise OSError("nss down")

    with pytest.raises(TemporaryFailure) as e:
        users.findSystemUser(b"joe", broken, statHome)
    assert e.value.text == "Temporary failure in qmail-lspawn."

    def nfs(p):
        raise PermissionError(p)

    with pytest.raises(TemporaryFailure) as e:
        users.findSystemUser(b"joe", getpwnam, nfs)
    assert e.value.text == "NFS failure in qmail-local."


def test_chainNotRoot(home):
    with open(os.path.join(home.users, "assign"), "wb") as f:
        f.write(b"=bob:bob:5:5:/b:::\n")
    t = users.UserTable(home, root=False)
    assert t.find(b"bob") == User(b"bob", 5, 5, "/b", b"", b"")
    me = os.getuid(), os.getgid()
    assert t.find(b"alias") == User(b"alias", *me, home.alias, b"", b"", True)
    assert t.find(b"alias-Movie-bob") == User(b"alias", *me, home.alias, b"-", b"Movie-bob", True)
    assert t.find(b"Root") == User(b"alias", *me, home.alias, b"-", b"Root", True)
    # assign changes are seen without a reload (mtime/size check)
    with open(os.path.join(home.users, "assign"), "wb") as f:
        f.write(b"=bob:robert:6:6:/r:::\n")
    assert t.find(b"bob").name == b"robert"


def test_aliasMissing(home):
    os.rename(home.alias, home.alias + ".gone")
    with pytest.raises(TemporaryFailure) as e:
        users.UserTable(home, root=False).find(b"nobody-here")
    assert e.value.text == "Unable to find alias user!"


def test_rootNeverDeliversAsUid0(home):
    with open(os.path.join(home.users, "assign"), "wb") as f:
        f.write(b"=toor:toor:0:0:/:::\n")
    with pytest.raises(TemporaryFailure) as e:
        users.UserTable(home, root=True).find(b"toor")
    assert e.value.text == "Not allowed to perform deliveries as root."


def _run(home, *argv, stdin=b""):
    out, err = io.StringIO(), io.StringIO()
    code = users.userCommand(home, list(argv), io.BytesIO(stdin), out, err)
    return code, out.getvalue(), err.getvalue()


def test_userAddListDel(home):
    code, _, err = _run(home, "add", "carol", "--uid", "4321", "--gid", "4322")
    assert code == 0, err
    h = os.path.join(home.homes, "carol")
    assert open(os.path.join(home.users, "assign"), "rb").read() == (
        b"=carol:carol:4321:4322:%s:::\n+carol-:carol:4321:4322:%s:-::\n"
        % (h.encode(), h.encode()))
    for s in ("tmp", "new", "cur"):
        assert os.path.isdir(os.path.join(h, "Maildir", s))
    if os.getuid() == 0:
        assert os.stat(h).st_uid == 4321 and os.stat(h).st_gid == 4322
    assert _run(home, "add", "carol")[0] == 100
    assert _run(home, "add", "Bad/Name")[0] == 100
    assert _run(home, "add", "zed", "--uid", "0", "--gid", "0")[0] == 100
    assert _run(home, "list") == (0, "carol\n", "")
    t = users.UserTable(home, root=False)
    assert t.find(b"carol-Stuff") == User(b"carol", 4321, 4322, h, b"-", b"Stuff")
    assert _run(home, "del", "carol")[0] == 0
    assert open(os.path.join(home.users, "assign"), "rb").read() == b""
    assert os.path.isdir(h)
    assert _run(home, "del", "carol")[0] == 100


def test_userAddDefaultAccount(home):
    assert _run(home, "add", "dan")[0] == 0
    line = open(os.path.join(home.users, "assign"), "rb").read().split(b"\n")[0]
    uid = int(line.split(b":")[2])
    if os.getuid() == 0:
        assert uid == pwd.getpwnam("qmtwistv").pw_uid
    else:
        assert uid == os.getuid()


def test_passwordStdin(home):
    assert _run(home, "add", "eve", "--password-stdin", stdin=b"s3cret\nignored\n")[0] == 0
    p = os.path.join(home.users, "passwd")
    assert os.stat(p).st_mode & 0o777 == 0o600
    hashes = users.readPasswd(home)
    h = hashes[b"eve"]
    assert h.startswith(b"$scrypt$ln=14,r=8,p=1$") and b"s3cret" not in h
    assert users.checkPassword(b"s3cret", h)
    assert not users.checkPassword(b"s3cret\n", h)
    assert not users.checkPassword(b"x", b"plain")
    assert _run(home, "del", "eve")[0] == 0
    assert users.readPasswd(home) == {}


def test_passwdCheckerIsACredChecker(home):
    """users/passwd as a twisted.cred checker (docs/behaviour/pop3.md 10.5)."""
    from twisted.cred.checkers import ICredentialsChecker
    from twisted.cred.credentials import UsernamePassword
    from twisted.cred.error import UnauthorizedLogin
    from zope.interface.verify import verifyObject

    from qmtwist.users.passwd import PasswdChecker

    assert _run(home, "add", "eve", "--password-stdin", stdin=b"s3cret\n")[0] == 0
    checker = PasswdChecker(home)
    verifyObject(ICredentialsChecker, checker)
    got = []
    checker.requestAvatarId(UsernamePassword(b"eve", b"s3cret")).addBoth(got.append)
    checker.requestAvatarId(UsernamePassword(b"eve", b"wrong")).addBoth(got.append)
    checker.requestAvatarId(UsernamePassword(b"nobody", b"s3cret")).addBoth(got.append)
    assert got[0] == b"eve"
    assert got[1].check(UnauthorizedLogin) and got[2].check(UnauthorizedLogin)
