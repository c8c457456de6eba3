"""
C{qmail-tcpok}: empty the remote host timeout table (docs/behaviour/remote.md 11.6).

Exit 0, or 111 with C{qmail-tcpok: fatal: ⟨reason⟩} on stderr. A running queue service sees
the change at its next connection (the table is re-read when its mtime changes).
"""

from __future__ import annotations

from qmtwist.remote import tcpto
from qmtwist.tools.base import ProgramEnv


def main(argv: list[str], env: ProgramEnv) -> int:
    try:
        tcpto.write(env.home.queue.tcpto, {})
    except OSError as e:
        env.warn(f"qmail-tcpok: fatal: unable to write {env.home.queue.tcpto}: {e.strerror}")
        return 111
    return 0
