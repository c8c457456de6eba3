"""Run the HOME/bin launchers as real child processes, against this source tree."""

from __future__ import annotations

import os
import subprocess

import pytest

from qmtwist.home import Home, setup

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def childEnv(**extra: str) -> dict[str, str]:
    """A clean environment whose python imports qmtwist from this tree (not a stale install)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": ROOT,
           "LANG": "C.UTF-8"}
    env.update(extra)
    return env


def run(home: Home, program: str, args: list[str], stdin: bytes = b"",
        **environ: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([os.path.join(home.bin, program), *args], input=stdin,
                          capture_output=True, env=childEnv(**environ), timeout=60)


def queued(home: Home) -> list[tuple[bytes, bytes]]:
    """(todo envelope, mess content) for each committed message."""
    layout = home.queue
    out = []
    for name in os.listdir(layout.sub("todo")):
        n = int(name)
        with open(layout.todo(n), "rb") as f, open(layout.mess(n), "rb") as g:
            out.append((f.read(), g.read()))
    return out


def envelopeTail(todo: bytes) -> bytes:
    """The todo file without its u and p records: C{F...\\0T...\\0}."""
    return todo.split(b"\0", 2)[2]


@pytest.fixture
def lhome(home: Home) -> Home:
    """The home fixture with launchers for every module of this tree."""
    setup(home)
    return home
