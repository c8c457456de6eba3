"""
qmail-smtpd's parsing of command lines and MAIL/RCPT arguments (docs/behaviour/smtp.md 7.1, 7.3);
pure. What the parsed addresses may be is L{qmtwist.policy}'s question.

Bytes in, bytes out: addresses never become text.
"""

from __future__ import annotations

import re

_IPLITERAL = re.compile(rb"@\[(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})\]$")


def _extract(arg: bytes) -> bytes:
    """Steps 1-3 of docs/behaviour/smtp.md 7.3: find the address and remove route and quoting."""
    lt = arg.find(b"<")
    out = bytearray()
    quoted = False
    if lt >= 0:
        i = lt + 1
        terminators = b">"
    else:
        colon = arg.find(b":")
        i = colon + 1 if colon >= 0 else 0
        while i < len(arg) and arg[i] == 0x20:
            i += 1
        terminators = b" "
    n = len(arg)
    while i < n:
        c = arg[i]
        if c == 0x5C and i + 1 < n:  # backslash quotes the next character
            out.append(arg[i + 1])
            i += 2
            continue
        if c == 0x22:
            quoted = not quoted
            i += 1
            continue
        if not quoted and c in terminators:
            break
        out.append(c)
        i += 1
    addr = bytes(out)
    if addr.startswith(b"@"):
        colon = addr.find(b":")
        addr = addr[colon + 1:] if colon >= 0 else b""
    return addr


def parseAddress(arg: bytes, localIPs: frozenset[bytes] = frozenset(),
                 localiphost: bytes = b"") -> bytes:
    """
    The envelope address of a MAIL or RCPT argument (after C{FROM:} / C{TO:} is included).

    @param arg: the text after the verb, e.g. C{b"FROM:<a@b> SIZE=10"}.
    @param localIPs: addresses this server listens on, for the C{@[d.d.d.d]} rewrite.
    @param localiphost: the C{localiphost} control value.
    """
    addr = _extract(arg)
    m = _IPLITERAL.search(addr)
    if m and m.group(1) in localIPs and localiphost:
        addr = addr[: m.start()] + b"@" + localiphost
    return addr


#: The longest command line served (docs/behaviour/smtp.md 7.1 Long lines) [qmtwist].
MAX_LINE = 4096
#: L{CommandLines.take}'s answer for a line over L{MAX_LINE}.
TOO_LONG = object()


class CommandLines:
    """
    Takes command lines out of the session's input buffer one at a time (docs/behaviour/smtp.md
    7.1): a line ends at LF, one CR before it is removed, and a line over L{MAX_LINE} is
    discarded up to its LF (even while it is still arriving, so it is never buffered whole).
    """

    def __init__(self) -> None:
        self._skipping = False

    def take(self, buf: bytearray, pos: int) -> tuple[int, bytes | object | None]:
        """The new position and the next line, L{TOO_LONG}, or L{None} (no complete line)."""
        i = buf.find(b"\n", pos)
        if i < 0:
            if len(buf) - pos > MAX_LINE + 1:
                self._skipping = True
                pos = len(buf)
            return pos, None
        line = bytes(buf[pos:i])
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._skipping or len(line) > MAX_LINE:
            self._skipping = False
            return i + 1, TOO_LONG
        return i + 1, line


def splitCommand(line: bytes) -> tuple[bytes, bytes]:
    """C{(VERB upper-cased, argument)}: verb before the first space, argument after the spaces."""
    sp = line.find(b" ")
    if sp < 0:
        return line.upper(), b""
    return line[:sp].upper(), line[sp + 1:].lstrip(b" ")
