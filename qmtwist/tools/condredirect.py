"""
condredirect: forward the message elsewhere when a program says so (docs/behaviour/tools.md 13).

Replaces qmail's condredirect. C{condredirect newaddr prog [arg ...]} runs prog on the message;
if it exits 0, the message (rewound) is queued with C{DTLINE} to newaddr, envelope sender
C{SENDER}, C{condredirect: qp <qp>} is printed and the exit code is 99 (later .qmail lines are
skipped). prog exiting 111 (or crashing) gives 111; any other code, or a program that cannot be
run for a permanent reason, gives 0.
"""

from __future__ import annotations

from qmtwist.tools import child
from qmtwist.tools.base import ProgramEnv
from qmtwist.tools.forward import forwardMessage

USAGE = "condredirect: usage: condredirect newaddress program [ arg ... ]"


def main(argv: list[str], env: ProgramEnv) -> int:
    if len(argv) < 3:
        env.warn(USAGE)
        return 100
    code, failed = child.runCondition("condredirect", argv[2:], env)
    if failed is not None:
        return failed
    if code != 0:
        return 0
    try:
        child.rewind(env.stdin)
    except OSError as e:
        return child.fatal(env, "condredirect", 111, f"unable to rewind: {e.strerror}")
    result = forwardMessage("condredirect", env, "SENDER", [argv[1]])
    return 99 if result == 0 else result
