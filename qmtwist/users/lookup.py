"""
Who controls a local part: C{users/assign}, the system password file and the alias user
(qmail-lspawn's lookup and qmail-getpw, docs/behaviour/local.md 3.3-3.5).

Lookups are synchronous functions (L{UserTable.find}) that the agent runs on a thread, so a slow
NSS source never blocks the reactor; L{UserDatabase} is the L{IUserDatabase} wrapper doing that.
"""

from __future__ import annotations

import os
import pwd
import stat
from typing import Any, Callable

from attrs import field, frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from qmtwist.errors import TemporaryFailure
from qmtwist.home import Home
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
