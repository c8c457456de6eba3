"""
The end of a message in the SMTP server: the final dot of DATA or the last BDAT chunk
(docs/behaviour/smtp.md 7.2, 7.7; docs/behaviour/smtp-extensions.md 20.4).

The message is refused (hops, size, a queue write error: L{qmtwist.smtp.data.DataSection.refusal})
or handed to the queue's commit; while the commit runs the session is in L{State.COMMIT}, its
transport paused, so pipelined commands are answered after the C{250}. Either way the
transaction is over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qmtwist.errors import MailError
from qmtwist.smtp import replies as R
from qmtwist.smtp.state import State

if TYPE_CHECKING:
    from qmtwist.smtp.server import SMTPServer


def endMessage(session: SMTPServer) -> None:
    """Refuse the session's message or start its commit."""
    s = session
    writer, s._writer = s._writer, None
    sender, recipients = s.sender, s.recipients
    data, s._data = s._data, None
    assert data is not None and sender is not None
    reply = data.refusal()
    if reply is None:
        try:
            d = writer.commit(sender, recipients)
        except MailError as e:
            reply = R.queueErrorReply(e)
        else:
            s._resetTransaction()
            s._enter(State.COMMIT)
            s.transport.pauseProducing()
            s.pendingCommit = d
            d.addCallbacks(_committed, _commitFailed, callbackArgs=(s,), errbackArgs=(s,))
            return
    writer.abort()
    s._endTransaction()
    s._reply(reply)


def _committed(queued: Any, s: SMTPServer) -> None:
    s._reply(R.queuedReply(queued.time, queued.qp))
    s._resume()


def _commitFailed(failure: Any, s: SMTPServer) -> None:
    if failure.check(MailError):
        s._reply(R.queueErrorReply(failure.value))
    else:
        s.log.failure("commit failed", failure)
        s._reply(R.R_QQBUG)
    s._resume()
