"""
QMTP delivery for C{control/qmtproutes} (docs/behaviour/qmtp.md 9.3) [qmtwist; qmail has only maildirqmtp].

One package per message and relay: the message netstring (C{\\n} then the queued bytes, LF line
ends), the sender, and the recipient list; then one response netstring per recipient:
K -> success, Z -> deferral, D -> failure. A connection that closes before every response has
arrived defers the recipients without one.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from qmtwist.delivery import Outcome, Report
from qmtwist.qmtp.netstring import NetstringError, NetstringParser, encode, encodeList
from qmtwist.remote.smtpclient import UNREADABLE, report, said, sendFile

MAX_RESPONSE = 5000


class QMTPClientProtocol(Protocol):
    """
    Collects response netstrings; L{responses} fires when C{count} have arrived, or fails
    with the reason the connection ended or timed out first.
    """

    def __init__(self, clock: Any, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self.received: list[bytes] = []
        self.expected = 0
        self._done: defer.Deferred[list[bytes]] | None = None
        self._timer: Any = None
        self.lost: Failure | None = None
        self.connected = False
        self._closed: list[defer.Deferred[None]] = []
        self._parser = NetstringParser(self._response, maxLength=MAX_RESPONSE)

    def connectionMade(self) -> None:
        self.connected = True

    def whenClosed(self) -> defer.Deferred[None]:
        """Fires once the connection is gone."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.connected:
            self._closed.append(d)
        else:
            d.callback(None)
        return d

    def close(self) -> None:
        if self.transport is not None:
            self.transport.loseConnection()

    def responses(self, count: int) -> defer.Deferred[list[bytes]]:
        """Wait for C{count} responses; each further silence of C{timeout} s ends the wait."""
        self.expected = count
        self._done = defer.Deferred()
        self._arm()
        self._check()
        return self._done

    def _arm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.clock.callLater(self.timeout, self._timedOut)

    def _timedOut(self) -> None:
        self._timer = None
        self._end(Failure(ConnectionError("timeout")))
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self._done is not None and self._timer is not None:
            self._arm()
        try:
            self._parser.feed(data)
        except NetstringError as e:
            self._end(Failure(e))
            self.transport.abortConnection()

    def _response(self, content: bytes) -> None:
        self.received.append(content)
        self._check()

    def _check(self) -> None:
        if self._done is not None and len(self.received) >= self.expected:
            d, self._done = self._done, None
            self._stopTimer()
            d.callback(self.received[: self.expected])
            self.transport.loseConnection()

    def _end(self, reason: Failure) -> None:
        if self.lost is None:
            self.lost = reason
        if self._done is not None:
            d, self._done = self._done, None
            self._stopTimer()
            d.errback(reason)

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.connected = False
        self._end(reason)
        waiters, self._closed = self._closed, []
        for d in waiters:
            d.callback(None)


async def transact(
    proto: QMTPClientProtocol,
    ip: str,
    sender: bytes,
    recipients: list[bytes],
    messPath: str,
) -> list[Report]:
    """Send one package and map each response to a L{Report} (docs/behaviour/qmtp.md 9.3)."""
    host = ip.encode("ascii")
    sent = False
    waiting: defer.Deferred[list[bytes]] | None = None
    try:
        try:
            f = open(messPath, "rb")
            size = os.fstat(f.fileno()).st_size
        except OSError:
            proto.transport.loseConnection()
            return [Report.deferral(UNREADABLE) for _ in recipients]
        try:
            proto.transport.write(b"%d:\n" % (size + 1))
            await sendFile(f, proto.transport, proto.clock, proto.timeout)
        finally:
            f.close()
        proto.transport.write(b"," + encode(sender) + encodeList(recipients))
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
            dup = "Possible duplicate! " if sent else ""
            out.append(Report.deferral(f"Connected to {ip} but connection died. {dup}(#4.4.2)"))
            continue
        answer = answers[i]
        letter, text = answer[:1], answer[1:]
        if letter == b"K":
            out.append(report(Outcome.SUCCESS, b"%s accepted message.\n" % host + said(text)))
        elif letter == b"D":
            out.append(report(Outcome.FAILURE,
                              b"%s does not like recipient.\n" % host + said(text)))
        else:
            out.append(report(Outcome.DEFERRAL,
                              b"%s does not like recipient.\n" % host + said(text)))
    return out
