"""
The SMTP client of qmail-remote (docs/behaviour/remote.md 11.3-11.5): one transaction on a connected socket.

L{ReplyProtocol} reads multi-line replies and hands them out one by one as Deferreds, each with
the C{timeoutremote} deadline; L{transact} runs EHLO/HELO, STARTTLS, MAIL, one RCPT per
recipient, DATA and the message, and returns one L{Report} per recipient with qmail-remote's
texts. The message is streamed from the queue file with LF -> CRLF (an existing CRLF is kept)
and leading dots doubled.

Differences from qmail 1.03 [qmtwist]: EHLO first (HELO after a 5xx), STARTTLS, several
recipients per transaction with their own reports.
"""

from __future__ import annotations

import unicodedata
from collections import deque
from typing import Any

from attrs import define
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.protocols.basic import FileSender
from twisted.logger import Logger
from twisted.python.failure import Failure

from qmtwist.delivery import Outcome, Report
from qmtwist.received import quoteLocal

MAX_LINE = 65536
MAX_TEXT = 5000  # qmail's HUGESMTPTEXT
QUIT_WAIT = 5.0  # how long to let the peer close after QUIT before closing ourselves

PARTIAL = "SMTP cannot transfer messages with partial final lines. (#5.6.2)"
UNREADABLE = "Unable to read message. (#4.3.0)"

_log = Logger()


class ConnectionDied(Exception):
    """The peer closed, the connection broke, or a reply did not come in time."""


class TLSBroken(Exception):
    """The STARTTLS handshake failed on an opportunistic attempt: reconnect in plaintext."""


class GreetingFailed(Exception):
    """
    The server greeted with a 4xx code, or gave no greeting in time (or closed first): nothing
    was sent, so the caller tries the next address at once (docs/behaviour/remote.md 11.3).

    @ivar why: for the log line, e.g. C{greeting 421 busy}.
    @ivar reports: what the recipients get if no later address takes the message.
    """

    def __init__(self, why: str, reports: list[Report]) -> None:
        super().__init__(why)
        self.why = why
        self.reports = reports


def clean(text: bytes) -> bytes:
    """
    Peer text for a report: decoded tolerantly as UTF-8, NUL as C{?} (as qmail), other control
    characters but LF and TAB as C{?}, capped at L{MAX_TEXT} bytes.
    """
    chars = []
    for c in text[:MAX_TEXT].decode("utf-8", "replace"):
        if c in "\n\t":
            chars.append(c)
        elif unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            chars.append("?")
        else:
            chars.append(c)
    return "".join(chars).encode("utf-8")


def said(text: bytes) -> bytes:
    """C{Remote host said: ⟨reply⟩} lines, or nothing for an empty reply."""
    text = clean(text)
    if not text:
        return b""
    if not text.endswith(b"\n"):
        text += b"\n"
    return b"Remote host said: " + text


def report(outcome: Outcome, text: bytes) -> Report:
    """A L{Report} with the text LF-terminated and capped as qmail-rspawn does."""
    return {
        Outcome.SUCCESS: Report.success,
        Outcome.DEFERRAL: Report.deferral,
        Outcome.FAILURE: Report.failure,
    }[outcome](text)


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


