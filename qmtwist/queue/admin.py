"""
Queue control of the live queue service (docs/behaviour/queue-control.md 17.1): list, hold,
release, delete and retry messages by number.

Every change is made here, on the reactor thread, in the queue service's own state (its
messages, its C{held} set, its timer heap), so nothing races the scheduler; the file work
(hold markers, the delete's unlinks, reading deferral notes) goes through the service's
L{qmtwist.queue.finish.FileOps}, in order with its other file operations, on a thread.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger

from qmtwist.queue import clean, marks
from qmtwist.queue.service import QueueService
from qmtwist.queue.state import Message

log = Logger(namespace="qmail-send")


@define
class Outcome:
    """What one change did: the numbers it changed and one line per number it refused."""

    done: list[int] = field(factory=list)
    errors: list[str] = field(factory=list)

    def asDict(self) -> dict[str, Any]:
        return {"ok": not self.errors, "done": self.done, "errors": self.errors}


def _recipients(m: Message) -> list[tuple[dict[str, Any], int]]:
    """Each recipient not yet done, as its JSON object and its position in the channel file."""
    out = []
    for name in ("local", "remote"):
        ch = m.channels.get(name)
        if ch is None:
            continue
        for e in ch.undone():
            reason = ch.reasons.get(e.position)
            out.append(({
                "address": e.address.decode("utf-8", "replace"),
                "channel": name,
                "delay_reason": None if reason is None else reason.decode("utf-8", "replace"),
                "next_attempt": None if e.position in ch.inFlight else ch.scheduled,
            }, e.position))
    return out


class QueueAdmin:
    """
    The operations of C{qmtwist ctl} on one running L{QueueService}.

    @ivar queue: the queue service; its C{messages}, C{held} and timers are changed here only on
        the reactor thread.
    """

    def __init__(self, queue: QueueService) -> None:
        self.queue = queue

    def listing(self) -> Deferred[list[dict[str, Any]]]:
        """
        The messages as C{qmtwist ctl queue --json} prints them (one dict each, by number). A
        deferral text comes from memory or, for a recipient not tried since the start, from
        the message's note in C{why/}, read on a thread. C{next_attempt} is L{None} while a
        delivery of the recipient runs.
        """
        q = self.queue
        rows: list[tuple[dict[str, Any], str, list[tuple[dict[str, Any], int]]]] = []
        for m in sorted(q.messages.values(), key=lambda m: m.id):
            recipients = _recipients(m)
            row: dict[str, Any] = {"id": m.id, "arrival_time": m.birth, "size": m.size,
                   "sender": m.sender.decode("utf-8", "replace"), "held": m.id in q.held,
                   "recipients": [r for r, _ in recipients]}
            rows.append((row, m.stamp, recipients))

        def fill() -> list[dict[str, Any]]:
            for row, stamp, recipients in rows:
                missing = [(r, p) for r, p in recipients if r["delay_reason"] is None]
                n = int(row["id"])
                note = marks.readNote(q.layout, n, stamp) if missing else {}
                for r, p in missing:
                    r["delay_reason"] = marks.noteFor(note, r["channel"], p)[0]
                row["bouncing"] = os.path.exists(q.layout.bounce(n))
            return [row for row, _, _ in rows]

        return q.ops.submit(fill)

    def _each(self, ids: list[int], one: Any) -> Deferred[Outcome]:
        """Apply C{one(m) -> Deferred[str | None]} (an error line or None) to each known id."""
        outcome = Outcome()
        waits = []
        for n in dict.fromkeys(ids):
            m = self.queue.messages.get(n)
            if m is None or m.finishing:
                outcome.errors.append(f"msg {n}: not in the queue")
                continue
            d = one(m)

            def record(error: str | None, n: int = n) -> None:
                if error is None:
                    outcome.done.append(n)
                else:
                    outcome.errors.append(error)

            d.addCallback(record)
            waits.append(d)
        return gatherResults(waits).addCallback(lambda _: outcome)

    def hold(self, ids: list[int]) -> Deferred[Outcome]:
        """
        Start nothing more for these messages, durably: the answer comes once C{hold/N} is
        fsynced. In a pass that has begun, the deliveries still waiting for a slot are taken
        back at once (L{QueueService.withhold}); those already with an agent finish and are
        recorded (docs/behaviour/queue-control.md 17.4).
        """
        q = self.queue

        def one(m: Message) -> Deferred[str | None]:
            q.held.add(m.id)
            m.holdTried = True
            q.withhold(m)
            d = q.ops.submit(partial(marks.hold, q.layout, m.id, m.stamp))

            def failed(f: Any) -> str:
                q.held.discard(m.id)
                return f"msg {m.id}: unable to write hold/{m.id}: {f.getErrorMessage()}"

            d.addCallbacks(lambda _: log.info("hold msg {id}", id=m.id), failed)
            return d

        return self._each(ids, one)

    def release(self, ids: list[int]) -> Deferred[Outcome]:
        """Undo L{hold}: passes that came due meanwhile start at once."""
        q = self.queue

        def one(m: Message) -> Deferred[str | None]:
            d = q.ops.submit(partial(marks.release, q.layout, m.id))

            def released(_: object) -> None:
                if m.id in q.held:
                    q.held.discard(m.id)
                    log.info("release msg {id}", id=m.id)
                    self._schedule(m, None)

            d.addCallbacks(released, lambda f: f"msg {m.id}: unable to remove hold/{m.id}: "
                                               f"{f.getErrorMessage()}")
            return d

        return self._each(ids, one)

    def retry(self, ids: list[int]) -> Deferred[Outcome]:
        """Deliver now: every channel not in a pass gets a pass at once (SIGALRM for one)."""
        q = self.queue

        def one(m: Message) -> Deferred[str | None]:
            if m.id in q.held:
                return succeed(f"msg {m.id}: held; release it first")
            log.info("retry msg {id}", id=m.id)
            self._schedule(m, q.clock.seconds())
            return succeed(None)

        return self._each(ids, one)

    def delete(self, ids: list[int]) -> Deferred[Outcome]:
        """
        Remove messages with no bounce (L{qmtwist.queue.clean.deleteMessage}); a message with a
        delivery running is refused (the delivery could still succeed), to be deleted once it
        has reported.
        """
        q = self.queue

        def one(m: Message) -> Deferred[str | None]:
            if any(ch.inFlight for ch in m.channels.values()):
                return succeed(
                    f"msg {m.id}: a delivery is running; try again when it has reported")
            q.messages.pop(m.id, None)  # from now on no timer or report finds it
            q.held.discard(m.id)
            d = q.ops.submit(partial(clean.deleteMessage, q.layout, m.id))

            def deleted(_: object) -> None:
                q.intake.forget(m.id)
                log.info("delete msg {id}: removed by qmtwist ctl, no bounce", id=m.id)
                log.info("end msg {id}", id=m.id)

            def failed(f: Any) -> str:
                q.messages[m.id] = m
                self._schedule(m, None)
                return f"msg {m.id}: unable to delete: {f.getErrorMessage()}"

            d.addCallbacks(deleted, failed)
            return d

        return self._each(ids, one)

    def _schedule(self, m: Message, when: float | None) -> None:
        """Put each channel of C{m} not in a pass back on the timer heap (at C{when} if given)."""
        q = self.queue
        for ch in m.channels.values():
            if ch.inPass or not ch.undone():
                continue
            if when is not None:
                ch.scheduled = when
            q.timers.push(ch.scheduled, m.id, ch.name)
        q.wake()
