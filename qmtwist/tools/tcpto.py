"""
C{qmail-tcpto}: print the remote host timeout table (docs/behaviour/remote.md 11.6).

One line per address with a nonzero counter:
C{⟨ip⟩ timed out ⟨seconds⟩ seconds ago; # recent timeouts: ⟨k⟩}. Exit 0, or 111 with
C{qmail-tcpto: fatal: ⟨reason⟩} on stderr.
"""

from __future__ import annotations

import time

from qmtwist.remote import tcpto
from qmtwist.tools.base import ProgramEnv


def main(argv: list[str], env: ProgramEnv) -> int:
    try:
        table = tcpto.read(env.home.queue.tcpto)
    except OSError as e:
        env.warn(f"qmail-tcpto: fatal: unable to read {env.home.queue.tcpto}: {e.strerror}")
        return 111
    now = time.time()
    for entry in sorted(table.values(), key=lambda e: e.ip):
        ago = max(0, int(now - entry.last))
        env.stdout.write(
            f"{entry.ip} timed out {ago} seconds ago; # recent timeouts: {entry.count}\n".encode()
        )
    env.stdout.flush()
    return 0
