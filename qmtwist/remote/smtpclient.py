"""
The SMTP client of qmail-remote (docs/behaviour/remote.md 11.3-11.5): one transaction on a connected socket.

L{ReplyProtocol} reads multi-line replies and hands them out one by one as Deferreds, each with
the C{timeoutremote} deadline; L{transact} runs EHLO/HELO, STARTTLS, MAIL, one RCPT per
recipient, DATA and the message, and returns one L{Report} per recipient with qmail-remote's
texts (L{qmtwist.remote.reports}). The message file is opened on a thread and streamed through
L{DataEncoder}. Connecting, deadlines and the next address are L{qmtwist.remote.connection}'s.

Differences from qmail 1.03 [qmtwist]: EHLO first (HELO after a 5xx), STARTTLS, several
recipients per transaction with their own reports.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Awaitable, Callable

from attrs import define
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from qmtwist.delivery import Outcome, Report
from qmtwist.remote.connection import ClientProtocol, ConnectionDied, NextAddress, Reconnect
from qmtwist.remote.mailtx import mailTransaction
from qmtwist.remote.reports import MAX_TEXT, clean, connectionDied, printable, report, said

MAX_LINE = 65536
QUIT_WAIT = 5.0  # how long to let the peer close after QUIT before closing ourselves

PARTIAL = "SMTP cannot transfer messages with partial final lines. (#5.6.2)"

_log = Logger()


@define
class Reply:
    """
    @ivar code: the three-digit code of the first line (451 when it is not a number).
    @ivar text: every line, CRs removed, each ending in LF.
    """

    code: int
    text: bytes

    @property
    def lines(self) -> list[bytes]:
        return self.text.splitlines()


class ReplyProtocol(ClientProtocol):
    """
    An SMTP client connection whose replies are awaited one at a time, each within
    C{timeout} seconds (C{timeoutremote}) on C{clock}.
    """

    kind = "smtp"

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        super().__init__(clock, timeout)
        self._buffer = b""
        self._lines: list[bytes] = []
        self._size = 0
        self._replies: deque[Reply] = deque()
        self._waiter: defer.Deferred[Reply] | None = None
        self.timedOut = False  # a reply did not come within timeout
        self._quitTimer: Any = None
        # kept with the connection for reuse (docs/behaviour/remote.md 11.8)
        self.ehloLines: list[bytes] | None = None
        self.createdAt = clock.seconds()
        self.uses = 0
        self.completed = False
        self.attempt: Any = None  # the TLS policy's Attempt, for the reports of later messages

    def hasPending(self) -> bool:
        """Whether input came that no awaited reply has read (say a 421 on an idle connection)."""
        return bool(self._buffer or self._lines or self._replies)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while True:
            nl = self._buffer.find(b"\n")
            if nl < 0:
                break
            line, self._buffer = self._buffer[:nl], self._buffer[nl + 1 :]
            self._line(line.replace(b"\r", b""))
        if len(self._buffer) > MAX_LINE:
            self._fail(ConnectionDied("reply line too long"))
            return
        self._deliver()

    def _line(self, line: bytes) -> None:
        if self._size < MAX_TEXT:
            self._lines.append(line[: MAX_TEXT - self._size])
            self._size += len(line) + 1
        if len(line) >= 4 and line[3:4] == b"-":
            return
        first = self._lines[0] if self._lines else line
        code = int(first[:3]) if first[:3].isdigit() else 451
        self._replies.append(Reply(code, b"".join(x + b"\n" for x in self._lines)))
        self._lines, self._size = [], 0

    def reply(self) -> defer.Deferred[Reply]:
        """The next reply; fails with L{ConnectionDied} on loss or after C{timeout} seconds."""
        d: defer.Deferred[Reply] = defer.Deferred()
        self._waiter = d
        self._deliver()
        if self._waiter is d:
            self.setTimeout(self.timeout)
        return d

    def _deliver(self) -> None:
        d = self._waiter
        if d is None:
            return
        if self._replies:
            self._waiter = None
            self.setTimeout(None)
            d.callback(self._replies.popleft())
        elif self.lost is not None:
            self._waiter = None
            self.setTimeout(None)
            d.errback(ConnectionDied(self.lost.getErrorMessage()))

    def timeoutConnection(self) -> None:
        self.timedOut = True
        self._fail(ConnectionDied("timeout"))

    def _fail(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = Failure(exc)
        self.abort()
        self._deliver()

    def discardPending(self) -> int:
        """
        Forget every byte received but not yet read as an awaited reply, and return how many.

        Called just before C{startTLS}: anything the peer (or a man in the middle) sent after
        the C{220} to STARTTLS came in plaintext and would otherwise be read as the answer to a
        command sent inside TLS, one reply late (the client side of CVE-2011-0411).
        """
        n = len(self._buffer) + sum(len(x) + 1 for x in self._lines)
        n += sum(len(r.text) for r in self._replies)
        self._buffer, self._lines, self._size = b"", [], 0
        self._replies.clear()
        return n

    def send(self, line: bytes) -> None:
        """Write one command line (CRLF added)."""
        if self.lost is None and self.transport is not None:
            self.transport.write(line + b"\r\n")

    def ended(self, reason: Failure) -> None:
        if self.lost is None:
            self.lost = reason
        if self._quitTimer is not None and self._quitTimer.active():
            self._quitTimer.cancel()
        self._deliver()

    def close(self) -> None:
        """
        Send C{QUIT}; the report does not wait for its answer. The connection is left for the
        peer to close (so a new one never overlaps it at the peer, FAQ 8.1), at most
        L{QUIT_WAIT} seconds.
        """
        self.setTimeout(None)
        if self.lost is None and self.transport is not None and self._quitTimer is None:
            self.lost = Failure(ConnectionDied("closed after QUIT"))
            self.transport.write(b"QUIT\r\n")
            self._quitTimer = self.clock.callLater(
                min(self.timeout, QUIT_WAIT), self.transport.loseConnection
            )


#: a message up to this size is read whole in the delivery's one look at its file and sent
#: in one write with its final dot; a larger one is streamed from the file (remote.md 11.4)
INLINE_LIMIT = 64 * 1024


def lookAtMessage(path: str, limit: int = INLINE_LIMIT) -> tuple[bool, bytes | None]:
    """
    In a thread job: whether the message file's last byte is not LF (a partial final line,
    which SMTP cannot carry), and the whole message when it is at most C{limit} bytes (else
    L{None}: the transaction streams it from the file). Memory stays bounded by the remote
    concurrency times C{limit}.

    @raise OSError: unreadable.
    """
    with open(path, "rb", buffering=0) as f:  # unbuffered: no isatty or seek on open
        size = os.fstat(f.fileno()).st_size
        if size <= limit:
            data = f.read()
            return data[-1:] not in (b"\n", b""), data
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n", None


@define
class TLSSetting:
    """
    How to use STARTTLS on this connection.

    @ivar allowed: send STARTTLS when offered (False on the plaintext retry).
    @ivar required: a verified certificate is mandatory (C{control/tlsverify}).
    @ivar options: the C{IOpenSSLClientConnectionCreator} or context factory to use.
    @ivar name: the reference name (relay or MX host) for messages.
    @ivar failureText: C{(name, ip, reason)} -> the deferral text when required TLS did not
        happen (L{tlsFailureText}; the TLS policy's own texts, docs/behaviour/tls-policy.md).
    @ivar afterHandshake: called with the transport once the EHLO inside TLS got its 250;
        returns L{None} to go on, or a deferral text: then the next address is tried
        (L{qmtwist.remote.tlspolicy}: certificate checks, the TLS log line).
    """

    allowed: bool = True
    required: bool = False
    options: Any = None
    name: bytes = b""
    failureText: Callable[[bytes, str, str], str] = lambda n, i, r: tlsFailureText(n, i, r)
    afterHandshake: Callable[[Any], Awaitable[str | None]] | None = None


def tlsFailureText(name: bytes, ip: str, reason: str) -> str:
    """The deferral text when C{control/tlsverify} asks for TLS that did not happen (remote.md 11.5)."""
    reason = " ".join(reason.split())[:300]
    return f"TLS required but not verified for {printable(name)} at {ip}: {reason}. (#4.7.1)"


async def transact(
    proto: ReplyProtocol,
    ip: str,
    helohost: bytes,
    sender: bytes,
    recipients: list[bytes],
    messPath: str,
    tls: TLSSetting,
    runInThread: Callable[[Callable[[], Any]], Any],
    prefix: bytes = b"",
    keep: bool = False,
    body: bytes | None = None,
) -> list[Report]:
    """
    Run one SMTP transaction on a connected L{ReplyProtocol} (docs/behaviour/remote.md 11.4).

    @param runInThread: opens the message file off the reactor thread.
    @param prefix: header lines sent before the message (the DKIM signatures, docs/behaviour/dkim.md).
    @param keep: leave the connection open after a completed transaction (L{mailtx}).
    @param body: the whole message when it was read already (L{lookAtMessage}); else the file
        at C{messPath} is streamed.
    @return: one L{Report} per recipient, in order.
    @raise Reconnect: an opportunistic STARTTLS failed; the caller reconnects without it.
    @raise NextAddress: a 4xx greeting, or none within C{timeoutremote}; the caller tries
        the next address.
    """
    host = ip.encode("ascii")
    transport: Any = proto.transport
    results: list[Report | None] = [None] * len(recipients)
    critical = False

    def rest(report: Report) -> list[Report]:
        return [r if r is not None else report for r in results]

    def quit(outcome: Outcome, text: bytes, reply: Reply | None) -> list[Report]:
        proto.close()
        return rest(report(outcome, text + (said(reply.text) if reply else b"")))

    def byCode(code: int) -> Outcome:
        return Outcome.FAILURE if code >= 500 else Outcome.DEFERRAL

    try:
        try:
            r = await proto.reply()
        except ConnectionDied as e:
            proto.close()
            why = (f"no greeting within {proto.timeout:g} s" if proto.timedOut
                   else f"connection lost before the greeting ({e})")
            raise NextAddress(why, rest(connectionDied(ip))) from e
        if r.code != 220:
            if 400 <= r.code < 500:
                reports = quit(Outcome.DEFERRAL, b"Connected to %s but greeting failed.\n" % host, r)
                first = clean(r.lines[0] if r.lines else b"")[:200].decode("utf-8", "replace")
                raise NextAddress(f"greeting {first}", reports)
            return quit(Outcome.DEFERRAL, b"Connected to %s but greeting failed.\n" % host, r)
        proto.send(b"EHLO " + helohost)
        r = await proto.reply()
        ehlo: Reply | None = r
        if r.code >= 500:
            ehlo = None
            proto.send(b"HELO " + helohost)
            r = await proto.reply()
        if r.code != 250:
            return quit(Outcome.DEFERRAL, b"Connected to %s but my name was rejected.\n" % host, r)
        offered = ehlo is not None and any(
            line[4:].split(b" ")[0].upper() == b"STARTTLS" for line in ehlo.lines[1:]
        )
        if tls.required and not (offered and tls.allowed):
            return quit(Outcome.DEFERRAL,
                        tls.failureText(tls.name, ip, "STARTTLS not offered").encode() + b"\n", None)
        if offered and tls.allowed:
            proto.send(b"STARTTLS")
            r = await proto.reply()
            if r.code != 220:
                if tls.required:
                    rejected = tls.failureText(tls.name, ip, "STARTTLS rejected").encode() + b"\n"
                    return quit(Outcome.DEFERRAL, rejected, r)
            else:
                injected = proto.discardPending()
                if injected:
                    _log.warn("TLS to {ip}: discarded {n} bytes received in plaintext after the "
                              "220 to STARTTLS", ip=ip, n=injected)
                transport.startTLS(tls.options)
                proto.send(b"EHLO " + helohost)
                try:
                    r = await proto.reply()
                except ConnectionDied as e:
                    if tls.required:
                        text = tls.failureText(tls.name, ip, str(e) or "handshake failed")
                        return rest(Report.deferral(text))
                    raise Reconnect(f"TLS to {ip} failed ({e}); retrying without STARTTLS") from e
                proto.tls = True  # an answer came through TLS: the handshake is done
                if r.code != 250:
                    return quit(Outcome.DEFERRAL,
                                b"Connected to %s but my name was rejected.\n" % host, r)
                ehlo = r
                if tls.afterHandshake is not None:
                    refusal = await tls.afterHandshake(transport)
                    if refusal is not None:
                        raise NextAddress(refusal, quit(Outcome.DEFERRAL, refusal.encode(), None))
        # MAIL..dot (mailtx); SMTPUTF8 and PIPELINING from the EHLO reply kept with the
        # connection, which may be reused (docs/behaviour/remote.md 11.8, smtp-extensions.md 20.6)
        proto.ehloLines = ehlo.lines if ehlo is not None else None
        return await mailTransaction(proto, ip, sender, recipients, messPath, runInThread,
                                     prefix, keep=keep, body=body)
    except ConnectionDied:
        proto.close()
        return rest(connectionDied(ip, critical))
