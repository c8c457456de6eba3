"""
Run C{twistd -n qmtwist} as a real child process and watch its log: shared by integration tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def waitFor(predicate, what: str, deadline: float = 30.0, interval: float = 0.05):
    """Poll outside state until C{predicate()} is true; fail naming C{what}."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


class Daemon:
    """One twistd qmtwist child with its log in C{logPath}."""

    def __init__(self, cwd: str, args: list[str], logPath: str,
                 twistd: list[str] | None = None) -> None:
        self.cwd = cwd
        self.args = args
        self.logPath = logPath
        self.twistd = twistd or TWISTD
        self.proc: subprocess.Popen | None = None
        self._offset = 0

    def start(self) -> None:
        self._offset = os.path.getsize(self.logPath) if os.path.exists(self.logPath) else 0
        log = open(self.logPath, "ab")
        self.proc = subprocess.Popen(
            self.twistd + ["-n", "--pidfile=", "qmtwist", *self.args],
            cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
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

    def waitLine(self, text: str, deadline: float = 30.0) -> None:
        def seen():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"twistd exited {self.proc.returncode} before logging {text!r}:\n"
                    + "\n".join(self.lines()[-30:]))
            return any(text in line for line in self.lines())

        waitFor(seen, f"log line {text!r}", deadline)

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
