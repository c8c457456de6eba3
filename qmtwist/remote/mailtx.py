"""
One mail transaction of the SMTP client (docs/behaviour/remote.md 11.4, 11.8, 11.9): MAIL, one
RCPT per recipient, DATA and the message, on a connection past EHLO (and STARTTLS), fresh or
taken from the connection cache (L{qmtwist.remote.scache}).

When the peer offers PIPELINING (RFC 2920), MAIL, the RCPTs and DATA go out in one write and
the replies are read in order; the per-recipient reports are those of the command-by-command
dialogue. SMTPUTF8 is decided per message from the EHLO reply remembered with the connection.

On a connection taken from the cache, a loss, a timeout or a C{421} before the final dot was
sent raises L{StaleConnection}: nothing was accepted, and the caller delivers on a fresh
connection (no deferral, no duplicate). After the dot, the qmail rule stands: a lost reply is a
deferral with "Possible duplicate!".
"""

from __future__ import annotations

import functools
from typing import Any, BinaryIO, Callable

from qmtwist.delivery import Outcome, Report
from qmtwist.remote.connection import ConnectionDied, sendFile
from qmtwist.remote.dataencoder import DataEncoder
from qmtwist.remote.reports import UNREADABLE, connectionDied, report, said
from qmtwist.remote.smtputf8 import mailFrom, notOffered, offersSMTPUTF8, quoteAddress


class StaleConnection(Exception):
    """A reused connection failed before the message went out: use a fresh one."""


def offersPipelining(ehloLines: list[bytes] | None) -> bool:
    """Whether an EHLO reply (its lines, the first being the greeting) has C{PIPELINING}."""
    return ehloLines is not None and any(
        line[4:].split(b" ")[0].upper() == b"PIPELINING" for line in ehloLines[1:])


def _byCode(code: int) -> Outcome:
    return Outcome.FAILURE if code >= 500 else Outcome.DEFERRAL


async def mailTransaction(
    proto: Any,
    ip: str,
    sender: bytes,
    recipients: list[bytes],
    messPath: str,
    runInThread: Callable[[Callable[[], Any]], Any],
    prefix: bytes = b"",
    *,
    keep: bool = False,
    reused: bool = False,
    body: bytes | None = None,
) -> list[Report]:
    """
    Run MAIL..final dot on C{proto} (a L{qmtwist.remote.smtpclient.ReplyProtocol} whose
    C{ehloLines} are set) and return one L{Report} per recipient.

    @param keep: on success leave the connection open and set C{proto.completed} (the caller
        caches it); otherwise it is closed with C{QUIT}.
    @param reused: the connection came from the cache (see L{StaleConnection}).
    @param body: the whole message, read in the delivery's look at its file: sent with its
        final dot in one write. L{None}: the file at C{messPath} is opened and streamed.
    @raise StaleConnection: C{reused} and the connection failed before the dot was sent.
    """
    host = ip.encode("ascii")
    transport: Any = proto.transport
    results: list[Report | None] = [None] * len(recipients)
    critical = False
    proto.uses += 1
    proto.completed = False

    def rest(r: Report) -> list[Report]:
        return [x if x is not None else r for x in results]

    def quit(outcome: Outcome, text: bytes, reply: Any) -> list[Report]:
        proto.close()
        return rest(report(outcome, text + (said(reply.text) if reply else b"")))

    async def reply() -> Any:
        r = await proto.reply()
        if reused and r.code == 421 and not critical:
            raise StaleConnection("421")
        return r

    try:
        ehlo = proto.ehloLines
        utf8 = offersSMTPUTF8(ehlo)
        if not (utf8 or sender.isascii()):
            return quit(Outcome.FAILURE, notOffered(host), None)
        pipelining = offersPipelining(ehlo)
        sendable = []
        for i, rcpt in enumerate(recipients):
            if utf8 or rcpt.isascii():
                sendable.append(i)
            else:
                results[i] = Report.failure(notOffered(host))
        mail = mailFrom(sender, recipients, utf8)
        rcpts = [b"RCPT TO:<" + quoteAddress(recipients[i], utf8) + b">" for i in sendable]
        if pipelining:
            lines = [mail, *rcpts] + ([b"DATA"] if sendable else [])
            if proto.lost is None:
                transport.write(b"".join(x + b"\r\n" for x in lines))
        else:
            proto.send(mail)
        r = await reply()
        if r.code >= 400:
            return quit(_byCode(r.code), b"Connected to %s but sender was rejected.\n" % host, r)
        accepted = []
        for i, line in zip(sendable, rcpts):
            if not pipelining:
                proto.send(line)
            r = await reply()
            if r.code >= 400:
                results[i] = report(_byCode(r.code),
                                    b"%s does not like recipient.\n" % host + said(r.text))
            else:
                accepted.append(i)
        if not accepted:
            if pipelining and sendable:
                r = await reply()  # the DATA sent ahead; a peer that took it gets no message
                if r.code == 354:
                    proto.abort()
            proto.close()
            giving = b"Giving up on %s.\n" % host
            return [report(x.outcome, x.text + giving) for x in results if x is not None]
        if not pipelining:
            proto.send(b"DATA")
        r = await reply()
        if r.code >= 400:
            return quit(_byCode(r.code), b"%s failed on DATA command.\n" % host, r)
        encoder = DataEncoder()
        if body is not None:
            # the message and its final dot in one write; the reply's deadline covers a peer
            # that stops reading
            if proto.lost is None:
                transport.write(encoder(prefix) + encoder(body) + encoder.flush() + b".\r\n")
        else:
            try:
                f: BinaryIO = await runInThread(functools.partial(open, messPath, "rb"))
            except OSError:
                proto.abort()  # inside DATA: a QUIT would be message text
                return rest(Report.deferral(UNREADABLE))
            transport.write(encoder(prefix))
            try:
                await sendFile(f, transport, proto.clock, proto.timeout, encoder)
            finally:
                f.close()
            transport.write(encoder.flush())
            proto.send(b".")
        critical = True
        r = await proto.reply()
        if r.code >= 400:
            return quit(_byCode(r.code), b"%s failed after I sent the message.\n" % host, r)
        if not keep:
            return quit(Outcome.SUCCESS, b"%s accepted message.\n" % host, r)
        proto.completed = True
        return rest(report(Outcome.SUCCESS, b"%s accepted message.\n" % host + said(r.text)))
    except ConnectionDied as e:
        if reused and not critical:
            proto.abort()
            raise StaleConnection(str(e)) from e
        proto.close()
        return rest(connectionDied(ip, critical))
