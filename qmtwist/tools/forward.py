"""
forward: queue the message to other addresses (docs/behaviour/tools.md 13, FAQ 4.1).

Replaces qmail's forward. Message = C{DTLINE} + stdin; envelope sender = C{NEWSENDER};
recipients = the arguments, unchanged. Prints C{forward: qp <qp>} on stderr and exits 0 once
queued; 100 for a missing variable or a permanent queue error, 111 for a temporary one.
"""

from __future__ import annotations

import os

from qmtwist.errors import QueueError
from qmtwist.tools import child
from qmtwist.tools.base import ProgramEnv
from qmtwist.tools.queueclient import queueMessage
from qmtwist.tools.streams import Prepended


def forwardMessage(program: str, env: ProgramEnv, senderVar: str, recipients: list[str]) -> int:
    """
    Queue C{DTLINE} + stdin from the environment variable C{senderVar} to C{recipients}.

    @return: 0 when queued (after printing C{<program>: qp <qp>}), else the exit code.
    """
    if senderVar not in env.environ:
        return child.fatal(env, program, 100, f"{senderVar} not set")
    if "DTLINE" not in env.environ:
        return child.fatal(env, program, 100, "DTLINE not set")
    sender = os.fsencode(env.environ[senderVar])
    dtline = os.fsencode(env.environ["DTLINE"])
    try:
        accepted = queueMessage(
            env.home, env.environ, sender, [os.fsencode(r) for r in recipients],
            Prepended(dtline, env.stdin))
    except QueueError as e:
        return child.fatal(env, program, 100 if e.permanent else 111, e.text)
    env.warn(f"{program}: qp {accepted.qp}")
    return 0


def main(argv: list[str], env: ProgramEnv) -> int:
    if argv[1:] == ["--help"]:
        env.stdout.write(b"forward: usage: forward address [ address ... ]\n")
        return 0
    return forwardMessage("forward", env, "NEWSENDER", argv[1:])
