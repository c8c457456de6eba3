"""
qmail-smtpd's reply lines, byte-exact (docs/behaviour/smtp.md 7.2); pure.

The server writes each with CR LF. L{REFUSALS} gives the reply for each reason
L{qmtwist.policy} can refuse an address for.
"""

from __future__ import annotations

from qmtwist.errors import MailError
from qmtwist.policy import Refusal

HELP_URL = b"https://cr.yp.to/qmail.html"

R_BADLF = b"451 See http://pobox.com/~djb/docs/smtplf.html."
R_TIMEOUT = b"451 timeout (#4.4.2)"
R_TOOBIG = b"552 sorry, that message size exceeds my databytes limit (#5.3.4)"
R_HOPS = b"554 too many hops, this message is looping (#5.4.6)"
R_SYNTAX = b"555 syntax error (#5.5.4)"
R_BMF = b"553 sorry, your envelope sender is in my badmailfrom list (#5.7.1)"
R_NOGATEWAY = b"553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
R_WANTMAIL = b"503 MAIL first (#5.5.1)"
R_WANTRCPT = b"503 RCPT first (#5.5.1)"
R_QQT = b"451 qqt failure (#4.3.0)"
R_QQBUG = b"451 qq internal bug (#4.3.0)"
R_UNIMPL = b"502 unimplemented (#5.5.1)"
R_LONGLINE = b"500 line too long (#5.5.2)"
R_TOOMANY = b"452 too many recipients (#4.5.3)"

R_OK = b"250 ok"
R_FLUSHED = b"250 flushed"
R_VRFY = b"252 send some mail, i'll try my best"
R_HELP = b"214 qmtwist home page: " + HELP_URL
R_GOAHEAD = b"354 go ahead"
R_READYTLS = b"220 ready for tls"

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


def queueErrorReply(err: MailError) -> bytes:
    """C{451 TEXT} or C{554 TEXT} for a queue failure: the reason of docs/behaviour/queue.md 5.3
    without its D/Z letter (docs/behaviour/smtp.md 7.2); an error that carries its own C{reply}
    (L{qmtwist.inbound.writer.DMARCRejected}) gives that."""
    reply = getattr(err, "reply", None)
    if isinstance(reply, bytes):
        return reply
    return (b"554 " if err.permanent else b"451 ") + err.text.encode("ascii", "replace")


def queuedReply(when: float, qp: int) -> bytes:
    """C{250 ok TIME qp QP}: the message is queued and durable (docs/behaviour/smtp.md 7.2)."""
    return b"250 ok %d qp %d" % (int(when), qp)
