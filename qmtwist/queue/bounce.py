"""
Bounces in qmail's format, QSBMF (docs/behaviour/queue.md 5.7); pure functions plus the bounce/N file steps.

A permanent failure appends a paragraph to C{bounce/N}; when the message is finished, one bounce
is built from those paragraphs and queued with an empty sender (a double bounce, to
doublebounceto, when the failed message was itself a bounce; a failed double bounce is dropped).
"""

from __future__ import annotations

import os

from attrs import frozen

from qmtwist.control import Control
from qmtwist.durable import writeAll
from qmtwist.received import date822, quoteLocal, returnPath

DOUBLE_BOUNCE_SENDER = b"#@[]"


def paragraph(recipient: bytes, report: bytes) -> bytes:
    """
    C{<recipient>:\n} then the report with every LF that directly follows another LF written
    C{/} (so a paragraph never holds a blank line, docs/behaviour/queue.md 5.7), LF-terminated, then a blank
    line.
    """
    text = bytearray(report)
    for i in range(1, len(text)):
        if text[i] == 10 and report[i - 1] == 10:
            text[i] = ord("/")
    if not text.endswith(b"\n"):
        text += b"\n"
    return b"<" + recipient.replace(b"\n", b"_") + b">:\n" + bytes(text) + b"\n"


def stripVerp(sender: bytes) -> bytes:
    """C{pre@host-@[]} -> C{pre@host} (docs/behaviour/queue.md 5.8)."""
    if sender.endswith(b"-@[]"):
        return sender[:-4]
    return sender


def verpSender(sender: bytes, recipient: bytes) -> bytes:
    """The sender of one copy: C{pre@host-@[]} to C{box@dom} gives C{prebox=dom@host}."""
    if not sender.endswith(b"-@[]"):
        return sender
    base = sender[:-4]
    pre, _, host = base.rpartition(b"@")
    box, _, dom = recipient.rpartition(b"@")
    return pre + box + b"=" + dom + b"@" + host


@frozen
class Bounce:
    """A bounce to queue: envelope and message bytes."""

    sender: bytes
    recipient: bytes
    message: bytes


def bounceTarget(control: Control, originalSender: bytes) -> tuple[bytes, bytes] | None:
    """
    Where the bounce of a message from C{originalSender} goes.

    @return: C{(envelope sender, recipient)}, or L{None} for a triple bounce (discard).
    """
    if originalSender == DOUBLE_BOUNCE_SENDER:
        return None
    if not originalSender:
        return DOUBLE_BOUNCE_SENDER, control.doublebounceto + b"@" + control.doublebouncehost
    return b"", stripVerp(originalSender)


def makeBounce(
    control: Control, originalSender: bytes, paragraphs: bytes, message: bytes, now: float
) -> Bounce | None:
    """
    Build the QSBMF bounce for a finished message; L{None} for a triple bounce.

    @param message: the original message file, its Received lines included.
    """
    target = bounceTarget(control, originalSender)
    if target is None:
        return None
    sender, recipient = target
    double = not originalSender
    bouncehost = control.bouncehost
    head = (
        b"Date: " + date822(now) + b"\n"
        b"From: " + quoteLocal(control.bouncefrom + b"@" + bouncehost) + b"\n"
        b"To: " + recipient + b"\n"
        b"Subject: failure notice\n\n"
        b"Hi. This is the qmail-send program at " + bouncehost + b".\n"
    )
    if double:
        head += b"I tried to deliver a bounce message to this address, but the bounce bounced!\n\n"
        brk = b"--- Below this line is the original bounce.\n\n"
    else:
        head += (
            b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
            b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        )
        brk = b"--- Below this line is a copy of the message.\n\n"
    body = head + paragraphs + brk + returnPath(stripVerp(originalSender)) + message
    return Bounce(sender, recipient, body)


def appendParagraph(path: str, para: bytes) -> None:
    """Append a failure paragraph to C{bounce/N} durably (thread side)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        writeAll(fd, para)
        os.fsync(fd)
    finally:
        os.close(fd)
