"""
The recipient check at RCPT (docs/behaviour/smtp-extensions.md 20.5): a local address that
local delivery would bounce with "Sorry, no mailbox here by that name" is refused with
C{550 5.1.1} at once instead of being accepted and bounced later (backscatter).

The answer is L{qmtwist.local.exists.MailboxCheck}'s (the lookup local delivery makes), computed
on a thread. Meanwhile the session is in L{State.CHECK}: reading is paused and later pipelined
commands stay buffered, so replies keep the order of the commands, as during a commit. The
check runs only on the C{--smtp} listener (its factory gives the session a checker) and only for
clients without C{RELAYCLIENT}; a relay client's recipients are queued as qmail queues them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qmtwist.smtp import replies as R
from qmtwist.smtp.state import State

if TYPE_CHECKING:
    from qmtwist.smtp.server import SMTPServer


def wantsCheck(session: SMTPServer) -> bool:
    """Whether the session's recipients are checked: it has a checker and does not relay."""
    return session.mailboxes is not None and session.policy.relayclient is None


def checkRecipient(session: SMTPServer, address: bytes) -> None:
    """
    Answer the RCPT of C{address} (already accepted by the session policy) after the check:
    C{250 2.1.5 ok} and the recipient added, or L{R.R_NOMAILBOX}.
    """
    assert session.mailboxes is not None
    answer: list[bool] = []
    d = session.mailboxes.check(address)
    d.addCallback(answer.append)
    if answer:  # known at once: no pause
        _reply(session, address, answer[0])
        return
    session._enter(State.CHECK)
    session.transport.pauseProducing()
    d.addCallback(lambda _: _answered(session, address, answer[0]))


def _reply(session: SMTPServer, address: bytes, ok: bool) -> None:
    if ok:
        session._accept(address)
    else:
        session._reply(R.R_NOMAILBOX)


def _answered(session: SMTPServer, address: bytes, ok: bool) -> None:
    if session.state is not State.CHECK:  # the connection is gone
        return
    _reply(session, address, ok)
    session._enter(State.MAIL)
    session.transport.resumeProducing()
    session._process()
