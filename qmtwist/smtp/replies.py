"""
qmail-smtpd's reply lines, byte-exact (docs/behaviour/smtp.md 7.2), each with its RFC 3463
enhanced status code (ENHANCEDSTATUSCODES, RFC 2034; docs/behaviour/smtp-extensions.md 20.2);
pure.

Every 2xx, 4xx and 5xx reply carries C{X.Y.Z} right after the code, except the greeting and the
replies to HELO and EHLO (RFC 2034 section 3). qmail's own text follows unchanged, its C{(#X.Y.Z)}
included, and the enhanced code is the one that text names. The server writes each line with
CR LF. L{REFUSALS} gives the reply for each reason L{qmtwist.policy} can refuse an address for.
"""

from __future__ import annotations

import re

from qmtwist.errors import MailError
from qmtwist.policy import Refusal

HELP_URL = b"https://cr.yp.to/qmail.html"

R_BADLF = b"451 4.5.2 See http://pobox.com/~djb/docs/smtplf.html."
R_TIMEOUT = b"451 4.4.2 timeout (#4.4.2)"
R_TOOBIG = b"552 5.3.4 sorry, that message size exceeds my databytes limit (#5.3.4)"
R_HOPS = b"554 5.4.6 too many hops, this message is looping (#5.4.6)"
R_SYNTAX = b"555 5.5.4 syntax error (#5.5.4)"
R_BMF = b"553 5.7.1 sorry, your envelope sender is in my badmailfrom list (#5.7.1)"
R_NOGATEWAY = b"553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
R_WANTMAIL = b"503 5.5.1 MAIL first (#5.5.1)"
R_WANTRCPT = b"503 5.5.1 RCPT first (#5.5.1)"
R_QQT = b"451 4.3.0 qqt failure (#4.3.0)"
R_QQBUG = b"451 4.3.0 qq internal bug (#4.3.0)"
R_UNIMPL = b"502 5.5.1 unimplemented (#5.5.1)"
R_LONGLINE = b"500 5.5.2 line too long (#5.5.2)"
R_TOOMANY = b"452 4.5.3 too many recipients (#4.5.3)"
#: RCPT to a local address local delivery would bounce (docs/behaviour/smtp-extensions.md 20.5)
R_NOMAILBOX = b"550 5.1.1 sorry, no mailbox here by that name (#5.1.1)"
#: a non-ASCII address in a transaction whose MAIL had no SMTPUTF8 (RFC 6531 3.4)
R_NEEDUTF8 = b"553 5.6.7 sorry, a non-ASCII address needs SMTPUTF8 (#5.6.7)"
#: an address that is not UTF-8, even with SMTPUTF8 (RFC 6531 3.3)
R_BADUTF8 = b"553 5.6.7 sorry, that address is not valid UTF-8 (#5.6.7)"
#: DATA after BDAT in one transaction (RFC 3030 2)
R_MIXED = b"503 5.5.1 sorry, BDAT and DATA may not be mixed (#5.5.1)"
#: BDAT without a chunk size
R_BDATSYNTAX = b"501 5.5.4 syntax error in BDAT (#5.5.4)"

#: a generic success (NOOP, the other 2xx without a more specific code)
R_OK = b"250 2.0.0 ok"
#: MAIL accepted (X.1.0: other address status)
R_MAILOK = b"250 2.1.0 ok"
#: RCPT accepted (X.1.5: destination address valid)
R_RCPTOK = b"250 2.1.5 ok"
R_FLUSHED = b"250 2.0.0 flushed"
R_VRFY = b"252 2.0.0 send some mail, i'll try my best"
R_HELP = b"214 2.0.0 qmtwist home page: " + HELP_URL
R_GOAHEAD = b"354 go ahead"
R_READYTLS = b"220 2.0.0 ready for tls"

#: Commands answered with a fixed line whatever their argument (docs/behaviour/smtp.md 7.2).
FIXED: dict[bytes, bytes] = {b"NOOP": R_OK, b"VRFY": R_VRFY, b"HELP": R_HELP}

#: The reply to a MAIL or RCPT whose address the session policy refuses.
REFUSALS: dict[Refusal, bytes] = {
    Refusal.UNSTORABLE: R_SYNTAX,
    Refusal.TOO_BIG: R_TOOBIG,
    Refusal.BAD_MAIL_FROM: R_BMF,
    Refusal.NOT_IN_RCPTHOSTS: R_NOGATEWAY,
    Refusal.TOO_MANY: R_TOOMANY,
}

_HASHCODE = re.compile(rb"\(#([245])\.(\d{1,3}\.\d{1,3})\)")


def quit(greeting: bytes) -> bytes:
    """C{221 2.0.0 GREETING}: the reply to QUIT."""
    return b"221 2.0.0 " + greeting


def enhancedCode(text: bytes, permanent: bool) -> bytes:
    """
    The C{X.Y.Z} a reply with qmail's C{text} carries: the C{(#X.Y.Z)} the text names, its class
    made to agree with the reply (4 temporary, 5 permanent); C{X.3.0} when it names none.
    """
    cls = b"5" if permanent else b"4"
    m = _HASHCODE.search(text)
    return cls + b"." + (m.group(2) if m else b"3.0")


def queueErrorReply(err: MailError) -> bytes:
    """C{451 X.Y.Z TEXT} or C{554 X.Y.Z TEXT} for a queue failure: the reason of
    docs/behaviour/queue.md 5.3 without its D/Z letter (docs/behaviour/smtp.md 7.2); an error
    that carries its own C{reply} (L{qmtwist.inbound.writer.DMARCRejected}) gives that."""
    reply = getattr(err, "reply", None)
    if isinstance(reply, bytes):
        return reply
    text = err.text.encode("ascii", "replace")
    return (b"554 " if err.permanent else b"451 ") + enhancedCode(text, err.permanent) + b" " + text


def queuedReply(when: float, qp: int) -> bytes:
    """C{250 2.0.0 ok TIME qp QP}: the message is queued and durable (docs/behaviour/smtp.md 7.2)."""
    return b"250 2.0.0 ok %d qp %d" % (int(when), qp)
