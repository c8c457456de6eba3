"""
Envelope addresses as bytes: splitting, the storable check and RFC 822 quoting; pure.

These are the rules every part that handles an envelope address shares, so they exist once:
the listeners (L{qmtwist.policy}), preprocessing (L{qmtwist.queue.preprocess}), the delivery
agents and the writers of Return-Path and SMTP commands. Addresses never become text.
"""

from __future__ import annotations

import re

_UNSTORABLE = (b"\0", b"\r", b"\n")
#: a byte that makes a local part need quotes: an atom special other than ".", a control or
#: non-ASCII byte (one regex search per address: this runs for every remote recipient)
_NEEDS_QUOTES = re.compile(rb'[()<>@,;:\\"\[\] \t\x00-\x1f\x7f-\xff]')
#: what is escaped with a backslash inside the quotes
_ESCAPED = re.compile(rb'([\\"\r\n])')


def splitAddress(address: bytes) -> tuple[bytes, bytes]:
    """
    C{LOCAL@HOST} split at the last C{@} (docs/behaviour/local.md 3.2): C{joe@x.com@fixme} is
    C{(joe@x.com, fixme)}; without C{@} the host is empty.
    """
    local, at, host = address.rpartition(b"@")
    if not at:
        return address, b""
    return local, host


def unstorable(address: bytes) -> bool:
    """
    Whether C{address} holds NUL, CR or LF, which an envelope cannot store
    (docs/behaviour/queue.md 5.3): the listeners refuse such an address when it arrives
    (docs/behaviour/smtp.md 7.2, docs/behaviour/qmtp.md 9.2) rather than fail the commit later.
    """
    return any(c in address for c in _UNSTORABLE)


def quoteLocal(address: bytes) -> bytes:
    """
    C{address} with its local part (before the last C{@}) in double quotes when RFC 822
    requires it (docs/behaviour/local.md 4.9, docs/behaviour/remote.md 11.4),
    with C{\\}, C{"}, CR and LF escaped inside the quotes.
    """
    if b"@" in address:
        local, host = address.rsplit(b"@", 1)
        host = b"@" + host
    else:
        local, host = address, b""
    if (not local or local.startswith(b".") or local.endswith(b".") or b".." in local
            or _NEEDS_QUOTES.search(local)):
        local = b'"' + _ESCAPED.sub(rb"\\\1", local) + b'"'
    return local + host
