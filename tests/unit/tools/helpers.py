"""Run a program's main() with in-memory streams."""

from __future__ import annotations

import io

from attrs import frozen

from qmtwist.home import Home
from qmtwist.tools.base import ProgramEnv


@frozen
class Result:
    code: int
    out: bytes
    err: bytes


def runMain(main, home: Home, argv: list[str], stdin: bytes = b"", **environ: str) -> Result:
    out, err = io.BytesIO(), io.BytesIO()
    env = ProgramEnv(home, environ=dict(environ), stdin=io.BytesIO(stdin), stdout=out,
                     stderr=err)
    code = main(argv, env)
    return Result(code, out.getvalue(), err.getvalue())


def queuedMessages(home: Home) -> list[tuple[bytes, bytes]]:
    """(todo envelope bytes, mess content) of every message in todo/, by id."""
    import os

    layout = home.queue
    out = []
    for name in sorted(os.listdir(layout.sub("todo")), key=int):
        n = int(name)
        with open(layout.todo(n), "rb") as f:
            env = f.read()
        with open(layout.mess(n), "rb") as f:
            mess = f.read()
        out.append((env, mess))
    return out


def stripReceived(mess: bytes) -> bytes:
    assert mess.startswith(b"Received: (qmail ")
    return mess.split(b"\n", 1)[1]
