"""
Who controls a local part: C{users/assign}, the system password file and the alias user
(qmail-lspawn's lookup and qmail-getpw, docs/behaviour/local.md 3.3-3.5); C{users/passwd} hashes
(docs/behaviour/pop3.md 10.5);
and the C{qmtwist user add|del|list} command (docs/commands.md).

Lookups are synchronous functions (L{UserTable.find}) that the agent runs on a thread, so a slow
NSS source never blocks the reactor; L{UserDatabase} is the L{IUserDatabase} wrapper doing that.

Password hash format [qmtwist]: C{$scrypt$ln=14,r=8,p=1$SALT$KEY}, SALT (16 random bytes) and KEY
(64 bytes) in standard base64 with padding, from C{hashlib.scrypt(pw, salt, n=2**ln, r, p)}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import stat
import sys
from typing import Any, Callable

from attrs import field, frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from qmtwist.errors import TemporaryFailure
from qmtwist.home import Home, virtualAccount
from qmtwist.interfaces import IUserDatabase

log = Logger(namespace="qmail-lspawn")

ALIAS_MISSING = "Unable to find alias user!"
ROOT_REFUSED = "Not allowed to perform deliveries as root."
LSPAWN_TEMP = "Temporary failure in qmail-lspawn."
NFS_FAILURE = "NFS failure in qmail-local."


@frozen
class User:
    """
    The controlling user of one local part.

    @ivar name: C{$USER}.
    @ivar home: absolute home directory (text path).
    @ivar dash: C{b""} or C{b"-"}.
    @ivar ext: the extension (original case).
    @ivar isAlias: the alias user (forwards are then injected C{by alias}).
    """

    name: bytes
    uid: int
    gid: int
    home: str
    dash: bytes
    ext: bytes
    isAlias: bool = False


@frozen
class Assignment:
    """One C{users/assign} line."""

    wildcard: bool
    local: bytes  # lowered
    name: bytes
    uid: int
    gid: int
    home: str
    dash: bytes
    ext: bytes


@frozen
class AssignTable:
    """Parsed C{users/assign}: exact lines by key, prefix lines longest first."""

    exact: dict[bytes, Assignment] = field(factory=dict)
    prefixes: tuple[Assignment, ...] = ()

    def find(self, local: bytes) -> User | None:
        """Steps 1 and 2 of docs/behaviour/local.md 3.3; C{None} when no line matches."""
        key = local.lower()
        a = self.exact.get(key)
        if a is not None:
            return User(a.name, a.uid, a.gid, a.home, a.dash, a.ext)
        for a in self.prefixes:
            if key.startswith(a.local):
                return User(a.name, a.uid, a.gid, a.home, a.dash, a.ext + local[len(a.local):])
        return None


def parseAssign(data: bytes, warn: Callable[[str], None] = lambda s: None) -> AssignTable:
    """
    Parse C{users/assign} (docs/behaviour/local.md 3.4). Malformed lines are skipped with a warning.
    For repeated exact keys the first line wins, as in qmail's cdb.
    """
    exact: dict[bytes, Assignment] = {}
    prefixes: list[Assignment] = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        line = raw.rstrip(b"\r")
        if line == b".":
            break
        if not line or line.startswith(b"#"):
            continue
        kind = line[:1]
        fields = line[1:].split(b":")
        problem = None
        if kind not in (b"=", b"+") or b"\0" in line:
            problem = "not an = or + line"
        elif len(fields) != 8 or fields[7] != b"":
            problem = "wrong field count"
        elif not (fields[2].isdigit() and fields[3].isdigit()):
            problem = "uid or gid not numeric"
        elif not fields[4].startswith(b"/"):
            problem = "home directory not absolute"
        if problem:
            warn(f"warning: users/assign line {n}: {problem}; line ignored")
            continue
        a = Assignment(
            kind == b"+", fields[0].lower(), fields[1], int(fields[2]), int(fields[3]),
            os.fsdecode(fields[4]), fields[5], fields[6])
        if a.wildcard:
            prefixes.append(a)
        else:
            exact.setdefault(a.local, a)
    # longest prefix first; stable sort keeps file order among equal lengths
    prefixes.sort(key=lambda a: -len(a.local))
    return AssignTable(exact, tuple(prefixes))


def findSystemUser(
    local: bytes,
    getpwnam: Callable[[str], Any] = pwd.getpwnam,
    statHome: Callable[[str], os.stat_result] = os.stat,
) -> User | None:
    """
    qmail-getpw (docs/behaviour/local.md 3.5): the longest prefix of LOCAL ending at its end or before a C{-}
    that names a mail user.

    @raise TemporaryFailure: a lookup or stat error other than "not found".
    """
    key = local.lower()
    cuts = [len(key)] + [i for i in range(len(key) - 1, 0, -1) if key[i:i + 1] == b"-"]
    for cut in cuts:
        name = key[:cut]
        if len(name) >= 32 or name != name.lower() or b"\0" in name or not name:
            continue
        try:
            pw = getpwnam(name.decode("latin-1"))
        except KeyError:
            continue
        except Exception:
            raise TemporaryFailure(LSPAWN_TEMP)
        if pw.pw_uid == 0:
            continue
        try:
            st = statHome(pw.pw_dir)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            raise TemporaryFailure(NFS_FAILURE)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != pw.pw_uid:
            continue
        if cut == len(key):
            return User(name, pw.pw_uid, pw.pw_gid, pw.pw_dir, b"", b"")
        return User(name, pw.pw_uid, pw.pw_gid, pw.pw_dir, b"-", local[cut + 1:])
    return None


class UserTable:
    """
    The whole lookup chain of docs/behaviour/local.md 3.3, synchronous (run it on a thread or in a child).

    @param home: the qmtwist home (C{users/assign}, C{alias/}).
    @param root: whether the system password file is consulted (the daemon runs as root).
    """

    def __init__(self, home: Home, root: bool | None = None) -> None:
        self.home = home
        self.root = os.getuid() == 0 if root is None else root
        self._assign = AssignTable()
        self._assignStamp: tuple[int, int] | None = None

    def reload(self) -> None:
        """Forget the cached C{users/assign} (SIGHUP)."""
        self._assignStamp = None

    def assignTable(self) -> AssignTable:
        """C{users/assign}, re-read when its mtime or size changed."""
        path = os.path.join(self.home.users, "assign")
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = (0, -1)
        except OSError:
            raise TemporaryFailure(LSPAWN_TEMP)
        if stamp != self._assignStamp:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                data = b""
            except OSError:
                raise TemporaryFailure(LSPAWN_TEMP)
            self._assign = parseAssign(data, lambda s: log.warn("{line}", line=s))
            self._assignStamp = stamp
        return self._assign

    def aliasUser(self, dash: bytes, ext: bytes) -> User:
        """The alias user: C{HOME/alias}, owned by the account deliveries run as."""
        try:
            st = os.stat(self.home.alias)
        except OSError:
            raise TemporaryFailure(ALIAS_MISSING)
        if self.root:
            uid, gid = st.st_uid, st.st_gid
        else:
            uid, gid = os.getuid(), os.getgid()
        return User(b"alias", uid, gid, self.home.alias, dash, ext, isAlias=True)

    def find(self, local: bytes) -> User:
        """
        The controlling user of C{local}.

        @raise TemporaryFailure: with qmail's text (alias user missing, uid 0, lookup errors).
        """
        user = self.assignTable().find(local)
        if user is None and self.root:
            user = findSystemUser(local)
        key = local.lower()
        if user is None and key == b"alias":
            user = self.aliasUser(b"", b"")
        elif user is None and key.startswith(b"alias-"):
            user = self.aliasUser(b"-", local[6:])
        elif user is None:
            user = self.aliasUser(b"-", local)
        if self.root and user.uid == 0:
            raise TemporaryFailure(ROOT_REFUSED)
        return user


@implementer(IUserDatabase)
class UserDatabase:
    """L{UserTable} behind L{IUserDatabase}: each lookup runs on C{runInThread}."""

    def __init__(self, table: UserTable, runInThread: Callable[..., Deferred] = maybeDeferred):
        self.table = table
        self.runInThread = runInThread

    def lookup(self, local: bytes) -> Deferred:
        return self.runInThread(lambda: self.table.find(local))

    def reload(self) -> None:
        self.table.reload()


# -- users/passwd ----------------------------------------------------------------------------

SCRYPT_LN, SCRYPT_R, SCRYPT_P = 14, 8, 1


def hashPassword(password: bytes, salt: bytes | None = None) -> bytes:
    """The C{users/passwd} hash of C{password} (format in the module docstring)."""
    salt = os.urandom(16) if salt is None else salt
    key = hashlib.scrypt(password, salt=salt, n=2 ** SCRYPT_LN, r=SCRYPT_R, p=SCRYPT_P, dklen=64)
    return b"$scrypt$ln=%d,r=%d,p=%d$%s$%s" % (
        SCRYPT_LN, SCRYPT_R, SCRYPT_P, base64.b64encode(salt), base64.b64encode(key))


def checkPassword(password: bytes, hashed: bytes) -> bool:
    """Whether C{password} matches a hash made by L{hashPassword}; malformed hashes never match."""
    try:
        _, scheme, params, salt, key = hashed.split(b"$")
        if scheme != b"scrypt":
            return False
        p = dict(kv.split(b"=", 1) for kv in params.split(b","))
        ln, r, par = int(p[b"ln"]), int(p[b"r"]), int(p[b"p"])
        if not (14 <= ln <= 20 and 1 <= r <= 32 and 1 <= par <= 16):
            return False
        want = base64.b64decode(key, validate=True)
        got = hashlib.scrypt(password, salt=base64.b64decode(salt, validate=True), n=2 ** ln,
                             r=r, p=par, dklen=len(want), maxmem=2 ** 28)
    except (ValueError, KeyError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def readPasswd(home: Home) -> dict[bytes, bytes]:
    """C{users/passwd} as name -> hash (missing file = nobody)."""
    try:
        with open(os.path.join(home.users, "passwd"), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    out: dict[bytes, bytes] = {}
    for line in data.split(b"\n"):
        if b":" in line:
            name, h = line.split(b":", 1)
            out.setdefault(name, h)
    return out


# -- qmtwist user add|del|list ------------------------------------------------------------

USER_USAGE = """usage: qmtwist user add NAME [--password-stdin] [--uid UID --gid GID]
       qmtwist user del NAME
       qmtwist user list
