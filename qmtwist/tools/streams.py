"""
Small stream helpers for the programs of C{bin/}: a binary input with bytes put in front.

datemail puts its Date line before the message; preline puts its three lines before it.
"""

from __future__ import annotations

from typing import BinaryIO


class Prepended:
    """A readable binary stream: C{head}, then whatever C{tail} still holds."""

    def __init__(self, head: bytes, tail: BinaryIO) -> None:
        self.head = head
        self.tail = tail

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            data, self.head = self.head, b""
            return data + self.tail.read()
        if self.head:
            data, self.head = self.head[:n], self.head[n:]
            return data
        return self.tail.read(n)

    def readline(self, limit: int = -1) -> bytes:
        if self.head:
            nl = self.head.find(b"\n")
            if nl >= 0:
                line, self.head = self.head[: nl + 1], self.head[nl + 1:]
                return line
            line, self.head = self.head, b""
            return line + self.tail.readline()
        return self.tail.readline()

    def fileno(self) -> int:
        raise OSError("no descriptor")


def copyStream(source: BinaryIO, write, size: int = 65536) -> int:  # type: ignore[no-untyped-def]
    """Copy C{source} to the callable C{write} until EOF; return the byte count."""
    total = 0
    while True:
        chunk = source.read(size)
        if not chunk:
            return total
        write(chunk)
        total += len(chunk)
