"""
Run C{twistd -n qmtwist} as a real child process and watch its log: shared by integration tests.
The waits are those of L{tests.support} (L{waitFor} is imported from there for the tests that
import it from here); L{Daemon.waitFor} and L{Daemon.until} add the child's exit and log to them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Callable, TypeVar

from tests.support import until, waitFor

__all__ = ["TWISTD", "Daemon", "twistdWith", "waitFor"]

T = TypeVar("T")

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def twistdWith(prelude: str) -> list[str]:
    """
    The twistd command with C{prelude} (Python source) run first in the child: a test's way to
    give the daemon what no option sets, such as slower fsyncs or shorter DNS timeouts.
    """
    return [sys.executable, "-c", prelude + "\nfrom twisted.scripts.twistd import run\nrun()\n"]


class Daemon:
    """One twistd qmtwist child with its log in C{logPath}."""

    def __init__(self, cwd: str, args: list[str], logPath: str,
                 twistd: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.cwd = cwd
        self.args = args
        self.logPath = logPath
        self.twistd = twistd or TWISTD
        #: the child's environment (L{None}: this process's)
        self.env = env
        self.proc: subprocess.Popen | None = None
        self._offset = 0

    def start(self) -> None:
        self._offset = os.path.getsize(self.logPath) if os.path.exists(self.logPath) else 0
        log = open(self.logPath, "ab")
        self.proc = subprocess.Popen(
            self.twistd + ["-n", "--pidfile=", "qmtwist", *self.args],
            cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=self.env)
        log.close()

    def lines(self, all_: bool = False) -> list[str]:
        """Log message texts (timestamp and namespace cut) since the last start."""
        with open(self.logPath, "rb") as f:
            if not all_:
                f.seek(self._offset)
            data = f.read().decode("utf-8", "replace")
        out = []
        for line in data.splitlines():
            if "] " in line and line[:4].isdigit():
                out.append(line.split("] ", 1)[1])
            else:
                out.append(line)
        return out

    def tail(self, count: int = 40) -> str:
        """The last C{count} log lines, for a failure message."""
        return "\n".join(self.lines()[-count:])

    def _watched(self, predicate: Callable[[], T], what: str) -> Callable[[], T]:
        """C{predicate}, failing at once (with the log) when the child has exited."""
        def check() -> T:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"twistd exited {self.proc.returncode} while waiting for "
                                     f"{what}:\n{self.tail(30)}")
            return predicate()

        return check

    def waitFor(self, predicate: Callable[[], T], what: str, deadline: float = 30.0) -> T:
        """L{tests.support.waitFor} while this child runs; a timeout shows its log."""
        return waitFor(self._watched(predicate, what), what, deadline, context=self.tail)

    async def until(self, predicate: Callable[[], T], what: str, deadline: float = 30.0) -> T:
        """L{tests.support.until} (on the running reactor) while this child runs."""
        return await until(self._watched(predicate, what), what, deadline, context=self.tail)

    def waitLine(self, text: str, deadline: float = 30.0) -> None:
        self.waitFor(lambda: any(text in line for line in self.lines()), f"log line {text!r}",
                     deadline)

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, deadline: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(deadline)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("twistd did not stop")
