"""
C{HOME/bin/tcp-env [-rR] [-t N] PROG ARGS...}: set the tcp-environ from the socket on descriptor 0
and exec PROG (qmail's tcp-env; docs/behaviour/home.md 1.4, FAQ 5.2, 5.4).

Sets C{PROTO=TCP}, C{TCPLOCALIP}, C{TCPLOCALPORT}, C{TCPREMOTEIP}, C{TCPREMOTEPORT}; variables
already in the environment (e.g. from tcpd's C{setenv}) other than those are kept. No DNS or ident
lookups are made: C{TCPREMOTEHOST}, C{TCPLOCALHOST} and C{TCPREMOTEINFO} are left as found
(qmail's tcp-env looks them up unless told not to) [qmtwist]. When descriptor 0 is not a TCP
socket the variables are left unset and PROG still runs. Exit 111 when PROG cannot be run.
"""

from __future__ import annotations

import os
import socket

from qmtwist.tools.base import ProgramEnv


def socketEnv(fd: int) -> dict[str, str]:
    """The tcp-environ for the connected socket C{fd}, or C{{}} when it is not one."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return {}
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return {}
        local = sock.getsockname()
        remote = sock.getpeername()
    except OSError:
        return {}
    finally:
        sock.close()
    return {"PROTO": "TCP", "TCPLOCALIP": local[0], "TCPLOCALPORT": str(local[1]),
            "TCPREMOTEIP": remote[0], "TCPREMOTEPORT": str(remote[1])}


def main(argv: list[str], env: ProgramEnv) -> int:
    """Set the variables and exec the program; returns only on failure."""
    args = argv[1:]
    while args and args[0].startswith("-") and args[0] != "--":
        opt = args.pop(0)
        if opt == "-t" and args:
            args.pop(0)
        elif opt.startswith("-t") or set(opt[1:]) <= set("rR"):
            continue
        else:
            env.warn("tcp-env: usage: tcp-env [ -rR ] [ -t timeout ] program")
            return 100
    if args and args[0] == "--":
        args.pop(0)
    if not args:
        env.warn("tcp-env: usage: tcp-env [ -rR ] [ -t timeout ] program")
        return 100
    environ = dict(env.environ)
    environ.update(socketEnv(env.stdin.fileno()))
    try:
        env.stdout.flush()
        os.execvpe(args[0], args, environ)
    except OSError as e:
        env.warn(f"tcp-env: fatal: unable to run {args[0]}: {e.strerror}")
        return 111
    return 111  # pragma: no cover
