"""
Privilege separation for the children a root daemon starts as a user (docs/behaviour/local.md
3.3 "Privileges: where a delivery runs", docs/behaviour/pop3.md 10.4): the local delivery helpers
(L{qmtwist.local.helper} starting L{qmtwist.local.child}) and the POP3 sessions after a built-in
login (L{qmtwist.pop3.checkpassword.BuiltinLogin} starting L{qmtwist.pop3.child}).

Both halves live here so that the two children follow one rule:

 - the daemon side, L{spawnAsUser}: exec first, as root, in C{/}, with C{python -P} and this
   checkout on C{PYTHONPATH} (nothing the user can write is ever on the import path while the
   child is root), and C{--drop UID GID} on the command line. Never C{spawnProcess(uid=, gid=)}:
   Twisted then calls C{initgroups()} and so C{getpwuid()} between fork and exec, and in this
   multithreaded daemon an NSS lookup running on a pool thread at the moment of the fork leaves
   the forked copy of libc inconsistent (a helper died there with SIGSEGV). Without uid and gid
   nothing but chdir and exec runs in the forked copy. uid 0 is refused before anything starts.
 - the child side, L{dropFromArgv} and L{dropPrivileges}: in the freshly exec'd, single-threaded
   child, qmail's prot_gid + prot_uid (the one group of the assignment, then the gid and the
   uid), a check that uid 0 cannot come back, and L{runningAsRoot} for the final refusal.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.interfaces import IProcessProtocol, IProcessTransport

import qmtwist

#: The directory holding the C{qmtwist} package: the child imports this very checkout.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(qmtwist.__file__)))


class RootRefused(Exception):
    """A child was asked to run as uid 0: no delivery and no POP3 session ever does."""


def withPackagePath(env: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """C{env} with L{PACKAGE_ROOT} first on C{PYTHONPATH} (C{-P} keeps the cwd off the path)."""
    env = dict(env)
    old = env.get(b"PYTHONPATH")
    env[b"PYTHONPATH"] = os.fsencode(PACKAGE_ROOT) + (b":" + old if old else b"")
    return env


def spawnAsUser(
    reactor: Any, protocol: IProcessProtocol, python: str, module: str, uid: int, gid: int,
    args: list[str], env: dict[bytes, bytes], childFDs: dict[int, Any],
) -> IProcessTransport:
    """
    Start C{python -P -m MODULE --drop UID GID ARGS...} as root in C{/}; the child drops to
    C{uid}/C{gid} itself right after exec (see the module docstring for why).

    @raise RootRefused: C{uid} is 0; nothing is started.
    """
    if uid == 0:
        raise RootRefused(module)
    argv = [python, "-P", "-m", module, "--drop", str(uid), str(gid), *args]
    transport: IProcessTransport = reactor.spawnProcess(
        protocol, python, argv, env=withPackagePath(env), path="/", childFDs=childFDs)
    return transport


def dropPrivileges(uid: int, gid: int, who: str) -> None:
    """
    qmail's prot_gid + prot_uid: the one group of the assignment (no supplementary groups of
    whatever account owns that uid), then the gid and the uid; refuse uid 0 and check that it
    cannot come back.

    @param who: the program's name for the messages.
    @raise SystemExit: uid 0 asked for, or the uid could be regained.
    """
    if uid == 0:
        raise SystemExit(f"{who}: refusing to run as root")
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SystemExit(f"{who}: privileges could not be dropped")


def dropFromArgv(argv: list[str], who: str) -> list[str]:
    """
    The child's side of L{spawnAsUser}: when C{argv} starts with C{--drop UID GID}, drop to
    them (L{dropPrivileges}); return the arguments after them (all of C{argv} otherwise).
    """
    if argv[:1] == ["--drop"] and len(argv) >= 3:
        dropPrivileges(int(argv[1]), int(argv[2]), who)
        return argv[3:]
    return argv


def runningAsRoot() -> bool:
    """Whether the real or the effective uid is 0: a child that is must not go on."""
    return os.getuid() == 0 or os.geteuid() == 0
