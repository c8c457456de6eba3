"""
What every qmail program of C{bin/} gets: its home and its standard streams.

Programs are plain functions C{main(argv, env) -> exit code}, so tests call them with in-memory
streams and the launchers in C{HOME/bin} call them with the real ones.
"""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

from attrs import define, field

from qmtwist.home import Home


@define
class ProgramEnv:
    """
    @ivar home: the home this program serves.
    @ivar environ: the process environment (text, as C{os.environ}).
    @ivar stdin, stdout, stderr: binary streams.
    """

    home: Home
    environ: dict[str, str] = field(factory=lambda: dict(os.environ))
    stdin: BinaryIO = field(factory=lambda: sys.stdin.buffer)
    stdout: BinaryIO = field(factory=lambda: sys.stdout.buffer)
    stderr: BinaryIO = field(factory=lambda: sys.stderr.buffer)

    def warn(self, text: str) -> None:
        """Write one line to stderr."""
        self.stderr.write(text.encode("utf-8", "replace") + b"\n")
        self.stderr.flush()
