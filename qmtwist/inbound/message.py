"""
The queued message read back for verification, and the chunks of its final copy
(docs/behaviour/authentication.md 22.2); blocking file reads, for a worker thread.

The file the SMTP session wrote starts with the queue's Received line, then the session's own
Received field, then the client's message. L{open} finds where the client's message starts.
L{scan} reads the client's header field by field and keeps only what the checks need (From and
DKIM-Signature values, each capped), so memory stays bounded whatever the header holds;
L{whole} gives the whole client message for dkimpy, only when it is at most L{DKIM_LIMIT}
bytes. L{finalChunks} streams the final message body: our Authentication-Results field, the
session's Received field, then the client's message without the Authentication-Results
fields that claim our authserv-id (RFC 8601 5), read and written L{CHUNK} bytes at a time.
"""

from __future__ import annotations

import builtins
import io
import os
from typing import Iterator

from attrs import define, field

CHUNK = 65536
#: the largest client message dkimpy is given (it needs it in memory); larger ones get
#: C{dkim=neutral (message too large to verify)}
DKIM_LIMIT = 10 * 1024 * 1024
#: an Authentication-Results field is held (to read its authserv-id) up to this size; a longer
#: one is removed whatever it claims
FIELD_LIMIT = 65536
#: From and DKIM-Signature values are kept up to this size each, at most this many signatures
VALUE_LIMIT = 16384
MAX_SIGNATURES = 8

AR_NAME = b"authentication-results"


@define
class Queued:
    """
    A message file opened for reading.

    @ivar traceStart: offset of the session's Received field (after the queue's line).
    @ivar start: offset of the client's message.
    @ivar size: bytes of the client's message.
    """

    file: io.BufferedReader
    traceStart: int
    start: int
    size: int

    def close(self) -> None:
        self.file.close()


@define
class HeaderScan:
    """What the checks need from the client's header."""

    fromValues: list[bytes] = field(factory=list)
    signatures: list[bytes] = field(factory=list)
    tooManySignatures: bool = False


def open(path: str) -> Queued:
    """Open the queued message C{path} and find the client's message in it."""
    f = builtins.open(path, "rb")
    try:
        f.readline(CHUNK)  # the queue's Received line
        traceStart = f.tell()
        f.readline(CHUNK)  # the session's "Received: from ...", then its folded lines
        while f.peek(1)[:1] in (b" ", b"\t"):
            f.readline(CHUNK)
        start = f.tell()
        size = os.fstat(f.fileno()).st_size - start
    except BaseException:
        f.close()
        raise
    return Queued(f, traceStart, start, size)


def _pieces(f: io.BufferedReader) -> Iterator[tuple[str, bytes]]:
    """
    The header as C{("start", line)} (a field's first line), C{("cont", line)} (a folded line
    or the rest of a line longer than L{CHUNK}) and a last C{("end", line)}: the empty line
    (C{b""} when the file ends inside the header). The file is left at the body.
    """
    mid = False
    while True:
        line = f.readline(CHUNK)
        if not line:
            yield "end", b""
            return
        if mid or line[:1] in (b" ", b"\t"):
            kind = "cont"
        elif line in (b"\n", b"\r\n"):
            yield "end", line
            return
        else:
            kind = "start"
        mid = not line.endswith(b"\n")
        yield kind, line


def fieldName(line: bytes) -> bytes | None:
    """The lowercased name of the field starting with C{line}, or L{None} without a colon."""
    name, colon, _ = line.partition(b":")
    return name.strip().lower() if colon else None


def scan(q: Queued) -> HeaderScan:
    """Read the client's header (bounded memory; see L{HeaderScan})."""
    q.file.seek(q.start)
    out = HeaderScan()
    current: list[bytes] | None = None
    currentName = b""
    for kind, line in _pieces(q.file):
        if kind == "cont":
            if current is not None and sum(map(len, current)) + len(line) <= VALUE_LIMIT:
                current.append(line)
            continue
        if current is not None:
            value = b"".join(current).partition(b":")[2]
            if currentName == b"from":
                out.fromValues.append(value)
            else:
                out.signatures.append(value)
            current = None
        if kind == "end":
            break
        name = fieldName(line)
        if name == b"from" or name == b"dkim-signature":
            if name == b"dkim-signature" and len(out.signatures) >= MAX_SIGNATURES:
                out.tooManySignatures = True
                continue
            current, currentName = [line[:VALUE_LIMIT]], name
    return out


def whole(q: Queued) -> bytes | None:
    """The client's message, or L{None} when it is larger than L{DKIM_LIMIT}."""
    if q.size > DKIM_LIMIT:
        return None
    q.file.seek(q.start)
    return q.file.read(DKIM_LIMIT + 1)[:DKIM_LIMIT]


def _skipComment(text: bytes, i: int) -> int:
    """The index after the comment that opens at C{text[i]}, or -1 when it never closes."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c == 0x5C:  # backslash: a quoted pair
            i += 2
            continue
        if c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def authservId(fieldText: bytes) -> bytes | None:
    """
    The authserv-id of an Authentication-Results field (RFC 8601 2.2: a value after optional
    comments and folding whitespace), lowercased; L{None} when it cannot be read.
    """
    text = fieldText.partition(b":")[2].replace(b"\r", b"").replace(b"\n", b"")
    i = 0
    while True:
        while i < len(text) and text[i] in b" \t":
            i += 1
        if i < len(text) and text[i] == 0x28:
            i = _skipComment(text, i)
            if i < 0:
                return None
            continue
        break
    if i < len(text) and text[i] == 0x22:  # a quoted-string
        out = bytearray()
        i += 1
        while i < len(text) and text[i] != 0x22:
            if text[i] == 0x5C:
                i += 1
            if i < len(text):
                out.append(text[i])
            i += 1
        if i >= len(text):
            return None
        return bytes(out).lower() or None
    j = i
    while j < len(text) and text[j] not in b" \t;(":
        j += 1
    return text[i:j].lower() or None


def claimsUs(fieldText: bytes, me: bytes) -> bool:
    """
    Whether an Authentication-Results field must go: it claims C{me} (case-insensitive), or its
    authserv-id cannot be read (a reader downstream might take it for ours).
    """
    found = authservId(fieldText)
    return found is None or found == me.lower()


@define
class Removed:
    """Counts the fields L{finalChunks} removed (read after the copy, for the log)."""

    count: int = 0


def finalChunks(q: Queued, ourHeader: bytes, me: bytes, removed: Removed) -> Iterator[bytes]:
    """
    The final message after the queue's Received line: C{ourHeader}, the session's Received
    field, the client's message without the Authentication-Results fields L{claimsUs}.
    """
    yield ourHeader
    f = q.file
    f.seek(q.traceStart)
    yield f.read(q.start - q.traceStart)
    held: list[bytes] | None = None
    heldSize = 0
    dropping = False
    for kind, line in _pieces(f):
        if kind == "cont":
            if held is not None:
                heldSize += len(line)
                if heldSize <= FIELD_LIMIT:
                    held.append(line)
                else:
                    held, dropping = None, True
                    removed.count += 1
            elif not dropping:
                yield line
            continue
        if held is not None:
            text = b"".join(held)
            if claimsUs(text, me):
                removed.count += 1
            else:
                yield text
            held = None
        dropping = False
        if kind == "end":
            yield line
            break
        if fieldName(line) == AR_NAME:
            held, heldSize = [line], len(line)
        else:
            yield line
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return
        yield chunk
