"""
C{HOME/bin/qmail-popup HOST CHECKPW SUBPROG...} and C{HOME/bin/qmail-pop3d MAILDIR} on
descriptors 0/1 (docs/behaviour/home.md 1.4), so FAQ 5.3's inetd and tcpserver lines work literally.

Both run the twistd listener's session classes on L{StandardIO}: qmail-popup is L{POP3Server}
with a L{CheckpasswordLogin} running C{CHECKPW SUBPROG...} (descriptor 3 carries the login, the
child's 0/1 are relayed); qmail-pop3d is L{Pop3dServer} over MAILDIR (relative to the current
directory, where checkpassword left us: the user's home).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.stdio import StandardIO
from twisted.python.failure import Failure

from qmtwist.pop3.checkpassword import CheckpasswordLogin
from qmtwist.pop3.server import Pop3dServer, POP3Server
from qmtwist.pop3.transaction import NO_MAILDIR
from qmtwist.tools.base import ProgramEnv


def _run(reactor: Any, proto: Any, env: ProgramEnv) -> None:
    original = proto.connectionLost

    def lost(reason: Failure = None) -> None:  # type: ignore[assignment]
        original(reason)
        relay = getattr(proto, "relay", None)
        if relay is not None and not relay.ended.called:
            # qmail-popup waits for its child; the child sees EOF and changes nothing
            relay.ended.addBoth(lambda _: reactor.callLater(0, reactor.stop))
        else:
            reactor.callLater(0, reactor.stop)

    proto.connectionLost = lost
    StandardIO(proto, stdin=env.stdin.fileno(), stdout=env.stdout.fileno(), reactor=reactor)
    reactor.run()


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
    proto.env = {k: os.fsencode(v) for k, v in env.environ.items()}
    _run(reactor, proto, env)
    return 0


def pop3d(argv: list[str], env: ProgramEnv) -> int:
    """qmail-pop3d MAILDIR: run by checkpassword in the user's home, as the user."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    if os.getuid() == 0:
        return 1  # never serve uid 0 (docs/behaviour/pop3.md 10.3): the login fails
    if len(argv) < 2 or not argv[1]:
        env.stdout.write(NO_MAILDIR)
        env.stdout.flush()
        return 0
    proto = Pop3dServer(os.path.abspath(argv[1]), reactor, deferToThread)
    _run(reactor, proto, env)
    return 0
