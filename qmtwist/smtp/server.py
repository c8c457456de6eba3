"""
The SMTP server session (qmail-smtpd; docs/behaviour/smtp.md 7).

Why not C{twisted.mail.smtp.SMTP}: its validation hooks are asynchronous, and while one is pending
it keeps reading and may answer later pipelined commands first; it keeps running plaintext
commands buffered before STARTTLS (the CVE-2011-0411 class of bug); its replies, address parser and
line handling are not qmail's (qmail refuses bare LF in DATA, answers overlong lines with 500 and
keeps going, and appends RELAYCLIENT). So this module has its own small state machine on a
plain L{Protocol}, one phase at a time (L{qmtwist.smtp.state.State}, changes logged at debug):

  - one byte buffer; command lines are taken from it one at a time and answered in order; while
    the end of a message waits for the queue's commit (C{COMMIT}), input stays buffered (and the
    transport is paused), so pipelined commands after DATA are answered after the C{250 ok};
  - DATA is converted as it arrives by L{qmtwist.smtp.data.DataSection} and streamed into an
    L{IMessageWriter}; a message is never held whole in memory;
  - STARTTLS discards everything buffered after the command and resets the session (RFC 3207);
  - which senders and recipients are accepted, DATABYTES and maxrcpt are the session policy's
    (L{qmtwist.policy.SessionPolicy}, shared with QMTP); the reply texts are
    L{qmtwist.smtp.replies}; the idle timeout is Twisted's L{TimeoutMixin} on the injected clock;
  - a transaction holds at most C{control/maxrcpt} recipients (452 for the rest), and a session
    that ends releases what it buffered (docs/behaviour/smtp.md 7.11).

The session's environment (docs/behaviour/smtp.md 7.1) comes from the attribute C{env: dict[str, bytes]}
which L{qmtwist.tcpserver} (or L{qmtwist.smtp.stdio}) sets before C{makeConnection}. The
attribute C{exitStatus} is read by the tcpserver log line (C{end N status S}).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from qmtwist.control import Control
from qmtwist.errors import QueueError
from qmtwist.policy import SMTP, SessionPolicy
from qmtwist.smtp import replies as R
from qmtwist.smtp.bdat import Chunking
from qmtwist.smtp.commit import endMessage
from qmtwist.smtp.data import BARE_LF, MORE, DataSection
from qmtwist.smtp.extensions import ehloLines, mailParameters, screen
from qmtwist.smtp.hooks import SessionHooks
from qmtwist.smtp.parse import CommandLines, parseAddress, splitCommand
from qmtwist.smtp.rcptcheck import checkRecipient, wantsCheck
from qmtwist.smtp.received import sessionReceived
from qmtwist.smtp.sessionlog import logRefusal
from qmtwist.smtp.state import ALLOWED, READING, WAITING, State, idle
from qmtwist.tls import ServerCertificate

# QMTWIST_TRACE_SMTP logs every state change; not by default (twistd does not filter by level)
TRACE = bool(os.environ.get("QMTWIST_TRACE_SMTP"))


class SMTPServer(SessionHooks, TimeoutMixin, Protocol):
    """
    One qmail-smtpd session.

    @param injector: an L{qmtwist.interfaces.IInjector}.
    @param control: the control snapshot for this connection.
    @param clock: C{IReactorTime} for the idle timeout and the Received date.
    @param certificate: C{servercert.pem}; L{None} disables STARTTLS.
    @ivar env: the session environment (see module docstring).
    @ivar exitStatus: 0 after QUIT, 256 after a timeout or a protocol error, else L{None}.
    @ivar state: the session's phase (L{qmtwist.smtp.state}).
    @ivar tls: the channel is encrypted (STARTTLS done, or an C{ssl:} endpoint).
    @ivar policy: what the session accepts (L{qmtwist.policy}), set when it starts.
    @ivar command: the command line being answered (for the refusal log line).
    @ivar mailboxes: the recipient check at RCPT (L{qmtwist.smtp.rcptcheck}), or L{None}.
    @ivar utf8: the transaction's MAIL said SMTPUTF8 (L{qmtwist.smtp.extensions}).
    """

    log = Logger(namespace="qmtwist.smtp")
    #: a TCP transport (a producer, TLS-capable) or the stdio runner's L{qmtwist.stdio} wrapper
    transport: Any

    def __init__(self, injector: Any, control: Control, clock: Any,
                 certificate: ServerCertificate | None = None) -> None:
        self.injector = injector
        self.control = control
        self.clock = clock
        # TimeoutMixin's timer runs on the injected clock
        self.callLater = clock.callLater  # type: ignore[method-assign]
        self.certificate = certificate
        self.env: dict[str, bytes] = {}
        self.exitStatus: int | None = None
        self.state = State.NEW
        self.tls = False
        self.policy = SessionPolicy.fromEnv(control, {}, SMTP)
        self.greeting = control.me
        self._buf = bytearray()
        self._pos = 0
        self._out: list[bytes] = []
        self._lines = CommandLines()
        self._localIPs: frozenset[bytes] = frozenset()
        self.helo: bytes | None = None
        self.sender: bytes | None = None
        self.recipients: list[bytes] = []
        self.barred = False
        self.utf8 = False
        self.mailboxes: Any = None
        self._chunking = Chunking(self)
        self._writer: Any = None
        self._early: Deferred[Any] | None = None  # the queue file made at the first RCPT
        self._data: DataSection | None = None
        self.pendingCommit: Any = None
        self.command: bytes | None = None
        self._pending: Any = None

    def _enter(self, new: State) -> None:
        """Change phase along L{ALLOWED} (logged under L{TRACE}); a change off the table is logged."""
        old = self.state
        if new is old:
            return
        if new not in ALLOWED[old]:
            self.log.error("SMTP session: unexpected state change {old} -> {new}",
                           old=old.value, new=new.value)
        self.state = new
        if TRACE:
            self.log.debug("state {old} -> {new}", old=old.value, new=new.value)

    # the phase as the flags L{qmtwist.smtp.stdio} and the tests read
    _inData = property(lambda self: self.state is State.DATA)
    _waiting = property(lambda self: self.state in WAITING)
    _closed = property(lambda self: self.state is State.CLOSED)

    # -- connection ----------------------------------------------------------------------------

    def connectionMade(self) -> None:
        env = self.env
        c = self.control
        self.policy = SessionPolicy.fromEnv(c, env, SMTP)
        self.greeting = env.get("SMTPGREETING") or c.smtpgreeting or c.me
        self.tls = ISSLTransport.providedBy(self.transport)
        localIP = env.get("TCPLOCALIP")
        self._localIPs = frozenset([localIP]) if localIP else frozenset()
        self.setTimeout(max(c.timeoutsmtpd, 1))
        self._enter(State.GREETED)
        self._reply(b"220 " + self.greeting + b" ESMTP")
        self._flush()

    def connectionLost(self, reason: Any = None) -> None:
        """End the session and release what it holds (recipients, buffered input and replies,
        the DATA converter), so a dead session keeps no memory even while a commit it started is
        still running (that commit already has its own copy of the envelope)."""
        self.setTimeout(None)
        self._enter(State.CLOSED)
        self._dropMessage()
        self._resetTransaction()
        del self._buf[:]
        self._pos = 0
        self._out = []

    def timeoutConnection(self) -> None:
        """No input for C{timeoutsmtpd} seconds (docs/behaviour/smtp.md 7.1): 451 and close;
        while the queue commits a message the timer is re-armed instead."""
        if self.state is State.CLOSED:
            return
        if self.state in WAITING or self._pending is not None:
            self.setTimeout(self.timeOut)
            return
        self.command = b"(timeout)"
        self._reply(R.R_TIMEOUT)
        self._drop(256)

    def _drop(self, status: int) -> None:
        if self.exitStatus is None:
            self.exitStatus = status
        self._flush()
        self.setTimeout(None)
        self._enter(State.CLOSED)
        del self._buf[:]
        self._pos = 0
        self.transport.loseConnection()

    def _reply(self, line: bytes) -> None:
        if line[:1] in (b"4", b"5"):
            logRefusal(self.log, self.name, self.env, self.command, line)
        self._out.append(line + b"\r\n")

    def _flush(self) -> None:
        if self._out and self.state is not State.CLOSED:
            self.transport.write(b"".join(self._out))
        self._out = []

    # -- input ---------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.state is State.CLOSED:
            return
        self._buf += data
        self.resetTimeout()
        self._process()

    def _process(self) -> None:
        steps = {State.DATA: self._dataStep, State.CHUNK: self._chunking.step}
        while self._pending is None and self.state in READING and (
                steps.get(self.state, self._commandStep)()):
            pass
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._flush()

    def _commandStep(self) -> bool:
        self._pos, line = self._lines.take(self._buf, self._pos)
        if line is None:
            return False
        if isinstance(line, bytes):
            self._command(line)
        else:
            self._reply(R.R_LONGLINE)  # TOO_LONG
        return True

    def _command(self, line: bytes) -> None:
        verb, arg = splitCommand(line)
        self.command = line
        fixed = R.FIXED.get(verb)
        if fixed is not None:
            self._reply(fixed)
            return
        handler = getattr(self, "smtp_" + verb.decode("ascii", "replace"), None)
        if handler is None or not verb.isalpha():
            self._reply(R.R_UNIMPL)
        else:
            self._await(handler(arg))

    def _resetTransaction(self) -> None:
        early, self._early = self._early, None
        if early is not None:  # made for a message that will not come: removed
            early.addCallbacks(lambda writer: writer.abort(), self._earlyFailed)
        self._dropMessage()  # a message arriving in BDAT chunks ends with its transaction
        self.utf8 = False
        self.sender = None
        self.recipients = []
        self.barred = False

    def _endTransaction(self) -> None:
        """Forget MAIL and RCPT and go back to the phase between transactions."""
        self._resetTransaction()
        if self.state is not State.CLOSED:
            self._enter(idle(self.helo))

    # -- commands ------------------------------------------------------------------------------

    def smtp_HELO(self, arg: bytes) -> None:
        self.helo = arg
        self._endTransaction()
        self._reply(b"250 " + self.greeting)

    def _offerTLS(self) -> bool:
        return (not self.tls and self.certificate is not None
                and ITLSTransport.providedBy(self.transport)
                and self.certificate.options() is not None)

    def smtp_EHLO(self, arg: bytes) -> None:
        self.helo = arg
        self._endTransaction()
        lines = ehloLines(self.greeting, self.policy.databytes, self._offerTLS())
        lines += self.extensions()
        for line in lines[:-1]:
            self._reply(b"250-" + line)
        self._reply(b"250 " + lines[-1])

    def smtp_MAIL(self, arg: bytes) -> None:
        addr = parseAddress(arg, self._localIPs, self.control.localiphost)
        params = mailParameters(arg)
        verdict = screen(self.policy.sender(addr, params.size), addr, params.smtputf8)
        if isinstance(verdict, bytes):
            self._reply(verdict)  # the transaction is left as it was
            return
        self._resetTransaction()
        self.sender = verdict.address
        self.barred = verdict.barred
        self.utf8 = params.smtputf8
        self._enter(State.MAIL)
        self._reply(R.R_MAILOK)

    def smtp_RCPT(self, arg: bytes) -> None:
        if self.state is not State.MAIL:
            self._reply(R.R_WANTMAIL)
            return
        addr = parseAddress(arg, self._localIPs, self.control.localiphost)
        # past maxrcpt: 452 bounds the session's memory; the accepted ones still get the message
        verdict = screen(self.policy.recipient(addr, barred=self.barred,
                                               held=len(self.recipients)), addr, self.utf8)
        if isinstance(verdict, bytes):
            self._reply(verdict)
            return
        if wantsCheck(self):
            checkRecipient(self, verdict.address)
            return
        self._accept(verdict.address)

    def _earlyFailed(self, f: Failure) -> None:
        """A file started for a transaction that ended could not be made: nothing to remove
        (a queue error was the transaction's own, and it had no DATA to report it to)."""
        if not f.check(QueueError):
            self.log.failure("starting a queue file", f)

    def _accept(self, address: bytes) -> None:
        """
        Take a recipient: C{250}. At the first one the queue file starts to be made on a
        thread (as Postfix's cleanup opens its file at MAIL), so that DATA seldom waits for
        it; a transaction that ends without a message removes it again.
        """
        self.recipients.append(address)
        self._reply(R.R_RCPTOK)
        if len(self.recipients) == 1 and self._early is None and self._writer is None:
            self._early = self.injector.openMessage(b"from network")

    def smtp_RSET(self, arg: bytes) -> None:
        self._endTransaction()
        self._reply(R.R_FLUSHED)

    def smtp_QUIT(self, arg: bytes) -> None:
        self._reply(R.quit(self.greeting))
        self._drop(0)

    def smtp_STARTTLS(self, arg: bytes) -> None:
        if not self._offerTLS():
            self._reply(R.R_UNIMPL)
            return
        assert self.certificate is not None
        options = self.certificate.options()
        self._reply(R.R_READYTLS)
        self._flush()
        # RFC 3207: whatever the client pipelined after STARTTLS is discarded.
        del self._buf[:]
        self._pos = 0
        self.transport.startTLS(options)
        self.tls = True
        self.helo = None
        self._endTransaction()

    def smtp_DATA(self, arg: bytes) -> Deferred[None] | None:
        if self.state is not State.MAIL:
            self._reply(R.R_WANTMAIL)
            return None
        if self._data is not None:  # BDAT chunks came first (RFC 3030)
            self._endTransaction()
            self._reply(R.R_MIXED)
            return None
        if not self.recipients:
            self._reply(R.R_WANTRCPT)
            return None
        return self._openMessage(DataSection, self._dataOpened)

    def _dataOpened(self, ok: bool) -> None:
        if not ok:
            self._reply(R.R_QQT)
        else:
            self._enter(State.DATA)
            self._reply(R.R_GOAHEAD)

    def smtp_BDAT(self, arg: bytes) -> Deferred[None] | None:
        return self._chunking.command(arg)

    def _openMessage(self, section: type[DataSection], then: Callable[[bool], None]
                     ) -> Deferred[None] | None:
        """
        Start the message of the transaction (DATA, or the first BDAT) with the Received line,
        then call C{then} with whether the queue could start one. The queue file is created
        on a thread (C{openMessage}), usually since the first recipient: the session waits for
        it as for any answer that comes later (L{_await}), its input held, so the reactor
        thread never opens a file.
        """
        early, self._early = self._early, None

        def opened(writer: Any) -> None:
            if self.state is State.CLOSED:
                writer.abort()
                return
            self._started(writer, section)
            then(True)

        def failed(f: Failure) -> None:
            f.trap(QueueError)
            self.log.warn("queue file not started: {why}", why=f.getErrorMessage())
            if self.state is not State.CLOSED:
                then(False)

        # the file started at the first recipient, or one started now
        d: Deferred[None] = (early if early is not None
                             else self.injector.openMessage(b"from network"))
        return d.addCallbacks(opened, failed)

    def _started(self, writer: Any, section: type[DataSection]) -> None:
        self._writer = writer
        self._data = section(writer, self.policy.databytes)
        self._data.store([sessionReceived(self)], count=False)

    # -- DATA ----------------------------------------------------------------------------------

    def _dataStep(self) -> bool:
        """Convert the complete lines in the buffer; return whether to go on processing."""
        assert self._data is not None
        self._pos, outcome = self._data.consume(self._buf, self._pos)
        if outcome == MORE:
            return False
        if outcome == BARE_LF:
            self._bareLF()
            return False
        self._endData()
        return True

    def _bareLF(self) -> None:
        """Refused and closed; nothing is queued (docs/behaviour/smtp.md 7.7)."""
        self._resetTransaction()
        self._reply(R.R_BADLF)
        self._drop(256)

    def _dropMessage(self) -> None:
        """Abort the message being received, if any: nothing of it is queued."""
        if self._writer is not None:
            self._writer.abort()
        self._writer = self._data = None

    def _endData(self) -> None:
        """The final dot or BDAT LAST: L{qmtwist.smtp.commit.endMessage}."""
        endMessage(self)

    def _resume(self) -> None:
        self.pendingCommit = None
        if self.state is State.CLOSED:
            self._out = []
            return
        self._enter(idle(self.helo))
        self.transport.resumeProducing()
        self._process()

