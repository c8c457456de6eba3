"""
Message headers as qmail-inject reads them (qmail-header(5), docs/behaviour/tools.md 12.1): which field is
which,
where the header ends, and how addresses are completed.

L{Completion} holds the four control values qmail-inject reads at every run (C{defaulthost},
C{defaultdomain}, C{plusdomain}, C{idhost}) and rewrites one address the way qmail does:
C{<>} alone, source routes dropped, C{@defaulthost} appended when there is no C{@}, a host ending
in C{+} gets C{.plusdomain}, a dotless host gets C{.defaultdomain}.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Callable, Iterator, Mapping

from attrs import frozen

from qmtwist.control import NotRegularFile, notRegularWarning, parseLine, readControlFile, unsafeValue
from qmtwist.tools import token822
from qmtwist.tools.token822 import AT, ATOM, COLON, DOT, LITERAL, Token

# Known fields, by the lower-case name qmail's hfield table uses.
KNOWN = (
    "sender", "from", "reply-to", "to", "cc", "bcc", "date", "message-id", "subject",
    "resent-sender", "resent-from", "resent-reply-to", "resent-to", "resent-cc", "resent-bcc",
    "resent-date", "resent-message-id", "return-receipt-to", "errors-to", "apparently-to",
    "received", "return-path", "delivered-to", "content-length", "content-type",
    "content-transfer-encoding", "notice-requested-upon-delivery-to", "mail-followup-to",
)
RESENT = frozenset({
    "resent-sender", "resent-from", "resent-reply-to", "resent-to", "resent-cc", "resent-bcc",
    "resent-date", "resent-message-id"})


def fieldName(line: bytes) -> str | None:
    """
    The known field C{line} starts, in lower case, or L{None}.

    As qmail's hfield_known: the name matched case-insensitively, then only spaces or tabs up
    to the colon.
    """
    colon = line.find(b":")
    if colon < 0:
        return None
    name = line[:colon].rstrip(b" \t")
    if b" " in name or b"\t" in name:
        return None
    text = name.decode("latin-1").lower()
    return text if text in KNOWN else None


def isValidField(line: bytes) -> bool:
    """A colon, and before it (trailing blanks removed) a non-empty name of bytes 33-126."""
    colon = line.find(b":")
    if colon < 0:
        return False
    name = line[:colon].rstrip(b" \t")
    return bool(name) and all(33 <= c <= 126 for c in name)


@frozen
class Split:
    """
    A message cut into header fields and the start of its body.

    @ivar fields: each field with its continuation lines and final LF.
    @ivar bodyStart: body bytes already read (the empty line, or an inserted LF plus the line
        that ended the header); the rest of the body is still in the stream.
    """

    fields: list[bytes]
    bodyStart: bytes


def _lines(stream: BinaryIO) -> Iterator[bytes]:
    while True:
        line = stream.readline()
        if not line:
            return
        if not line.endswith(b"\n"):
            line += b"\n"
        yield line


def splitHeader(stream: BinaryIO) -> Split:
    """
    Read the header of a message from C{stream} (qmail's headerbody).

    A line C{From ...} becomes the field C{MBOX-Line: From ...}; a line that is not a valid
    field ends the header and is preceded by an inserted empty line.
    """
    fields: list[bytes] = []
    current: bytes | None = None
    for line in _lines(stream):
        if current is not None:
            if line[:1] in (b" ", b"\t"):
                current += line
                continue
            fields.append(current)
            current = None
        if line == b"\n":
            return Split(fields, line)
        if line.startswith(b"From "):
            current = b"MBOX-Line: " + line
        elif isValidField(line):
            current = line
        else:
            return Split(fields, b"\n" + line)
    if current is not None:
        fields.append(current)
    return Split(fields, b"")


@frozen
class Completion:
    """The control values qmail-inject completes addresses with (bytes, no newline)."""

    defaulthost: bytes
    defaultdomain: bytes
    plusdomain: bytes
    idhost: bytes

    def rewrite(self, addr: list[Token]) -> list[Token]:
        """qmail's rwgeneric on one address (tokens in order); returns the new tokens."""
        addr = list(addr)
        if not addr:
            return addr
        if len(addr) >= 2 and addr[-2][0] == AT and addr[-1] == (LITERAL, b""):
            return addr  # foo@[] is a VERP marker
        if addr[0][0] == AT:  # source route: drop through the colon
            while addr:
                if addr.pop(0)[0] == COLON:
                    break
            if not addr:
                return addr
        if addr[-1][0] == DOT:
            addr.pop()
            if not addr:
                return addr
        if addr[-1][0] == AT:
            addr.pop()
            if not addr:
                return addr
        if not any(k == AT for k, _ in addr):
            addr += _tokens(b"@" + self.defaulthost)
        last = addr[-1]
        if last[0] == ATOM and last[1].endswith(b"+"):
            addr[-1] = (ATOM, last[1][:-1])
            addr += _tokens(b"." + self.plusdomain)
        host: list[Token] = []
        for tok in reversed(addr):
            if tok[0] == AT:
                break
            host.append(tok)
        if not any(k in (DOT, LITERAL) for k, _ in host):
            addr += _tokens(b"." + self.defaultdomain)
        return addr


def _tokens(text: bytes) -> list[Token]:
    try:
        return token822.parse(text)
    except token822.ParseError:
        return [(ATOM, text)]


def readCompletion(controlDir: str, environ: Mapping[str, str],
                   warn: Callable[[str], None] | None = None) -> Completion:
    """
    Read C{defaulthost}, C{defaultdomain}, C{plusdomain} and C{idhost} (each defaulting to
    C{me}, else to its own name) and apply the C{QMAIL...} environment overrides.

    A value with a control character (a CR would end up inside header lines and envelope
    addresses) counts as missing, and so does a file that is not a regular file, each with
    the C{warning: control/NAME ...} line of docs/behaviour/control.md 2.1 given to C{warn}.

    @raise OSError: a control file exists but cannot be read.
    """
    lines: list[str] = []
    me = _readLine(controlDir, "me", None, lines)
    values = {}
    for name in ("defaulthost", "defaultdomain", "plusdomain", "idhost"):
        value = _readLine(controlDir, name, me if me is not None else name.encode(), lines)
        if value is None:
            value = me if me is not None else name.encode()
        override = environ.get("QMAIL" + name.upper())
        if override is not None:
            value = override.encode("utf-8", "surrogateescape")
        values[name] = value
    if warn is not None:
        for line in lines:
            warn(line)
    return Completion(**values)


def _readLine(controlDir: str, name: str, default: bytes | None,
              warnings: list[str]) -> bytes | None:
    """The first line of C{control/NAME}, or L{None} when missing, not regular or unsafe."""
    try:
        data = readControlFile(os.path.join(controlDir, name))
    except NotRegularFile:
        warnings.append(notRegularWarning(name))
        return None
    if data is None:
        return None
    value = parseLine(data)
    problem = unsafeValue(value)
    if problem is not None:
        if default is None:
            what = "ignored"
        else:
            what = "using default " + (default.decode("utf-8", "backslashreplace") or "(empty)")
        warnings.append(f"warning: control/{name} line 1: {problem}; {what}")
        return None
    return value


_QUOTE_OK = frozenset(
    b"!#$%&'*+-./0123456789=?ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`abcdefghijklmnopqrstuvwxyz{|}~")


def quoteNeeded(local: bytes) -> bool:
    """Whether an RFC 821/822 local part must be quoted (qmail's quote_need)."""
    if not local:
        return True
    if any(c not in _QUOTE_OK for c in local):
        return True
    return local.startswith(b".") or local.endswith(b".") or b".." in local


def quoteLocal(local: bytes) -> bytes:
    if not quoteNeeded(local):
        return local
    out = bytearray(b'"')
    for c in local:
        if c in b'\r\n"\\':
            out.append(92)
        out.append(c)
    return bytes(out + b'"')


def quoteAddress(address: bytes) -> bytes:
    """qmail's quote2: quote the part before the last C{@} when needed; C{""} stays empty."""
    if not address:
        return address
    at = address.rfind(b"@")
    if at < 0:
        return quoteLocal(address)
    return quoteLocal(address[:at]) + address[at:]


def rewriteAddressText(text: bytes, completion: Completion) -> bytes:
    """
    Rewrite a recipient argument or C{-f} value: quote, parse, complete, unquote.

    @raise token822.ParseError: unparsable.
    """
    tokens = token822.parse(quoteAddress(text))
    return token822.unquote(completion.rewrite(tokens))