class ReplyProtocol(Protocol):
    """
    A client connection whose replies are awaited one at a time.

    @param clock: C{IReactorTime} for the reply deadline.
    @param timeout: seconds to wait for each reply (C{timeoutremote}).
    """

    def __init__(self, clock: Any, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self._buffer = b""
        self._lines: list[bytes] = []
        self._size = 0
        self._replies: deque[Reply] = deque()
        self._waiter: defer.Deferred[Reply] | None = None
        self._timer: Any = None
        self.lost: Failure | None = None
        self.timedOut = False  # a reply did not come within timeout
        self.connected = False
        self._quitTimer: Any = None
        self._closed: list[defer.Deferred[None]] = []

    def whenClosed(self) -> defer.Deferred[None]:
        """Fires once the connection is gone (at once if it never was or already is)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.connected:
            self._closed.append(d)
        else:
            d.callback(None)
        return d

    def connectionMade(self) -> None:
        self.connected = True

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
            self._timer = self.clock.callLater(self.timeout, self._timedOut)
        return d

    def _deliver(self) -> None:
        d = self._waiter
        if d is None:
            return
        if self._replies:
            self._waiter = None
            self._cancelTimer()
            d.callback(self._replies.popleft())
        elif self.lost is not None:
            self._waiter = None
            self._cancelTimer()
            d.errback(ConnectionDied(self.lost.getErrorMessage()))

    def _cancelTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self) -> None:
        self._timer = None
        self.timedOut = True
        self._fail(ConnectionDied("timeout"))

    def _fail(self, exc: Exception) -> None:
        if self.lost is None:
            self.lost = Failure(exc)
        if self.transport is not None:
            self.transport.abortConnection()
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
        if self.lost is None:
            self.transport.write(line + b"\r\n")

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.connected = False
        if self.lost is None:
            self.lost = reason
        if self._quitTimer is not None and self._quitTimer.active():
            self._quitTimer.cancel()
        self._deliver()
        waiters, self._closed = self._closed, []
        for d in waiters:
            d.callback(None)

    def close(self) -> None:
        """
        Send C{QUIT}; the report does not wait for its answer. The connection is left for the
        peer to close (so a new one never overlaps it at the peer, FAQ 8.1), at most
        L{QUIT_WAIT} seconds.
        """
        self._cancelTimer()
        if self.lost is None and self.transport is not None and self._quitTimer is None:
            self.lost = Failure(ConnectionDied("closed after QUIT"))
            self.transport.write(b"QUIT\r\n")
            self._quitTimer = self.clock.callLater(
                min(self.timeout, QUIT_WAIT), self.transport.loseConnection
            )


class DataEncoder:
    """
    Chunk transform for the message body on the wire (RFC 5321 2.3.8 and 4.5.2).

    Every line end of the queued message -- LF, CR LF, and a bare CR -- is sent as CR LF, and a
    line that starts with C{.} gets a second one. A bare CR or a bare LF therefore never reaches
    the wire: a next hop that ends lines at a lone CR (or LF) sees exactly the lines we see, so
    C{hello<CR>.<CR><LF>MAIL FROM:...} cannot end our DATA early and start a second, forged
    transaction from our address. NUL and every other byte pass unchanged (8-bit data).
    """

    def __init__(self) -> None:
        self.atStart = True
        self.pendingCR = False

    def __call__(self, chunk: bytes) -> bytes:
        if self.pendingCR:
            chunk, self.pendingCR = b"\r" + chunk, False
        if chunk.endswith(b"\r"):
            # CR LF may be split across chunks: decide when the next byte is known.
            chunk, self.pendingCR = chunk[:-1], True
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        out: list[bytes] = []
        parts = chunk.split(b"\n")
        last = len(parts) - 1
        for i, part in enumerate(parts):
            if part:
                if self.atStart and part[:1] == b".":
                    out.append(b".")
                out.append(part)
                self.atStart = False
            if i < last:
                out.append(b"\r\n")
                self.atStart = True
        return b"".join(out)

    def flush(self) -> bytes:
        """What is still held at the end of the message (a final CR, sent as a line end)."""
        if self.pendingCR:
            self.pendingCR, self.atStart = False, True
            return b"\r\n"
        return b""


async def sendFile(
    f: Any, transport: Any, clock: Any, timeout: float, transform: Any = None
) -> None:
    """
    Stream an open file to C{transport}, each chunk through C{transform}; the connection is
    aborted when the peer takes no data for C{timeout} seconds (qmail's write timeout).

    @raise ConnectionDied: the connection ended or stalled before the file was sent.
    """
    timer: list[Any] = [None]

    def cancel() -> None:
        if timer[0] is not None and timer[0].active():
            timer[0].cancel()

    def arm() -> None:
        cancel()
        timer[0] = clock.callLater(timeout, transport.abortConnection)

    def step(chunk: bytes) -> bytes:
        arm()
        return transform(chunk) if transform is not None else chunk

    arm()
    try:
        await FileSender().beginFileTransfer(f, transport, step)
    except Exception as e:
        raise ConnectionDied(f"lost while sending: {e}") from e
    finally:
        cancel()


def hasPartialFinalLine(path: str) -> bool:
    """Whether the message file's last byte is not LF. @raise OSError: unreadable."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        if f.tell() == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) != b"\n"


@define
class TLSSetting:
    """
    How to use STARTTLS on this connection.

    @ivar allowed: send STARTTLS when offered (False on the plaintext retry).
    @ivar required: a verified certificate is mandatory (C{control/tlsverify}).
    @ivar options: the C{IOpenSSLClientConnectionCreator} or context factory to use.
    @ivar name: the reference name (relay or MX host) for messages.
    """

    allowed: bool = True
    required: bool = False
    options: Any = None
    name: bytes = b""


def tlsFailureText(name: bytes, ip: str, reason: str) -> str:
    shown = "".join(c if 32 < ord(c) < 127 else "?" for c in name.decode("latin-1"))
    reason = " ".join(reason.split())[:300]
    return f"TLS required but not verified for {shown} at {ip}: {reason}. (#4.7.1)"


async def transact(
    proto: ReplyProtocol,
    ip: str,
    helohost: bytes,
    sender: bytes,
    recipients: list[bytes],
    messPath: str,
    tls: TLSSetting,
) -> list[Report]:
    """
    Run one SMTP transaction on a connected L{ReplyProtocol}.

    @return: one L{Report} per recipient, in order.
    @raise TLSBroken: an opportunistic STARTTLS failed; the caller reconnects without it.
    @raise GreetingFailed: a 4xx greeting, or none within C{timeoutremote}; the caller tries
        the next address.
    """
    host = ip.encode("ascii")
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
            died = f"Connected to {ip} but connection died. (#4.4.2)"
            raise GreetingFailed(why, rest(Report.deferral(died))) from e
        if r.code != 220:
            if 400 <= r.code < 500:
                reports = quit(Outcome.DEFERRAL, b"Connected to %s but greeting failed.\n" % host, r)
                first = clean(r.lines[0] if r.lines else b"")[:200].decode("utf-8", "replace")
                raise GreetingFailed(f"greeting {first}", reports)
            return quit(Outcome.DEFERRAL, b"Connected to %s but greeting failed.\n" % host, r)
        proto.send(b"EHLO " + helohost)
        r = await proto.reply()
        ehlo = r
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
                        tlsFailureText(tls.name, ip, "STARTTLS not offered").encode() + b"\n", None)
        if offered and tls.allowed:
            proto.send(b"STARTTLS")
            r = await proto.reply()
            if r.code != 220:
                if tls.required:
                    why = tlsFailureText(tls.name, ip, "STARTTLS rejected").encode() + b"\n"
                    return quit(Outcome.DEFERRAL, why, r)
            else:
                injected = proto.discardPending()
                if injected:
                    _log.warn("TLS to {ip}: discarded {n} bytes received in plaintext after the "
                              "220 to STARTTLS", ip=ip, n=injected)
                proto.transport.startTLS(tls.options)
                proto.send(b"EHLO " + helohost)
                try:
                    r = await proto.reply()
                except ConnectionDied as e:
                    if tls.required:
                        text = tlsFailureText(tls.name, ip, str(e) or "handshake failed")
                        return rest(Report.deferral(text))
                    raise TLSBroken(str(e)) from e
                if r.code != 250:
                    return quit(Outcome.DEFERRAL,
                                b"Connected to %s but my name was rejected.\n" % host, r)
        proto.send(b"MAIL FROM:<" + (quoteLocal(sender) if sender else b"") + b">")
        r = await proto.reply()
        if r.code >= 400:
            return quit(byCode(r.code), b"Connected to %s but sender was rejected.\n" % host, r)
        accepted = []
        for i, rcpt in enumerate(recipients):
            proto.send(b"RCPT TO:<" + quoteLocal(rcpt) + b">")
            r = await proto.reply()
            if r.code >= 400:
                results[i] = report(byCode(r.code),
                                    b"%s does not like recipient.\n" % host + said(r.text))
            else:
                accepted.append(i)
        if not accepted:
            proto.close()
            giving = b"Giving up on %s.\n" % host
            return [report(x.outcome, x.text + giving) for x in results if x is not None]
        proto.send(b"DATA")
        r = await proto.reply()
        if r.code >= 400:
            return quit(byCode(r.code), b"%s failed on DATA command.\n" % host, r)
        try:
            f = open(messPath, "rb")
        except OSError:
            proto.close()
            return rest(Report.deferral(UNREADABLE))
        encoder = DataEncoder()
        try:
            await sendFile(f, proto.transport, proto.clock, proto.timeout, encoder)
        finally:
            f.close()
        proto.transport.write(encoder.flush())
        proto.send(b".")
        critical = True
        r = await proto.reply()
        if r.code >= 400:
            return quit(byCode(r.code), b"%s failed after I sent the message.\n" % host, r)
        return quit(Outcome.SUCCESS, b"%s accepted message.\n" % host, r)
    except ConnectionDied:
        proto.close()
        dup = "Possible duplicate! " if critical else ""
        return rest(Report.deferral(f"Connected to {ip} but connection died. {dup}(#4.4.2)"))
