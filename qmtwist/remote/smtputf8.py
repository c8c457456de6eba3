"""
SMTPUTF8 in remote delivery (RFC 6531; docs/behaviour/smtp-extensions.md 20.6).

qmail's queue has no place for a "this message needs SMTPUTF8" flag and its format stays as it
is, so the need is read off the envelope, as Postfix's C{smtputf8_autodetect_classes} does for
mail without a recorded request: a delivery needs SMTPUTF8 when its sender or a recipient has a
byte over 127. The SMTP server refuses such an address unless the client said SMTPUTF8 (553
5.6.7), so every non-ASCII envelope from SMTP was declared. UTF-8 in the headers alone does not
count: 8-bit headers have gone out as 8BITMIME for decades, and scanning them would bounce that
mail for no gain.

To a peer that offers SMTPUTF8 the MAIL command carries the parameter and UTF-8 local parts go
unquoted (RFC 6531 3.3 makes them atext); to one that does not, the non-ASCII addresses fail at
once with a permanent 5.6.7 (RFC 6531 3.4: the message must not be downgraded by us): a
non-ASCII sender fails the whole transaction, a non-ASCII recipient only itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from qmtwist.received import quoteLocal


def needsSMTPUTF8(sender: bytes, recipients: Iterable[bytes]) -> bool:
    """Whether the envelope has a non-ASCII address."""
    return not sender.isascii() or not all(r.isascii() for r in recipients)


def offersSMTPUTF8(ehloLines: Sequence[bytes] | None) -> bool:
    """Whether an EHLO reply (its lines, the first being the greeting) has C{SMTPUTF8}."""
    return ehloLines is not None and any(
        line[4:].split(b" ")[0].upper() == b"SMTPUTF8" for line in ehloLines[1:])


def notOffered(host: bytes) -> bytes:
    """The permanent failure for a UTF-8 address to a peer without SMTPUTF8."""
    return (b"Connected to %s but it does not offer SMTPUTF8, needed for a UTF-8 address. "
            b"(#5.6.7)\n" % host)


def quoteAddress(address: bytes, utf8: bool) -> bytes:
    """L{quoteLocal}, except that under SMTPUTF8 non-ASCII bytes are atext and need no quotes."""
    if utf8 and not address.isascii():
        masked = bytes(0x61 if c > 127 else c for c in address)
        if quoteLocal(masked) == masked:
            return address
    return quoteLocal(address)


def mailFrom(sender: bytes, recipients: Sequence[bytes], utf8: bool) -> bytes:
    """The MAIL command: C{SMTPUTF8} added when the peer offers it and the envelope needs it."""
    param = b" SMTPUTF8" if utf8 and needsSMTPUTF8(sender, recipients) else b""
    return b"MAIL FROM:<" + (quoteAddress(sender, utf8) if sender else b"") + b">" + param
