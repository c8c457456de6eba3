"""
qmail-smtpd's parsing of MAIL/RCPT arguments and its badmailfrom check (docs/behaviour/smtp.md 7.3, 7.6);
pure.

Bytes in, bytes out: addresses never become text.
"""

from __future__ import annotations

import re

MAX_ADDRESS = 900  # qmail-smtpd answers 555 at this length (docs/behaviour/smtp.md 7.2)

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


def sizeParameter(arg: bytes) -> int | None:
    """The C{SIZE=n} ESMTP parameter after the closing C{>}, or L{None}."""
    gt = arg.find(b">")
    if gt < 0:
        return None
    for word in arg[gt + 1:].split():
        if word[:5].upper() == b"SIZE=" and word[5:].isdigit():
            return int(word[5:])
    return None


def badMailFrom(sender: bytes, entries: tuple[bytes, ...]) -> bool:
    """Whether C{sender} matches a badmailfrom entry (address or C{@host}), ignoring case."""
    if not entries:
        return False
    s = sender.lower()
    at = s.rfind(b"@")
    domain = s[at:] if at >= 0 else None
    for e in entries:
        e = e.lower()
        if e == s or (domain is not None and e == domain):
            return True
    return False


def splitCommand(line: bytes) -> tuple[bytes, bytes]:
    """C{(VERB upper-cased, argument)}: verb before the first space, argument after the spaces."""
    sp = line.find(b" ")
    if sp < 0:
        return line.upper(), b""
    return line[:sp].upper(), line[sp + 1:].lstrip(b" ")
