"""
What an SMTP session (L{qmtwist.smtp.server.SMTPServer}) offers the sessions built on it, such
as submission (L{qmtwist.smtp.submission}), apart from the dialogue itself:

  - L{SessionHooks._await}: a command handler that can only answer later (a password check or a
    user lookup on a thread, a delay on the clock) returns a C{Deferred}; until it fires the
    transport is paused and pipelined commands stay buffered, so replies keep their order (as
    during the queue's commit, docs/behaviour/smtp.md 7.1 Ordering);
  - L{SessionHooks.extensions}: more EHLO keywords;
  - L{SessionHooks.handshakeCompleted}: Twisted's L{IHandshakeListener}, called once the TLS
    handshake of STARTTLS or of an C{ssl:} endpoint is done; it writes the C{tls} log line
    (L{qmtwist.tlslog.logTLS}).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IHandshakeListener
from twisted.python.failure import Failure
from zope.interface import implementer

from qmtwist.tlslog import logTLS
from qmtwist.smtp.state import State


@implementer(IHandshakeListener)
class SessionHooks:
    """Mixed into L{qmtwist.smtp.server.SMTPServer}; see the module docstring."""

    #: the first word of the session's log lines (L{qmtwist.smtp.sessionlog})
    name = "smtp"
    _pending: Any = None
    # the session's own, for the type checker
    log: Any
    env: dict[str, bytes]
    state: State
    transport: Any
    _process: Callable[[], None]  # answers what is buffered (the session's own method)

    def _await(self, d: Any) -> None:
        """Hold reading and answering until C{d} fires (nothing to do for L{None} or a
        Deferred whose whole chain has run already); then go on with what is buffered."""
        if d is None:
            return
        held = False
        done = False

        def answered(result: Any) -> None:
            nonlocal done
            done = True
            if isinstance(result, Failure):
                self.log.failure("SMTP command failed", result)
            if held:
                self._pending = None
                if self.state is not State.CLOSED:
                    self.transport.resumeProducing()
                    self._process()

        # (d.called is no test: a fired Deferred may still wait on one returned by a callback)
        d.addBoth(answered)
        if not done:
            held = True
            self._pending = d
            self.transport.pauseProducing()

    def extensions(self) -> list[bytes]:
        """EHLO keywords besides the SMTP server's own (none here)."""
        return []

    def handshakeCompleted(self) -> None:
        """The TLS handshake is done: one C{tls} log line."""
        logTLS(self.log, self.name, self.env, self.transport)
