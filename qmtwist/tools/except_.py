"""
except: turn a program's success into a bounce (docs/behaviour/tools.md 13).

Replaces qmail's except. Runs prog; exit 0 → 100, exit 111 (or a crash) → 111, anything else
→ 0.
"""

from __future__ import annotations

from qmtwist.tools import child
from qmtwist.tools.base import ProgramEnv

USAGE = "except: usage: except program [ arg ... ]"


def main(argv: list[str], env: ProgramEnv) -> int:
    if len(argv) < 2:
        env.warn(USAGE)
        return 100
    code, failed = child.runCondition("except", argv[1:], env)
    if failed is not None:
        return failed
    return 100 if code == 0 else 0
