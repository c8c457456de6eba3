"""
The NUL-separated records of qmail's queue files (docs/behaviour/queue.md 5.2): pure encoding and decoding.

C{intd}/C{todo}: C{u<uid>\\0p<qp>\\0F<sender>\\0} then C{T<recipient>\\0} per recipient.
C{info}: C{F<sender>\\0}. C{local}/C{remote}: C{T<addr>\\0} per recipient, C{D} once done.
"""

from __future__ import annotations

from attrs import frozen

from qmtwist.errors import QQ_ADDRESS_TOO_LONG, QQ_ENVELOPE, QueueError

MAX_ADDRESS = 1003


class CorruptQueueFile(ValueError):
    """A queue file holds a record qmail would call an unknown record type."""


@frozen
class Envelope:
    """A message's envelope as committed by an injector."""

    sender: bytes
    recipients: tuple[bytes, ...]
    uid: int = 0
    qp: int = 0


def checkAddress(address: bytes) -> None:
    """
    Refuse what cannot be stored in an envelope.

    @raise QueueError: 11 for 1003 bytes or more; 91 for NUL or a line break.
    """
    if len(address) >= MAX_ADDRESS:
        raise QueueError(QQ_ADDRESS_TOO_LONG, "address too long")
    if b"\0" in address or b"\n" in address or b"\r" in address:
        raise QueueError(QQ_ENVELOPE, "NUL or line break in an address")


def encodeTodo(env: Envelope) -> bytes:
    checkAddress(env.sender)
    parts = [b"u%d\0p%d\0F" % (env.uid, env.qp) + env.sender + b"\0"]
    for r in env.recipients:
        checkAddress(r)
        parts.append(b"T" + r + b"\0")
    return b"".join(parts)


def decodeTodo(data: bytes) -> Envelope:
    """@raise CorruptQueueFile: a record other than u, p, F, T or a missing F."""
    sender: bytes | None = None
    recipients: list[bytes] = []
    uid = qp = 0
    if data and not data.endswith(b"\0"):
        raise CorruptQueueFile("truncated record")
    for rec in data.split(b"\0")[:-1]:
        kind, value = rec[:1], rec[1:]
        if kind == b"u":
            uid = int(value or b"0")
        elif kind == b"p":
            qp = int(value or b"0")
        elif kind == b"F":
            sender = value
        elif kind == b"T":
            recipients.append(value)
        else:
            raise CorruptQueueFile("unknown record type")
    if sender is None:
        raise CorruptQueueFile("no sender")
    return Envelope(sender, tuple(recipients), uid, qp)


def encodeInfo(sender: bytes) -> bytes:
    return b"F" + sender + b"\0"


def decodeInfo(data: bytes) -> bytes:
    if not data.startswith(b"F") or not data.endswith(b"\0"):
        raise CorruptQueueFile("unknown record type")
    return data[1:-1]


def encodeChannel(addresses: list[bytes]) -> bytes:
    return b"".join(b"T" + a + b"\0" for a in addresses)


@frozen
class ChannelEntry:
    """One recipient of a channel file; C{offset} is where its T/D byte lives."""

    position: int
    offset: int
    address: bytes
    done: bool


def decodeChannel(data: bytes) -> list[ChannelEntry]:
    out: list[ChannelEntry] = []
    offset = 0
    if data and not data.endswith(b"\0"):
        raise CorruptQueueFile("truncated record")
    for position, rec in enumerate(data.split(b"\0")[:-1]):
        kind = rec[:1]
        if kind not in (b"T", b"D"):
            raise CorruptQueueFile("unknown record type")
        out.append(ChannelEntry(position, offset, rec[1:], kind == b"D"))
        offset += len(rec) + 1
    return out


def parseQmailQueueEnvelope(data: bytes) -> tuple[bytes, list[bytes]]:
    """
    Parse what a qmail-queue client writes on fd 1: C{F<s>\\0(T<r>\\0)*\\0}.

    @raise QueueError: 54 when truncated (no final NUL), 91 for a malformed record, 11 for a
        long address.
    """
    if not data:
        raise QueueError(54, "no envelope")
    if not data.startswith(b"F"):
        raise QueueError(QQ_ENVELOPE, "envelope does not start with F")
    if not data.endswith(b"\0\0"):
        raise QueueError(54, "truncated envelope")
    records = data[:-1].split(b"\0")[:-1]
    sender = records[0][1:]
    checkAddress(sender)
    recipients = []
    for rec in records[1:]:
        if not rec.startswith(b"T"):
            raise QueueError(QQ_ENVELOPE, "bad envelope record")
        checkAddress(rec[1:])
        recipients.append(rec[1:])
    return sender, recipients
