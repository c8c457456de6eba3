"""
Envelope addresses as bytes: splitting, the storable check and RFC 822 quoting; pure.

These are the rules every part that handles an envelope address shares, so they exist once:
the listeners (L{qmtwist.policy}), preprocessing (L{qmtwist.queue.preprocess}), the delivery
agents and the writers of Return-Path and SMTP commands. Addresses never become text.
"""

from __future__ import annotations

_UNSTORABLE = (b"\0", b"\r", b"\n")
_ATOM_SPECIALS = frozenset(b'()<>@,;:\\".[] \t')


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
    needs = not local or local.startswith(b".") or local.endswith(b".") or b".." in local
    needs = needs or any(c in _ATOM_SPECIALS and c != ord(".") for c in local)
    needs = needs or any(c < 32 or c > 126 for c in local)
    if needs:
        escaped = bytearray()
        for ch in local:
            if ch in (0x5C, 0x22, 0x0D, 0x0A):
                escaped.append(0x5C)
            escaped.append(ch)
        local = b'"' + bytes(escaped) + b'"'
    return local + host
