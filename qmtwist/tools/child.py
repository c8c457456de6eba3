"""
Running a program from a C{bin/} tool: preline, condredirect, bouncesaying and except.

The child gets the tool's own descriptors when they are real files (so a delivery's seekable
stdin stays seekable and condredirect can rewind it), otherwise pipes that are pumped from and
to the in-memory streams of L{qmtwist.tools.base.ProgramEnv}.
"""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import threading
from typing import BinaryIO

from qmtwist.tools.base import ProgramEnv

# qmail's error_temp(): errors that may go away by themselves.
_TEMPORARY = frozenset({
    errno.EINTR, errno.ENOMEM, errno.ETXTBSY, errno.EIO, errno.ETIMEDOUT, errno.EAGAIN,
    errno.EWOULDBLOCK, errno.ENFILE, errno.EMFILE, errno.EFBIG, errno.ENOSPC, errno.ESTALE,
    errno.EDEADLK, errno.ENETDOWN, errno.ENETUNREACH, errno.ECONNREFUSED, errno.EHOSTUNREACH,
    errno.EHOSTDOWN, errno.ENOLCK, errno.EDQUOT})


def isTemporary(error: OSError) -> bool:
    """qmail's error_temp."""
    return error.errno in _TEMPORARY


def fileno(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined,no-any-return]
    except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
        return None


def _pump(source: BinaryIO, sink: BinaryIO) -> None:
    while True:
        chunk = source.read(65536)
        if not chunk:
            break
        sink.write(chunk)
    sink.flush()


def _feed(pipe: BinaryIO, prefix: bytes, source: BinaryIO | None) -> None:
    try:
        pipe.write(prefix)
        if source is not None:
            _pump(source, pipe)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def run(argv: list[str], env: ProgramEnv, prefix: bytes = b"",
        stdin: BinaryIO | None = None, environ: dict[str, str] | None = None) -> int:
    """
    Run C{argv} (found on C{PATH}) with stdin = C{prefix} + C{stdin} (default the tool's).

    @return: the exit code, or a negative signal number when the child was killed.
    @raise OSError: the program could not be started (see L{isTemporary}).
    """
    source = env.stdin if stdin is None else stdin
    inFd = fileno(source) if not prefix else None
    outFd, errFd = fileno(env.stdout), fileno(env.stderr)
    env.stdout.flush()
    env.stderr.flush()
    child = subprocess.Popen(
        argv,
        stdin=inFd if inFd is not None else subprocess.PIPE,
        stdout=outFd if outFd is not None else subprocess.PIPE,
        stderr=errFd if errFd is not None else subprocess.PIPE,
        env=env.environ if environ is None else environ,
        restore_signals=True,
        preexec_fn=lambda: signal.signal(signal.SIGPIPE, signal.SIG_DFL),
    )
    threads = []
    if child.stdin is not None:
        threads.append(threading.Thread(target=_feed, args=(child.stdin, prefix, source)))
    if child.stdout is not None:
        threads.append(threading.Thread(target=_pump, args=(child.stdout, env.stdout)))
    if child.stderr is not None:
        threads.append(threading.Thread(target=_pump, args=(child.stderr, env.stderr)))
    for t in threads:
        t.daemon = True
        t.start()
    code = child.wait()
    for t in threads:
        t.join()
    return code


def rewind(stream: BinaryIO) -> None:
    """Seek the message back to its start (the descriptor and the Python buffer)."""
    fd = fileno(stream)
    if fd is not None:
        os.lseek(fd, 0, os.SEEK_SET)
    stream.seek(0)


def fatal(env: ProgramEnv, program: str, code: int, text: str) -> int:
    env.warn(f"{program}: fatal: {text}")
    return code


def runCondition(program: str, argv: list[str], env: ProgramEnv) -> tuple[int, int | None]:
    """
    Run the test program of condredirect, bouncesaying or except.

    @return: C{(exit code, None)}, or C{(code, exit status to return now)} when the child
        crashed or failed temporarily (111), which qmail's programs report and pass on as 111.
    """
    try:
        code = run(argv, env)
    except OSError as e:
        code = 111 if isTemporary(e) else 100
    if code < 0:
        return code, fatal(env, program, 111, "child crashed")
    if code == 111:
        return code, fatal(env, program, 111, "temporary child error")
    return code, None
