"""
The C{qmtwist user add|del|list} command (docs/commands.md): keeps C{users/assign}
(docs/behaviour/local.md 3.4, read by L{qmtwist.users.lookup}) and C{users/passwd}
(docs/behaviour/pop3.md 10.5, L{qmtwist.users.passwd}) in step, and makes the user's home and
Maildir under C{HOME/homes}. Each file is replaced atomically (written, fsynced, renamed).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from qmtwist.home import Home, virtualAccount
from qmtwist.users.lookup import parseAssign
from qmtwist.users.passwd import hashPassword

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

    if any(a in ("-h", "--help") for a in argv):
        stdout.write(USER_USAGE)
        return 0
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
