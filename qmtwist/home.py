"""
The qmtwist home directory (qmail's /var/qmail): choosing it and creating it (docs/behaviour/home.md 1).

L{setup} is idempotent: it creates what is missing and never rewrites a file that exists.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
from typing import Mapping

from attrs import frozen

from qmtwist.programs import PROGRAMS
from qmtwist.queue.layout import QueueLayout


@frozen
class Home:
    """Paths of one home directory."""

    path: str

    def sub(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    @property
    def control(self) -> str:
        return self.sub("control")

    @property
    def queue(self) -> QueueLayout:
        return QueueLayout(self.sub("queue"))

    @property
    def users(self) -> str:
        return self.sub("users")

    @property
    def homes(self) -> str:
        return self.sub("homes")

    @property
    def alias(self) -> str:
        return self.sub("alias")

    @property
    def rules(self) -> str:
        return self.sub("rules")

    @property
    def bin(self) -> str:
        return self.sub("bin")

    @property
    def run(self) -> str:
        return self.sub("run")

    @property
    def pidfile(self) -> str:
        return self.sub("run", "qmtwist.pid")

    @property
    def queueSocket(self) -> str:
        return self.sub("run", "qmail-queue.sock")

    def isComplete(self) -> bool:
        """Whether C{control/me} and every queue directory exist (else twistd runs setup)."""
        return os.path.exists(os.path.join(self.control, "me")) and self.queue.isComplete()


def chooseHome(option: str | None, environ: Mapping[str, str] | None = None) -> Home:
    """C{--home}, else C{$QMTWIST_HOME}, else C{./qmtwist-home} (docs/commands.md)."""
    environ = os.environ if environ is None else environ
    path = option or environ.get("QMTWIST_HOME") or "qmtwist-home"
    return Home(os.path.abspath(path))


def defaultMe() -> str:
    """This host's FQDN, or C{NAME.localdomain} when it has no dot (docs/behaviour/home.md 1.1)."""
    name = socket.getfqdn()
    if "." not in name:
        name = name + ".localdomain"
    return name


def _writeNew(path: str, content: bytes, mode: int = 0o644) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)
    return True


def _mkdir(path: str, mode: int = 0o755) -> bool:
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        return False
    os.chmod(path, mode)
    return True


def aliasOwner() -> tuple[int, int]:
    """Who owns C{alias/}: ourselves, or as root the account C{alias} or C{qmtwistv}."""
    if os.getuid() != 0:
        return os.getuid(), os.getgid()
    for name in ("alias", "qmtwistv"):
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            pass
    return virtualAccount()


def virtualAccount() -> tuple[int, int]:
    """As root: the unprivileged account C{qmtwistv}, created with useradd when missing."""
    try:
        pw = pwd.getpwnam("qmtwistv")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             "qmtwistv"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        pw = pwd.getpwnam("qmtwistv")
    return pw.pw_uid, pw.pw_gid


def launcherText(home: Home, name: str) -> bytes:
    """A C{bin/} launcher: runs the installed package for this home (docs/behaviour/home.md 1.3)."""
    return (
        f"#!{sys.executable}\n"
        f"# qmtwist launcher for {name}; written by qmtwist setup\n"
        "import sys\n"
        "from qmtwist.cli import runProgram\n"
        f"sys.exit(runProgram({home.path!r}, {name!r}, sys.argv[1:]))\n"
    ).encode()


def checkPrograms() -> None:
    """
    Every program in L{PROGRAMS} loads, so that each launcher written into C{bin/} runs
    (docs/behaviour/home.md 1.3): a missing one is an installation error, not a program to skip.

    @raise ModuleNotFoundError: naming every program that does not load, and why.
    """
    missing = []
    for name, load in sorted(PROGRAMS.items()):
        try:
            load()
        except ImportError as e:
            missing.append(f"{name} ({e})")
    if missing:
        raise ModuleNotFoundError(f"qmtwist is incomplete: cannot load {', '.join(missing)}")


DEFAULT_DATABYTES = 50 * 1024 * 1024


def setup(home: Home, me: str | None = None) -> list[str]:
    """
    Create or complete C{home}; never rewrite an existing file.

    @return: the paths created (empty when the home was complete).
    @raise OSError: an I/O error (the caller prints C{qmtwist setup: fatal: ...}, exit 111).
    @raise ModuleNotFoundError: a program's module is missing (L{checkPrograms}).
    """
    checkPrograms()  # before anything is created
    created: list[str] = []
    root = os.getuid() == 0

    def mkdir(path: str, mode: int = 0o755) -> None:
        if _mkdir(path, mode):
            created.append(path)

    def write(path: str, content: bytes, mode: int = 0o644) -> None:
        if _writeNew(path, content, mode):
            created.append(path)

    os.makedirs(home.path, exist_ok=True)
    for d in ("control", "users", "homes", "rules", "bin", "run"):
        mkdir(home.sub(d))
    name = me or defaultMe()
    fresh = not os.path.exists(home.sub("control", "me"))
    write(home.sub("control", "me"), name.encode() + b"\n")
    if fresh:
        # A new home gets a message size limit (qmail's default is none: databytes 0). An
        # existing home being completed keeps what its administrator chose.
        write(home.sub("control", "databytes"), b"%d\n" % DEFAULT_DATABYTES)
    domain = name.split(".", 1)[1] if "." in name else name
    write(home.sub("control", "defaultdomain"), domain.encode() + b"\n")
    write(home.sub("control", "plusdomain"), domain.encode() + b"\n")
    write(home.sub("control", "locals"), f"{name}\nlocalhost\n".encode())
    write(home.sub("control", "rcpthosts"), f"{name}\nlocalhost\n".encode())
    write(home.sub("control", "defaultdelivery"), b"./Maildir/\n")
    write(home.sub("users", "assign"), b"")
    write(home.sub("users", "passwd"), b"", 0o600)

    uid, gid = aliasOwner()
    mkdir(home.alias)
    for f in (".qmail-postmaster", ".qmail-mailer-daemon", ".qmail-root"):
        write(home.sub("alias", f), b"")
    mkdir(home.sub("alias", "Maildir"), 0o700)
    for sub in ("tmp", "new", "cur"):
        mkdir(home.sub("alias", "Maildir", sub), 0o700)
    if root and created:
        for dirpath, dirnames, filenames in os.walk(home.alias):
            for n in [dirpath] + [os.path.join(dirpath, x) for x in filenames]:
                os.lchown(n, uid, gid)

    created.extend(home.queue.create())
    for program in sorted(PROGRAMS):
        write(home.sub("bin", program), launcherText(home, program), 0o755)
    for alias in ("mailq", "newaliases"):
        link = home.sub("bin", alias)
        if os.path.exists(home.sub("bin", "sendmail")) and not os.path.lexists(link):
            os.symlink("sendmail", link)
            created.append(link)
    return created
