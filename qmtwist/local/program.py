"""
Program deliveries (qmail-local's mailprogram, docs/behaviour/local.md 4.4): C{/bin/sh -c LINE} started with
C{reactor.spawnProcess}, the message as a seekable standard input, stdout and stderr together
in one temporary file (so their order is kept and nothing can fill a pipe), exit code -> outcome.

The command line is the user's own C{.qmail} text; address text reaches it only through the
environment. A C{umask 077} line runs first (spawnProcess has no umask of its own); Twisted
resets ignored signals, so the program gets SIGPIPE with its default action.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol

from qmtwist.delivery import Outcome

PERMANENT_CODES = {64, 65, 70, 76, 77, 78, 100, 112}
CRASHED = b"Aack, child crashed. (#4.3.0)\n"
OUTPUT_LIMIT = 4096


@frozen
class ProgramResult:
    """
    @ivar outcome: success, failure (permanent) or deferral.
    @ivar stop: later lines must not run (99, or any failure).
    @ivar output: what the program wrote (capped), plus qmail's own text when it crashed.
    """

    outcome: Outcome
    stop: bool
    output: bytes


KILL_GRACE = 10.0
TIMED_OUT = b"Program ran longer than %d seconds (control/timeoutlocal); killed. (#4.3.0)\n"


def classify(exitCode: int | None, output: bytes) -> ProgramResult:
    """Map an exit status (C{None}: killed by a signal) to the result of docs/behaviour/local.md 4.4."""
    if exitCode is None:
        return ProgramResult(Outcome.DEFERRAL, True, output + CRASHED)
    if exitCode == 0:
        return ProgramResult(Outcome.SUCCESS, False, output)
    if exitCode == 99:
        return ProgramResult(Outcome.SUCCESS, True, output)
    if exitCode in PERMANENT_CODES:
        return ProgramResult(Outcome.FAILURE, True, output)
    return ProgramResult(Outcome.DEFERRAL, True, output)


class _Waiter(ProcessProtocol):
    def __init__(self) -> None:
        self.done: Deferred[int | None] = Deferred()

    def processEnded(self, reason: Any) -> None:
        v = reason.value
        if isinstance(v, ProcessDone):
            self.done.callback(0)
        elif isinstance(v, ProcessTerminated) and v.signal is None and v.exitCode is not None:
            self.done.callback(v.exitCode)
        else:
            self.done.callback(None)


def _readOutput(fd: int) -> bytes:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, OUTPUT_LIMIT)
    finally:
        os.close(fd)


def _prepareFds(stdinFd: int) -> tuple[int, int]:
    """On a thread: the message rewound for the program, and an anonymous file for its output."""
    os.lseek(stdinFd, 0, os.SEEK_SET)
    out, outPath = tempfile.mkstemp(prefix="qmtwist-out.")
    os.unlink(outPath)
    return stdinFd, out


async def run(
    reactor: Any,
    command: bytes,
    stdinFd: int,
    env: dict[bytes, bytes],
    cwd: str,
    runInThread: Any,
    running: set[Any] | None = None,
    timeout: float | None = None,
) -> ProgramResult:
    """
    Run one program delivery.

    A program still running after C{timeout} seconds (C{control/timeoutlocal}) gets SIGTERM,
    then SIGKILL L{KILL_GRACE} seconds later, and the delivery is deferred with L{TIMED_OUT}: one
    program that never exits cannot hold a delivery slot for ever [qmtwist].

    @param stdinFd: a descriptor of the message as queued (qmail-local's descriptor 0): the
        program gets it rewound to offset 0 as its seekable standard input; the caller keeps
        and closes it.
    @param running: a set the process transport is kept in while it runs (for L{stop}).
    """
    try:
        stdin, out = await runInThread(lambda: _prepareFds(stdinFd))
    except OSError as e:
        return ProgramResult(Outcome.DEFERRAL, True,
                             b"Unable to read message: %s. (#4.3.0)\n" % os.fsencode(str(e)))
    waiter = _Waiter()
    try:
        transport = reactor.spawnProcess(
            waiter, "/bin/sh", [b"/bin/sh", b"-c", b"umask 077\n" + command], env=env,
            path=cwd, childFDs={0: stdin, 1: out, 2: out})
    except Exception as e:
        os.close(out)
        return ProgramResult(Outcome.DEFERRAL, True,
                             b"Unable to run /bin/sh: %s. (#4.3.0)\n" % str(e).encode())
    if running is not None:
        running.add(transport)
    timedOut: list[bool] = []
    timers: list[Any] = []

    def signal(name: str) -> None:
        try:
            transport.signalProcess(name)
        except Exception:
            pass  # it has ended meanwhile

    def expire() -> None:
        timedOut.append(True)
        signal("TERM")
        timers.append(reactor.callLater(KILL_GRACE, signal, "KILL"))

    if timeout is not None and timeout > 0:
        timers.append(reactor.callLater(timeout, expire))
    try:
        code = await waiter.done
    finally:
        for t in timers:
            if t.active():
                t.cancel()
        if running is not None:
            running.discard(transport)
    output = await runInThread(lambda: _readOutput(out))
    if timedOut:
        return ProgramResult(Outcome.DEFERRAL, True, output + TIMED_OUT % int(timeout or 0))
    return classify(code, output)
