"""
C{HOME/bin/qmail-popup HOST CHECKPW SUBPROG...} and C{HOME/bin/qmail-pop3d MAILDIR} on
descriptors 0/1 (docs/behaviour/home.md 1.4), so FAQ 5.3's inetd and tcpserver lines work literally.

Both run the twistd listener's session classes with L{qmtwist.stdio.serveStdio}: qmail-popup is
L{POP3Server} with a L{CheckpasswordLogin} running C{CHECKPW SUBPROG...} (descriptor 3 carries
the login, the child's 0/1 are relayed); qmail-pop3d is L{Pop3dServer} over MAILDIR (relative to
the current directory, where checkpassword left us: the user's home).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred

from qmtwist.pop3.checkpassword import CheckpasswordLogin
from qmtwist.pop3.server import Pop3dServer, POP3Server
from qmtwist.pop3.transaction import NO_MAILDIR
from qmtwist.privsep import runningAsRoot
from qmtwist.stdio import serveStdio, sessionEnv
from qmtwist.tools.base import ProgramEnv


def popup(argv: list[str], env: ProgramEnv) -> int:
    """qmail-popup HOST CHECKPW SUBPROG... (FAQ 5.3)."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    if len(argv) < 3:
        env.stdout.write(b"-ERR usage: popup hostname subprogram\r\n")
        env.stdout.flush()
        return 1
    proto = POP3Server(CheckpasswordLogin(reactor, argv[2:]), reactor, os.fsencode(argv[1]),
                       os.getpid(), deferToThread)
    proto.env = sessionEnv(env.environ)

    def child() -> Deferred[Any] | None:
        # qmail-popup waits for its child; the child sees EOF and changes nothing
        relay = proto.relay
        return relay.ended if relay is not None and not relay.ended.called else None

    return serveStdio(proto, env, reactor, child)


def pop3d(argv: list[str], env: ProgramEnv) -> int:
    """qmail-pop3d MAILDIR: run by checkpassword in the user's home, as the user."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    if runningAsRoot():
        return 1  # never serve uid 0 (docs/behaviour/pop3.md 10.3): the login fails
    if len(argv) < 2 or not argv[1]:
        env.stdout.write(NO_MAILDIR)
        env.stdout.flush()
        return 0
    return serveStdio(Pop3dServer(os.path.abspath(argv[1]), reactor, deferToThread), env, reactor)
