"""
except: turn a program's success into a bounce (SPEC.md 13).

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
    try:
        code = child.run(argv[1:], env)
    except OSError as e:
        code = 111 if child.isTemporary(e) else 100
    if code < 0:
        return child.fatal(env, "except", 111, "child crashed")
    if code == 0:
        return 100
    if code == 111:
        return child.fatal(env, "except", 111, "temporary child error")
    return 0