"""


def _validName(name: str) -> bool:
    ok = set("abcdefghijklmnopqrstuvwxyz0123456789._")
    return (0 < len(name) < 64 and all(c in ok for c in name) and name[0] not in "._")


def _replaceFile(path: str, data: bytes, mode: int) -> None:
    tmp = path + ".tmp%d" % os.getpid()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.rename(tmp, path)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def _assignLines(name: bytes, uid: int, gid: int, homedir: bytes) -> list[bytes]:
    return [b"=%s:%s:%d:%d:%s:::" % (name, name, uid, gid, homedir),
            b"+%s-:%s:%d:%d:%s:-::" % (name, name, uid, gid, homedir)]


def _isUserLine(line: bytes, name: bytes) -> bool:
    return line.startswith(b"=" + name + b":") or line.startswith(b"+" + name + b"-:")


def userCommand(home: Home, argv: list[str], stdin: Any = None, stdout: Any = None,
                stderr: Any = None) -> int:
    """
    C{qmtwist user add|del|list} (docs/commands.md, docs/behaviour/local.md 3.4).

    @return: 0 done, 100 usage error or bad name, 111 temporary (I/O) error.
    """
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr

    def fail(text: str, code: int) -> int:
        stderr.write(f"qmtwist user: {text}\n")
        return code

    if not argv or argv[0] not in ("add", "del", "list"):
        stderr.write(USER_USAGE)
        return 100
    assignPath = os.path.join(home.users, "assign")
    passwdPath = os.path.join(home.users, "passwd")
    try:
        if argv[0] == "list":
            if len(argv) != 1:
                stderr.write(USER_USAGE)
                return 100
            table = parseAssign(_read(assignPath))
            for a in table.exact.values():
                stdout.write(os.fsdecode(a.local) + "\n")
            return 0
        if len(argv) < 2 or not _validName(argv[1]):
            return fail("fatal: NAME must be lowercase letters, digits, . and _", 100)
        name = argv[1].encode()
        lines = [x for x in _read(assignPath).split(b"\n") if x]
        if argv[0] == "del":
            if len(argv) != 2:
                stderr.write(USER_USAGE)
                return 100
            kept = [x for x in lines if not _isUserLine(x, name)]
            if len(kept) == len(lines):
                return fail(f"fatal: no user {argv[1]}", 100)
            _replaceFile(assignPath, b"".join(x + b"\n" for x in kept), 0o644)
            pw = [x for x in _read(passwdPath).split(b"\n") if x and not x.startswith(name + b":")]
            _replaceFile(passwdPath, b"".join(x + b"\n" for x in pw), 0o600)
            return 0
        # add
        opts = argv[2:]
        wantPassword = False
        uid = gid = None
        while opts:
            o = opts.pop(0)
            if o == "--password-stdin":
                wantPassword = True
            elif o in ("--uid", "--gid") and opts and opts[0].isdigit():
                v = int(opts.pop(0))
                if o == "--uid":
                    uid = v
                else:
                    gid = v
            else:
                stderr.write(USER_USAGE)
                return 100
        if (uid is None) != (gid is None):
            return fail("fatal: --uid and --gid go together", 100)
        if uid is None:
            uid, gid = virtualAccount() if os.getuid() == 0 else (os.getuid(), os.getgid())
        assert gid is not None
        if uid == 0:
            return fail("fatal: no delivery runs as uid 0", 100)
        if any(x.startswith(b"=" + name + b":") for x in lines):
            return fail(f"fatal: user {argv[1]} exists", 100)
        hashed = None
        if wantPassword:
            password = stdin.readline().rstrip(b"\n")
            hashed = hashPassword(password)
        homedir = os.path.join(home.homes, argv[1])
        os.makedirs(home.homes, exist_ok=True)
        made = []
        for d in (homedir, os.path.join(homedir, "Maildir"),
                  *(os.path.join(homedir, "Maildir", s) for s in ("tmp", "new", "cur"))):
            try:
                os.mkdir(d, 0o700)
                made.append(d)
            except FileExistsError:
                pass
        if os.getuid() == 0:
            for d in made:
                os.chown(d, uid, gid)
        lines.extend(_assignLines(name, uid, gid, os.fsencode(homedir)))
        _replaceFile(assignPath, b"".join(x + b"\n" for x in lines), 0o644)
        if hashed is not None:
            pw = [x for x in _read(passwdPath).split(b"\n") if x and not x.startswith(name + b":")]
            pw.append(name + b":" + hashed)
            _replaceFile(passwdPath, b"".join(x + b"\n" for x in pw), 0o600)
        return 0
    except OSError as e:
        return fail(f"fatal: {e}", 111)
