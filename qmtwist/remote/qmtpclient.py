"""
QMTP delivery for C{control/qmtproutes} (docs/behaviour/qmtp.md 9.3) [qmtwist; qmail has only maildirqmtp].

One package per message and relay: the message netstring (C{\\n} then the queued bytes, LF line
ends), the sender, and the recipient list; then one response netstring per recipient:
K -> success, Z -> deferral, D -> failure. A connection that closes before every response has
arrived defers the recipients without one.
"""

from __future__ import annotations

import functools
import os
from typing import Any, BinaryIO, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from qmtwist.delivery import Outcome, Report
from qmtwist.netstring import NetstringError, NetstringParser, encode, encodeList
from qmtwist.remote.connection import ClientProtocol, sendFile
from qmtwist.remote.reports import UNREADABLE, connectionDied, report, said

MAX_RESPONSE = 5000


class QMTPClientProtocol(ClientProtocol):
    """
    Collects response netstrings; L{responses} fires when C{count} have arrived, or fails
    with the reason the connection ended or timed out first.
    """

    kind = "qmtp"

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        super().__init__(clock, timeout)
        self.received: list[bytes] = []
        self.expected = 0
        self._done: defer.Deferred[list[bytes]] | None = None
        self._parser = NetstringParser(self._response, maxLength=MAX_RESPONSE)

    def responses(self, count: int) -> defer.Deferred[list[bytes]]:
        """Wait for C{count} responses; each further silence of C{timeout} s ends the wait."""
        self.expected = count
        self._done = defer.Deferred()
        self.setTimeout(self.timeout)
        self._check()
        return self._done

    def timeoutConnection(self) -> None:
        self._end(Failure(ConnectionError("timeout")))
        self.abort()

    def dataReceived(self, data: bytes) -> None:
        if self._done is not None:
            self.resetTimeout()
        try:
            self._parser.feed(data)
        except NetstringError as e:
            self._end(Failure(e))
            self.abort()

    def _response(self, content: bytes) -> None:
        self.received.append(content)
        self._check()

    def _check(self) -> None:
        if self._done is not None and len(self.received) >= self.expected:
            d, self._done = self._done, None
            self.setTimeout(None)
            d.callback(self.received[: self.expected])
            self.close()

    def _end(self, reason: Failure) -> None:
        if self.lost is None:
            self.lost = reason
        if self._done is not None:
            d, self._done = self._done, None
            self.setTimeout(None)
            d.errback(reason)

    def ended(self, reason: Failure) -> None:
        self._end(reason)


def _openSized(path: str) -> tuple[BinaryIO, int]:
    """The message file, open, and its size (blocking: run on a thread)."""
    f = open(path, "rb")
    try:
        return f, os.fstat(f.fileno()).st_size
    except OSError:
        f.close()
        raise


async def transact(
    proto: QMTPClientProtocol,
    ip: str,
    sender: bytes,
    recipients: list[bytes],
    messPath: str,
    runInThread: Callable[[Callable[[], Any]], Any],
    prefix: bytes = b"",
) -> list[Report]:
    """
    Send one package and map each response to a L{Report} (docs/behaviour/qmtp.md 9.3).

    @param runInThread: opens the message file off the reactor thread.
    @param prefix: header lines sent before the message (the DKIM signatures, docs/behaviour/dkim.md).
    """
    host = ip.encode("ascii")
    transport: Any = proto.transport
    sent = False
    waiting: defer.Deferred[list[bytes]] | None = None
    try:
        try:
            f, size = await runInThread(functools.partial(_openSized, messPath))
        except OSError:
            proto.close()
            return [Report.deferral(UNREADABLE) for _ in recipients]
        try:
            transport.write(b"%d:\n" % (size + 1 + len(prefix)) + prefix)
            await sendFile(f, transport, proto.clock, proto.timeout)
        finally:
            f.close()
        transport.write(b"," + encode(sender) + encodeList(recipients))
        sent = True
        waiting = proto.responses(len(recipients))
        answers = await waiting
    except Exception:
        if waiting is not None:
            waiting.addErrback(lambda f: None)
        answers = list(proto.received)
    out: list[Report] = []
    for i in range(len(recipients)):
        if i >= len(answers):
            out.append(connectionDied(ip, sent))
            continue
        letter, text = answers[i][:1], answers[i][1:]
        if letter == b"K":
            out.append(report(Outcome.SUCCESS, b"%s accepted message.\n" % host + said(text)))
        else:
            outcome = Outcome.FAILURE if letter == b"D" else Outcome.DEFERRAL
            out.append(report(outcome, b"%s does not like recipient.\n" % host + said(text)))
    return out
