"""
The phases of an SMTP server session (docs/behaviour/smtp.md 7.1, 7.2); pure.

The session is always in exactly one L{State}; L{qmtwist.smtp.server.SMTPServer} changes it only
through its C{_enter}, which logs each change at debug level (C{state OLD -> NEW}), and
L{ALLOWED} lists every change it may make. Whether the channel is encrypted is not a phase: it
holds across all of them, from the STARTTLS handshake (or an C{ssl:} endpoint) to the end.

A new phase is a new member here plus its row in L{ALLOWED}.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    """Where a session is in its dialogue."""

    #: built, not connected yet
    NEW = "new"
    #: the 220 greeting is out; no HELO/EHLO since the connection (or since STARTTLS)
    GREETED = "greeted"
    #: HELO or EHLO seen; no transaction
    HELO = "helo"
    #: MAIL accepted: the transaction collects recipients
    MAIL = "mail"
    #: after the 354: message lines are converted into the queue as they arrive (7.7)
    DATA = "data"
    #: after a BDAT command: its chunk's octets are read into the message (or discarded when
    #: the command was refused) before anything else (docs/behaviour/smtp-extensions.md 20.4)
    CHUNK = "chunk"
    #: a RCPT's recipient check runs off the reactor thread; reading is paused and later
    #: commands wait for its reply (docs/behaviour/smtp-extensions.md 20.5)
    CHECK = "check"
    #: the final dot was read; the queue is committing the message, reading is paused and
    #: later commands wait for the reply (7.1 Ordering)
    COMMIT = "commit"
    #: QUIT, a timeout, a bare LF in DATA, or the connection is gone; nothing more is read
    CLOSED = "closed"


#: The phases a session reads input in.
READING = frozenset({State.GREETED, State.HELO, State.MAIL, State.DATA, State.CHUNK})

#: The phases that wait for work off the reactor thread (the idle timer is re-armed, not fired).
WAITING = frozenset({State.COMMIT, State.CHECK})

_IDLE = frozenset({State.GREETED, State.HELO})

#: Every change of phase a session may make.
ALLOWED: dict[State, frozenset[State]] = {
    State.NEW: frozenset({State.GREETED, State.CLOSED}),
    # HELO/EHLO, MAIL, STARTTLS (back to GREETED), RSET
    # (a refused BDAT's chunk is read and discarded in CHUNK, too)
    State.GREETED: _IDLE | {State.MAIL, State.CHUNK, State.CLOSED},
    State.HELO: _IDLE | {State.MAIL, State.CHUNK, State.CLOSED},
    # MAIL again stays; HELO/EHLO, RSET and STARTTLS end the transaction; DATA, BDAT, RCPT check
    State.MAIL: _IDLE | {State.MAIL, State.DATA, State.CHUNK, State.CHECK, State.CLOSED},
    # a chunk read: back to the transaction, to the queue (BDAT LAST), or ended by a refusal
    State.CHUNK: _IDLE | {State.MAIL, State.COMMIT, State.CLOSED},
    # the check's reply: back to the transaction
    State.CHECK: frozenset({State.MAIL, State.CLOSED}),
    # the final dot: to the queue, or a refusal (hops, size, queue error) ends the transaction
    State.DATA: _IDLE | {State.COMMIT, State.CLOSED},
    # the commit's reply ends the transaction
    State.COMMIT: _IDLE | {State.CLOSED},
    State.CLOSED: frozenset(),
}


def idle(helo: bytes | None) -> State:
    """The phase between transactions: L{State.HELO} once a HELO/EHLO argument is held."""
    return State.GREETED if helo is None else State.HELO
