"""
The queued message as local delivery reads it: an open descriptor read in chunks, never whole.

qmail-lspawn hands qmail-local the message on descriptor 0 and every delivery copies it from
there; local delivery here does the same. A L{QueuedMessage} is one open, read-only descriptor of
the queue's mess file: the daemon opens it (as root it is then passed to the per-user helper,
which cannot open the queue itself), Maildir and mbox writers copy it in L{CHUNK}-sized pieces
with C{pread}, and programs get it as their seekable standard input. Memory per delivery is
therefore a few chunks, whatever the message size (docs/behaviour/local.md 4.4, 4.7, 4.8).

Everything here does file I/O: call it on a thread, never on the reactor thread.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Iterator

from qmtwist.errors import TemporaryFailure

CHUNK = 65536

_FROM = re.compile(rb"^>*From ", re.M)
_GT = re.compile(rb">*")
# A run of ">" longer than this at a line start is sent as it is, not held for the decision.
_MAX_UNDECIDED = CHUNK


class QueuedMessage:
    """
    One open read-only descriptor of a queued message; reads never move a shared offset.

    @ivar fd: the descriptor; L{close} closes it.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, path: str) -> QueuedMessage:
        """@raise TemporaryFailure: qmail-local's C{Unable to read message} text."""
        try:
            return cls(os.open(path, os.O_RDONLY | os.O_NOCTTY))
        except OSError as e:
            raise TemporaryFailure(f"Unable to read message: {e.strerror}. (#4.3.0)")

    def chunks(self) -> Iterator[bytes]:
        """The whole message from its first byte, in pieces of at most L{CHUNK} bytes."""
        offset = 0
        while True:
            try:
                data = os.pread(self.fd, CHUNK, offset)
            except OSError as e:
                raise TemporaryFailure(f"Unable to read message: {e.strerror}. (#4.3.0)")
            if not data:
                return
            offset += len(data)
            yield data

    def headerHasLine(self, line: bytes) -> bool:
        """
        Whether a header line (before the first empty line) equals C{line}: qmail-local's
        Delivered-To loop check (docs/behaviour/local.md 4.9), read line by line.
        """
        return headerHasLine(self.chunks(), line)

    def rewound(self) -> int:
        """The descriptor at offset 0, for a program's standard input."""
        os.lseek(self.fd, 0, os.SEEK_SET)
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            finally:
                self.fd = -1

    def __enter__(self) -> QueuedMessage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def headerHasLine(chunks: Iterable[bytes], line: bytes) -> bool:
    """Whether a header line of the message in C{chunks} equals C{line} (its LF optional)."""
    want = line.rstrip(b"\n")
    current = b""  # the start of the current line, at most len(want) + 1 bytes of it
    for chunk in chunks:
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            piece = chunk[start:] if nl < 0 else chunk[start:nl]
            if len(current) <= len(want):
                current += piece[: len(want) + 1 - len(current)]
            if nl < 0:
                break
            if current == b"":
                return False  # the empty line: end of the header
            if current == want:
                return True
            current = b""
            start = nl + 1
    return current == want and want != b""


def mboxQuoted(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """
    mboxrd quoting as a stream: one C{>} before each line matching C{^>*From }, then the
    blank line that separates messages (an LF is added first when the last line lacks one).
    """
    midLine = False  # inside a line whose start was already written
    carry = b""  # an undecided line start (only ">" and a prefix of "From ")
    last = b""
    for chunk in chunks:
        if midLine:
            nl = chunk.find(b"\n")
            if nl < 0:
                yield chunk
                last = chunk[-1:] or last
                continue
            yield chunk[: nl + 1]
            last = b"\n"
            chunk, midLine = chunk[nl + 1:], False
        data = carry + chunk
        carry = b""
        if not data:
            continue
        end = data.rfind(b"\n") + 1
        if end:
            yield _FROM.sub(lambda m: b">" + m.group(0), data[:end])
            last = b"\n"
        tail = data[end:]
        if not tail:
            continue
        k = _GT.match(tail).end()  # type: ignore[union-attr]
        rest = tail[k:]
        if len(rest) < 5 and b"From "[: len(rest)] == rest and len(tail) <= _MAX_UNDECIDED:
            carry = tail  # cannot tell yet whether this line is a From line
            continue
        yield (b">" + tail) if rest[:5] == b"From " else tail
        last, midLine = tail[-1:], True
    if carry:
        yield carry  # the message ended before "From " was complete: not a From line
        last = carry[-1:]
    yield b"\n" if last == b"\n" else b"\n\n"
