"""
qmail-qmtpd's answers, byte-exact (docs/behaviour/qmtp.md 9.2), and how a long run of one
answer is written without building it whole.

An answer is a netstring whose first byte is C{K} (queued), C{Z} (try later) or C{D} (refused).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.protocols.basic import FileSender

from qmtwist.errors import QueueError
from qmtwist.policy import Refusal

RCPTHOSTS_TEXT = b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
RECIPIENT_TEXT = b"Dsorry, I can't handle that recipient (#5.1.3)"
SENDER_TEXT = b"Dunacceptable sender (#5.1.7)"
DATABYTES_TEXT = b"Dsorry, that message size exceeds my databytes limit (#5.3.4)"
TOOMANY_TEXT = b"Ztoo many recipients (#4.5.3)"

#: The answer for a recipient the session policy refuses.
REFUSALS: dict[Refusal, bytes] = {
    Refusal.UNSTORABLE: RECIPIENT_TEXT,
    Refusal.NOT_IN_RCPTHOSTS: RCPTHOSTS_TEXT,
    Refusal.TOO_MANY: TOOMANY_TEXT,
}

#: Above this many bytes a repeated answer goes through a pull producer.
SLICE = 65536


def queueText(e: QueueError) -> bytes:
    """The queue's reason with its letter: C{Z⟨text⟩} or C{D⟨text⟩} (docs/behaviour/queue.md 5.3)."""
    return (b"D" if e.permanent else b"Z") + e.text.encode()


def okText(when: float, qp: int) -> bytes:
    """C{Kok TIME qp QP}: queued and durable."""
    return b"Kok %d qp %d" % (int(when), qp)


def writeRepeated(transport: Any, piece: bytes, count: int) -> Deferred[None] | None:
    """
    Write C{piece} C{count} times: at once up to L{SLICE} bytes, beyond that through
    L{FileSender} as the client reads, so millions of recipients past maxrcpt are answered in
    bounded memory (docs/behaviour/qmtp.md 9.2).

    @return: L{None}, or a L{Deferred} that fires when all is written or the client is gone.
    """
    if len(piece) * count <= SLICE:
        transport.write(piece * count)
        return None
    d = FileSender().beginFileTransfer(_Repeated(piece, count), transport)
    return d.addCallbacks(lambda _: None, lambda f: None)  # a lost client: nothing owed


class _Repeated:
    """A file-like source of C{count} copies of C{piece}, read by L{FileSender}."""

    def __init__(self, piece: bytes, count: int) -> None:
        self.piece = piece
        self.count = count

    def read(self, size: int) -> bytes:
        n = min(self.count, max(1, size // len(self.piece)))
        self.count -= n
        return self.piece * n
