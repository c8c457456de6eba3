"""
The per-session qmail-pop3d child the daemon starts for the built-in checker when it runs as root
(docs/behaviour/pop3.md 10.4): C{python -P -m qmtwist.pop3.child --drop UID GID --home HOME MAILDIR}.

It starts as root in C{/} (never in the user's home: nothing the user can write may be on
C{sys.path} while it is root, hence also C{-P}), imports everything the session needs, becomes
the user, and only then enters HOME and reads a byte from the client or the Maildir. uid 0 is
never served.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    from twisted.internet import reactor, stdio, threads  # noqa: F401  (before any drop)

    from qmtwist.home import Home
    from qmtwist.local.child import dropPrivileges
    from qmtwist.pop3.stdio import pop3d
    from qmtwist.tools.base import ProgramEnv

    argv = sys.argv[1:] if argv is None else argv
    reactor.getThreadPool()  # import the pool's modules while they can still be read
    if argv[:1] == ["--drop"] and len(argv) >= 3:
        dropPrivileges(int(argv[1]), int(argv[2]))
        argv = argv[3:]
    if os.getuid() == 0 or os.geteuid() == 0:
        return 1
    if argv[:1] == ["--home"] and len(argv) >= 2:
        os.chdir(argv[1])
        argv = argv[2:]
    return pop3d(["qmail-pop3d", *argv], ProgramEnv(Home(os.getcwd())))


if __name__ == "__main__":
    sys.exit(main())
