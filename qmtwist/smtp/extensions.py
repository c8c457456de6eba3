"""
The SMTP service extensions the server offers beyond qmail-smtpd's (docs/behaviour/smtp-extensions.md
12): the EHLO keywords, the MAIL parameters, and the SMTPUTF8 rule for addresses; pure.

 - C{SIZE N} (RFC 1870) is always offered: N is databytes, and C{SIZE 0} when there is no
   limit, which RFC 1870 section 4 defines as "no fixed maximum message size";
 - C{ENHANCEDSTATUSCODES} (RFC 2034): the codes are in L{qmtwist.smtp.replies};
 - C{SMTPUTF8} (RFC 6531): a transaction whose MAIL says C{SMTPUTF8} may use UTF-8 addresses
   (and UTF-8 headers, which need nothing here: the data is stored byte for byte); without it a
   non-ASCII address is refused with C{553 5.6.7};
 - C{CHUNKING} (RFC 3030): BDAT, in L{qmtwist.smtp.bdat}.
"""

from __future__ import annotations

from attrs import frozen

from qmtwist.policy import Accepted, Refusal, Verdict
from qmtwist.smtp import replies as R


def ehloLines(greeting: bytes, databytes: int, starttls: bool) -> list[bytes]:
    """The lines of the EHLO reply, without their C{250-} / C{250 } (docs/behaviour/smtp.md 7.2)."""
    lines = [greeting, b"PIPELINING", b"8BITMIME", b"SIZE %d" % max(databytes, 0),
             b"ENHANCEDSTATUSCODES", b"SMTPUTF8", b"CHUNKING"]
    if starttls:
        lines.append(b"STARTTLS")
    return lines


@frozen
class MailParameters:
    """
    The ESMTP parameters of a MAIL command that the server uses (others are ignored, as qmail
    ignores all of them).

    @ivar size: C{SIZE=n}, or L{None}.
    @ivar smtputf8: the word C{SMTPUTF8} was given.
    """

    size: int | None = None
    smtputf8: bool = False


def mailParameters(arg: bytes) -> MailParameters:
    """The parameters after the closing C{>} of C{arg} (the text after C{MAIL}), any case."""
    gt = arg.find(b">")
    if gt < 0:
        return MailParameters()
    size: int | None = None
    utf8 = False
    for word in arg[gt + 1:].split():
        upper = word.upper()
        if upper[:5] == b"SIZE=" and word[5:].isdigit() and size is None:
            size = int(word[5:])
        elif upper == b"SMTPUTF8":
            utf8 = True
    return MailParameters(size, utf8)


def utf8Refusal(address: bytes, smtputf8: bool) -> bytes | None:
    """
    The reply refusing C{address} under RFC 6531, or L{None}: an address with a byte over 127
    needs the transaction's C{SMTPUTF8} (C{553 5.6.7}), and then must be UTF-8.
    """
    if address.isascii():
        return None
    if not smtputf8:
        return R.R_NEEDUTF8
    try:
        address.decode("utf-8")
    except UnicodeDecodeError:
        return R.R_BADUTF8
    return None


def screen(verdict: Verdict, address: bytes, smtputf8: bool) -> Accepted | bytes:
    """The session policy's C{verdict} on C{address}, then L{utf8Refusal}: the accepted
    address, or the reply that refuses it."""
    if isinstance(verdict, Refusal):
        return R.REFUSALS[verdict]
    return utf8Refusal(address, smtputf8) or verdict
