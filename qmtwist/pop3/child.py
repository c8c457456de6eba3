"""
The per-session qmail-pop3d child the daemon starts for the built-in checker when it runs as root
(docs/behaviour/pop3.md 10.4): C{python -P -m qmtwist.pop3.child --drop UID GID --home HOME MAILDIR},
started by L{qmtwist.pop3.checkpassword.BuiltinLogin} through L{qmtwist.privsep.spawnAsUser}.

It starts as root in C{/} (never in the user's home: nothing the user can write may be on
C{sys.path} while it is root, hence also C{-P}), imports everything the session needs, becomes
the user (L{qmtwist.privsep.dropFromArgv}), and only then enters HOME and reads a byte from the
client or the Maildir. uid 0 is never served: exit 1, a refused login.
"""

from __future__ import annotations

import os
import sys
from typing import Any

WHO = "qmtwist pop3 child"


def main(argv: list[str] | None = None) -> int:
    """Drop to C{--drop UID GID}, enter C{--home HOME}, serve MAILDIR on descriptors 0/1."""
    from twisted.internet import reactor as _reactor, stdio, threads  # noqa: F401  (before any drop)

    from qmtwist.home import Home
    from qmtwist.pop3.stdio import pop3d
    from qmtwist.privsep import dropFromArgv, runningAsRoot
    from qmtwist.tools.base import ProgramEnv

    reactor: Any = _reactor
    reactor.getThreadPool()  # imports the pool's modules while they can still be read
    argv = dropFromArgv(sys.argv[1:] if argv is None else argv, WHO)
    if runningAsRoot():
        return 1
    if argv[:1] == ["--home"] and len(argv) >= 2:
        os.chdir(argv[1])
        argv = argv[2:]
    return pop3d(["qmail-pop3d", *argv], ProgramEnv(Home(os.getcwd())))


if __name__ == "__main__":
    sys.exit(main())
