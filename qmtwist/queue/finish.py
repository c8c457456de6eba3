"""
The end of a message (qmail-send's cleanup and bounce step, docs/behaviour/queue.md 5.7): the
one bounce for every permanent failure recorded in C{bounce/N}, then removal of the message's
files, through the queue service's batched file operations (L{qmtwist.queue.fileops}).

The bounce is written on a thread with L{qmtwist.queue.store.writeMessage} and committed through
any L{IInjector}'s C{commitPending}, in the same rounds as every other message.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from qmtwist.control import Control
from qmtwist.interfaces import IInjector
from qmtwist.queue import bounce as qbounce
from qmtwist.queue import clean, dsn
from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.fileops import FileOps
from qmtwist.queue.store import PendingMessage, writeMessage

log = Logger(namespace="qmail-send")
RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]


def _readParagraphs(layout: QueueLayout, n: int) -> bytes | None:
    try:
        with open(layout.bounce(n), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _prepareBounce(layout: QueueLayout, control: Control, now: float, n: int, sender: bytes,
                   qp: int) -> PendingMessage | str | None:
    """
    Thread side: read bounce/N, build the bounce (qmail's text inside an RFC 3464 report,
    L{dsn.reportChunks}) and write it into the queue, the copies of the message streamed from
    its file in chunks (memory does not grow with the message), not yet committed.
    L{None}: no bounce; C{"triple"}: a failed double bounce, dropped.
    """
    paragraphs = _readParagraphs(layout, n)
    if paragraphs is None:
        return None
    b = qbounce.makeBounce(control, sender, paragraphs, b"", now)
    if b is None:
        return "triple"

    chunks = dsn.reportChunks(control, b, paragraphs, layout.mess(n), now, n, qp)
    return writeMessage(layout, chunks, lambda: (b.sender, [b.recipient]), b"for bounce",
                        os.getuid(), qp, now)


def finishMessage(
    layout: QueueLayout, ops: FileOps, control: Control, now: float, injector: IInjector,
    n: int, sender: bytes, side: clean.SideFiles = clean.ALL_SIDE_FILES,
) -> Deferred[None]:
    """
    Queue the bounce of message C{n} if it has one (or drop a triple bounce), then remove its
    files. Fails, leaving every file in place, when the bounce cannot be queued. The bounce is
    built and written on a thread; only its commit goes through the injector's round.

    @param side: the side files that may exist (L{clean.sideFiles}): without C{bounce}, no
        bounce is looked for and the removal is the only thread job.
    """
    def remove() -> Deferred[Any]:
        return ops.submit(lambda: clean.removeMessage(layout, n, side))

    if "bounce" not in side:
        return remove().addCallback(lambda _: None)
    qp = injector.allocateQp()

    def commitThenRemove(prepared: PendingMessage | str | None) -> Deferred[Any]:
        if prepared is None:
            return remove()
        if prepared == "triple":
            log.info("triple bounce: discarding bounce/{id}", id=n)
            return remove()
        assert isinstance(prepared, PendingMessage)

        def queued(q: Any) -> Deferred[Any]:
            log.info("bounce msg {id} qp {qp}", id=n, qp=q.qp)
            return remove()

        return injector.commitPending(prepared).addCallback(queued)

    d = ops.submit(lambda: _prepareBounce(layout, control, now, n, sender, qp))
    d.addCallback(commitThenRemove)
    d.addCallback(lambda _: None)
    return d
