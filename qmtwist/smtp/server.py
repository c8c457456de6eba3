"""
The SMTP server session (qmail-smtpd; docs/behaviour/smtp.md 7).

Why not C{twisted.mail.smtp.SMTP}: its validation hooks are asynchronous, and while one is pending
it keeps reading and may answer later pipelined commands first; it keeps running plaintext
commands buffered before STARTTLS (the CVE-2011-0411 class of bug); its replies, address parser and
line handling are not qmail's (qmail refuses bare LF in DATA, answers overlong lines with 500 and
keeps going, and appends RELAYCLIENT). So this module has its own small state machine on a
plain L{Protocol}:

  - one byte buffer; command lines are taken from it one at a time and answered in order; while
    the end of a message waits for the queue's commit, input stays buffered (and the transport is
    paused), so pipelined commands after DATA are answered after the C{250 ok};
  - DATA is converted as it arrives by L{qmtwist.smtp.data.DataSection} and streamed into an
    L{IMessageWriter}; a message is never held whole in memory;
  - STARTTLS discards everything buffered after the command and resets the session (RFC 3207);
  - a transaction holds at most C{control/maxrcpt} recipients (452 for the rest), and a session
    that ends releases what it buffered (docs/behaviour/smtp.md 7.11).

The session's environment (docs/behaviour/smtp.md 7.1) comes from the attribute C{env: dict[str, bytes]}
which L{qmtwist.tcpserver} (or L{qmtwist.smtp.stdio}) sets before C{makeConnection}. The
attribute C{exitStatus} is read by the tcpserver log line (C{end N status S}).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import Logger

from qmtwist.control import Control
from qmtwist.errors import MailError, QueueError
from qmtwist.rcpthosts import relayDecision
from qmtwist.smtp.data import BARE_LF, MORE, DataSection
from qmtwist.smtp.parse import MAX_ADDRESS, badMailFrom, parseAddress, sizeParameter, splitCommand
from qmtwist.smtp.received import smtpReceived
from qmtwist.tls import ServerCertificate

MAX_LINE = 4096
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
R_UNIMPL = b"502 unimplemented (#5.5.1)"
R_LONGLINE = b"500 line too long (#5.5.2)"
R_TOOMANY = b"452 too many recipients (#4.5.3)"


def _unstorable(addr: bytes) -> bool:
    """NUL, CR or LF cannot be put in an envelope: refuse now, not with a 451 after DATA."""
    return b"\0" in addr or b"\r" in addr or b"\n" in addr


def _envInt(value: bytes | None) -> int | None:
    """Leading decimal digits, as qmail's scan_ulong reads DATABYTES ("100k" is 100)."""
    if value is None:
        return None
    digits = b""
    for c in value.strip():
        if not 48 <= c <= 57:
            break
        digits += bytes([c])
    return int(digits) if digits else None


def queueErrorReply(err: MailError) -> bytes:
    """C{451 TEXT} or C{554 TEXT} for a queue failure (qmail-smtpd's qqx handling)."""
    return (b"554 " if err.permanent else b"451 ") + err.text.encode("ascii", "replace")


