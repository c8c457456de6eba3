"""
What the queue service hands a delivery agent, and what it gets back.

A L{DeliveryRequest} names one (message, recipient) pair; a L{Report} is qmail's K/Z/D letter
(L{Outcome}) plus the report text that ends up in the log and the bounce (docs/behaviour/local.md 4.10,
queue.md 6.2).
"""

from __future__ import annotations

from enum import Enum

from attrs import field, frozen


class Outcome(Enum):
    """The words qmail-send logs."""

    SUCCESS = "success"
    DEFERRAL = "deferral"
    FAILURE = "failure"


REPORT_LIMIT = 3000


def capReport(text: bytes) -> bytes:
    """Cut a report as qmail-local does: over 3000 bytes keeps 2966 and says so."""
    if len(text) > REPORT_LIMIT:
        return text[:2966] + b"\nError report too long, sorry.\n"
    return text


@frozen
class Report:
    """
    The result of one delivery.

    @ivar text: the report, LF-terminated lines (e.g. C{b"did 1+0+0\\n"}); raw bytes.
    """

    outcome: Outcome
    text: bytes

    @classmethod
    def success(cls, text: bytes | str) -> Report:
        return cls(Outcome.SUCCESS, _b(text))

    @classmethod
    def deferral(cls, text: bytes | str) -> Report:
        return cls(Outcome.DEFERRAL, _b(text))

    @classmethod
    def failure(cls, text: bytes | str) -> Report:
        return cls(Outcome.FAILURE, _b(text))


def _b(text: bytes | str) -> bytes:
    if isinstance(text, str):
        text = text.encode("utf-8", "replace")
    if not text.endswith(b"\n"):
        text += b"\n"
    return capReport(text)


@frozen
class DeliveryRequest:
    """
    One recipient of one queued message.

    @ivar msgId: the message number (inode of the mess file).
    @ivar messPath: path of the queued message file (starts with the queue's Received line).
    @ivar sender: envelope sender of this copy, VERP already expanded (docs/behaviour/queue.md 5.8).
    @ivar recipient: the recipient after preprocessing (e.g. C{b"bob-info@nowhere.mil"}).
    @ivar position: index of the recipient in its channel file; stable across restarts.
    @ivar stamp: a token unique to this message for ever (mess file's mtime in ns and inode);
        with C{position} it names the delivery so a Maildir writer can find an earlier copy.
    @ivar mayBeRepeat: this recipient may have been attempted before (a retry or a restart), so
        an exactly-once writer should look for an earlier copy first.
    @ivar lastPass: the queue lifetime has run out; a deferral will become a failure.
    """

    msgId: int
    messPath: str
    sender: bytes
    recipient: bytes
    position: int
    stamp: str
    mayBeRepeat: bool = False
    lastPass: bool = field(default=False)

    @property
    def uniqueKey(self) -> str:
        """A file-name-safe key of this delivery, the same after a restart."""
        return f"{self.stamp}Q{self.position}"