class SMTPServer(Protocol):
    """
    One qmail-smtpd session.

    @param injector: an L{qmtwist.interfaces.IInjector}.
    @param control: the control snapshot for this connection.
    @param clock: C{IReactorTime} for the timeout and the Received date.
    @param certificate: C{servercert.pem}; L{None} disables STARTTLS.
    @ivar env: the session environment (see module docstring).
    @ivar exitStatus: 0 after QUIT, 256 after a timeout or a protocol error, else L{None}.
    """

    log = Logger(namespace="qmtwist.smtp")

    def __init__(self, injector: Any, control: Control, clock: Any,
                 certificate: ServerCertificate | None = None) -> None:
        self.injector = injector
        self.control = control
        self.clock = clock
        self.certificate = certificate
        self.env: dict[str, bytes] = {}
        self.exitStatus: int | None = None
        self._buf = bytearray()
        self._pos = 0
        self._out: list[bytes] = []
        self._closed = False
        self._waiting = False
        self._skipping = False
        self._inData = False
        self._tls = False
        self._timer: Any = None
        self.helo: bytes | None = None
        self.sender: bytes | None = None
        self.recipients: list[bytes] = []
        self._writer: Any = None
        self._data: DataSection | None = None
        self._barf = False
        self.pendingCommit: Any = None

    # -- connection ----------------------------------------------------------------------------

    def connectionMade(self) -> None:
        env = self.env
        c = self.control
        self.greeting = env.get("SMTPGREETING") or c.smtpgreeting or c.me
        envBytes = _envInt(env.get("DATABYTES"))
        self.databytes = envBytes if envBytes is not None else c.databytes
        self.timeout = max(c.timeoutsmtpd, 1)
        self.maxrcpt = c.maxrcpt
        self._tls = ISSLTransport.providedBy(self.transport)
        localIP = env.get("TCPLOCALIP")
        self._localIPs = frozenset([localIP]) if localIP else frozenset()
        self._resetTimer()
        self._reply(b"220 " + self.greeting + b" ESMTP")
        self._flush()

    def connectionLost(self, reason: Any = None) -> None:
        """End the session and release what it holds (recipients, buffered input and replies,
        the DATA converter), so a dead session keeps no memory even while a commit it started is
        still running (that commit already has its own copy of the envelope)."""
        self._closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self._inData = False
        self._data = None
        self._resetTransaction()
        del self._buf[:]
        self._pos = 0
        self._out = []

    def _resetTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.timeout)
        else:
            self._timer = self.clock.callLater(self.timeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        if self._closed:
            return
        if self._waiting:
            self._resetTimer()
            return
        self._reply(R_TIMEOUT)
        self._drop(256)

    def _drop(self, status: int) -> None:
        if self.exitStatus is None:
            self.exitStatus = status
        self._flush()
        self._closed = True
        del self._buf[:]
        self._pos = 0
        self.transport.loseConnection()

    def _reply(self, line: bytes) -> None:
        self._out.append(line + b"\r\n")

    def _flush(self) -> None:
        if self._out and not self._closed:
            self.transport.write(b"".join(self._out))
        self._out = []

    # -- input ---------------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._buf += data
        self._resetTimer()
        self._process()

    def _process(self) -> None:
        while not self._closed and not self._waiting:
            if self._inData:
                if not self._dataStep():
                    break
            elif not self._commandStep():
                break
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._flush()

    def _commandStep(self) -> bool:
        buf = self._buf
        i = buf.find(b"\n", self._pos)
        if i < 0:
            if len(buf) - self._pos > MAX_LINE + 1:
                self._skipping = True
                self._pos = len(buf)
            return False
        line = bytes(buf[self._pos:i])
        self._pos = i + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._skipping or len(line) > MAX_LINE:
            self._skipping = False
            self._reply(R_LONGLINE)
            return True
        self._command(line)
        return True

    def _command(self, line: bytes) -> None:
        verb, arg = splitCommand(line)
        handler = getattr(self, "smtp_" + verb.decode("ascii", "replace"), None)
        if handler is None or not verb.isalpha():
            self._reply(R_UNIMPL)
        else:
            handler(arg)

    def _resetTransaction(self) -> None:
        self.sender = None
        self.recipients = []
        self._barf = False

    # -- commands ------------------------------------------------------------------------------

    def smtp_HELO(self, arg: bytes) -> None:
        self.helo = arg
        self._resetTransaction()
        self._reply(b"250 " + self.greeting)

    def _offerTLS(self) -> bool:
        return (not self._tls and self.certificate is not None
                and ITLSTransport.providedBy(self.transport)
                and self.certificate.options() is not None)

    def smtp_EHLO(self, arg: bytes) -> None:
        self.helo = arg
        self._resetTransaction()
        lines = [self.greeting, b"PIPELINING", b"8BITMIME"]
        if self.databytes > 0:
            lines.append(b"SIZE %d" % self.databytes)
        if self._offerTLS():
            lines.append(b"STARTTLS")
        for line in lines[:-1]:
            self._reply(b"250-" + line)
        self._reply(b"250 " + lines[-1])

    def smtp_MAIL(self, arg: bytes) -> None:
        addr = parseAddress(arg, self._localIPs, self.control.localiphost)
        if len(addr) >= MAX_ADDRESS or _unstorable(addr):
            self._reply(R_SYNTAX)
            return
        size = sizeParameter(arg)
        if self.databytes > 0 and size is not None and size > self.databytes:
            self._reply(R_TOOBIG)
            return
        self._resetTransaction()
        self.sender = addr
        self._barf = badMailFrom(addr, self.control.badmailfrom)
        self._reply(b"250 ok")

    def smtp_RCPT(self, arg: bytes) -> None:
        if self.sender is None:
            self._reply(R_WANTMAIL)
            return
        addr = parseAddress(arg, self._localIPs, self.control.localiphost)
        if len(addr) >= MAX_ADDRESS or _unstorable(addr):
            self._reply(R_SYNTAX)
            return
        if self._barf:
            self._reply(R_BMF)
            return
        queued = relayDecision(self.control, self.env, addr)
        if queued is None:
            self._reply(R_NOGATEWAY)
            return
        if self.maxrcpt > 0 and len(self.recipients) >= self.maxrcpt:
            # bounds the session's memory; the accepted ones still get the message
            self._reply(R_TOOMANY)
            return
        self.recipients.append(queued)
        self._reply(b"250 ok")

    def smtp_RSET(self, arg: bytes) -> None:
        self._resetTransaction()
        self._reply(b"250 flushed")

    def smtp_NOOP(self, arg: bytes) -> None:
        self._reply(b"250 ok")

    def smtp_VRFY(self, arg: bytes) -> None:
        self._reply(b"252 send some mail, i'll try my best")

    def smtp_HELP(self, arg: bytes) -> None:
        self._reply(b"214 qmtwist home page: " + HELP_URL)

    def smtp_QUIT(self, arg: bytes) -> None:
        self._reply(b"221 " + self.greeting)
        self._drop(0)

    def smtp_STARTTLS(self, arg: bytes) -> None:
        if not self._offerTLS():
            self._reply(R_UNIMPL)
            return
        assert self.certificate is not None
        options = self.certificate.options()
        self._reply(b"220 ready for tls")
        self._flush()
        # RFC 3207: whatever the client pipelined after STARTTLS is discarded.
        del self._buf[:]
        self._pos = 0
        self.transport.startTLS(options)
        self._tls = True
        self.helo = None
        self._resetTransaction()

    def smtp_DATA(self, arg: bytes) -> None:
        if self.sender is None:
            self._reply(R_WANTMAIL)
            return
        if not self.recipients:
            self._reply(R_WANTRCPT)
            return
        try:
            self._writer = self.injector.newMessage(b"from network")
        except QueueError:
            self._reply(R_QQT)
            return
        self._inData = True
        self._data = DataSection(self._writer, self.databytes)
        self._reply(b"354 go ahead")
        env = self.env
        received = smtpReceived(
            env.get("TCPREMOTEHOST"), self.helo, env.get("TCPREMOTEIP", b"unknown"),
            env.get("TCPLOCALHOST") or env.get("TCPLOCALIP") or b"unknown",
            self.clock.seconds(), self._tls, env.get("TCPREMOTEINFO"))
        self._data.store([received], count=False)

    # -- DATA ----------------------------------------------------------------------------------

    def _dataStep(self) -> bool:
        """Convert the complete lines in the buffer; return whether to go on processing."""
        assert self._data is not None
        self._pos, outcome = self._data.consume(self._buf, self._pos)
        if outcome == MORE:
            return False
        if outcome == BARE_LF:
            self._badLF()
            return False
        self._endData()
        return True

    def _badLF(self) -> None:
        self._inData = False
        if self._writer is not None:
            self._writer.abort()
            self._writer = None
        self._resetTransaction()
        self._reply(R_BADLF)
        self._drop(256)

    def _endData(self) -> None:
        self._inData = False
        writer, self._writer = self._writer, None
        sender, recipients = self.sender, self.recipients
        self._resetTransaction()
        data, self._data = self._data, None
        assert data is not None
        if data.hops >= 100:
            writer.abort()
            self._reply(R_HOPS)
            return
        if data.tooBig:
            writer.abort()
            self._reply(R_TOOBIG)
            return
        if data.writeError is not None:
            writer.abort()
            self._reply(queueErrorReply(data.writeError))
            return
        assert sender is not None
        try:
            d = writer.commit(sender, recipients)
        except MailError as e:
            writer.abort()
            self._reply(queueErrorReply(e))
            return
        self._waiting = True
        self.transport.pauseProducing()
        self.pendingCommit = d
        d.addCallbacks(self._committed, self._commitFailed)

    def _committed(self, queued: Any) -> None:
        self._reply(b"250 ok %d qp %d" % (int(queued.time), queued.qp))
        self._resume()

    def _commitFailed(self, failure: Any) -> None:
        if failure.check(MailError):
            self._reply(queueErrorReply(failure.value))
        else:
            self.log.failure("commit failed", failure)
            self._reply(b"451 qq internal bug (#4.3.0)")
        self._resume()

    def _resume(self) -> None:
        self._waiting = False
        self.pendingCommit = None
        if self._closed:
            self._out = []
            return
        self.transport.resumeProducing()
        self._process()


class SMTPFactory(ServerFactory):
    """
    Builds L{SMTPServer} sessions from the daemon's context.

    Controls are read (mtime-checked) for every connection, as qmail-smtpd reads them at start.

    @param ctx: a L{qmtwist.context.Context}.
    """

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.certificate = ServerCertificate(os.path.join(ctx.home.control, "servercert.pem"),
                                             ctx.controls)

    def buildProtocol(self, addr: Any) -> SMTPServer:
        p = SMTPServer(self.ctx.injector, self.ctx.controls.current(), self.ctx.reactor,
                       self.certificate)
        p.factory = self
        return p
