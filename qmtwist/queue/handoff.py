"""
The in-process hand-off (docs/behaviour/queue.md 5.11): messages committed by the daemon's own
injector are preprocessed in their commit round, from the envelope the round holds in memory,
and reach the queue service as L{Preprocessed} results, not as todo entries to read again.

A round of the daemon (L{qmtwist.queue.commitround.commitRound} with a L{HandOff}) does, on one
thread hop: make its messages' files durable together with the C{info/}, C{local/} and
C{remote/} files the previous rounds wrote (one syncfs); remove those rounds' todo entries; link
its own todo entries; sync C{todo/} (its commit point, and the removals made durable: those
messages are released to the service). Its committers are answered then. A second thread job,
L{HandOff.finish}, which may run beside the next round, writes the round's own messages'
C{info/}, C{local/} and C{remote/} files, which a later round makes durable, and removes the
released messages' C{intd/} entries (scratch). With no round waiting, the injector runs one at
once with no new message (L{qmtwist.queue.commit}).

So the files left by a crash are always those of a known state: a todo entry, preprocessed
again at the start (its files rewritten), until the removal of the todo entry is durable, which
is after its files are durable and before the service is told of the message (no delivery, so
no C{D} mark, can exist while the todo entry may come back).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Iterable, Protocol

from attrs import define, field, frozen

from qmtwist.control import Control
from qmtwist.queue import crashpoint
from qmtwist.queue.layout import QueueLayout
from qmtwist.queue.preprocess import Preprocessed, Problem, writeFiles

if TYPE_CHECKING:
    from qmtwist.queue.store import PendingMessage, Syncer


class Receiver(Protocol):
    """What the injector hands preprocessed messages to (L{qmtwist.queue.intake.Intake})."""

    def claim(self, ids: list[int]) -> tuple[Control, set[int]] | None:
        """
        At the start of a round, on the reactor thread: which of C{ids} the round may
        preprocess (the others go the todo way), and the controls to do it with; L{None}:
        none of them.
        """

    def adopt(self, results: Iterable[Preprocessed | Problem], dropped: Iterable[int]) -> None:
        """
        On the reactor thread: messages whose preprocessing is durable and whose todo entry is
        durably gone (L{Preprocessed}), or that must go the todo way after all (L{Problem});
        C{dropped}: claimed numbers that were not committed, or not durably.
        """


@frozen
class Written:
    """A message whose files a round wrote: durable once the next round's first sync is."""

    result: Preprocessed
    dirs: frozenset[str]


@define
class HandOff:
    """
    One round's share of the hand-off: what it takes in and what it gives back.

    @ivar control: the controls to classify this round's recipients with (L{None}: none
        claimed).
    @ivar claimed: the numbers of this round's messages to preprocess.
    @ivar settling: the messages the previous rounds wrote, to be made durable and released.
    @ivar released: those of C{settling} whose files and todo removal are now durable.
    @ivar kept: those of C{settling} whose todo removal could not be made durable: retried.
    @ivar written: this round's messages, to settle in the next round.
    @ivar problems: messages that go the todo way after all (their todo entry is there).
    @ivar scratch: the C{intd/} entries of messages whose todo entry this round removed, for
        L{finish} to remove (off the committers' path: nothing depends on them).
    """

    layout: QueueLayout
    control: Control | None
    claimed: set[int]
    settling: list[Written]
    released: list[Preprocessed] = field(factory=list)
    kept: list[Written] = field(factory=list)
    written: list[Written] = field(factory=list)
    problems: list[Problem] = field(factory=list)
    scratch: list[str] = field(factory=list)
    _unlinked: list[Written] = field(factory=list)

    def directories(self) -> set[str]:
        """The directories the settling messages' files are in (synced without syncfs)."""
        out: set[str] = set()
        for w in self.settling:
            out |= w.dirs
        return out

    def syncFailed(self) -> None:
        """The round's first sync failed: the settling messages' todo entries stay, and the
        queue service preprocesses them again from there (in 10 seconds)."""
        self.problems.extend(
            Problem(w.result.id, f"warning: trouble fsyncing info/{w.result.id}", True)
            for w in self.settling)

    def unlinkSettled(self) -> bool:
        """
        Their files are durable: remove the settling messages' todo entries; their intd
        entries go later (L{scratch}). A todo entry that cannot be removed stays and goes the
        todo way.

        @return: whether any todo entry was removed (C{todo/} needs a sync).
        """
        for w in self.settling:
            n = w.result.id
            try:
                _unlink(self.layout.todo(n))
            except OSError:
                self.problems.append(Problem(n, f"warning: trouble removing todo/{n}", True))
                continue
            self.scratch.append(self.layout.intd(n))
            self._unlinked.append(w)
        return bool(self._unlinked)

    def todoSynced(self, ok: bool) -> None:
        """After the round's sync of C{todo/}: release what it made durable, or keep it."""
        if ok:
            self.released.extend(w.result for w in self._unlinked)
        else:
            self.kept.extend(self._unlinked)
        self._unlinked = []

    def takeProblems(self) -> list[Problem]:
        """The problems found so far, handed over once (the rest come from L{finish})."""
        out, self.problems = self.problems, []
        return out

    def needsFinish(self) -> bool:
        """Whether L{finish} has anything to do: messages claimed, or intd entries to remove."""
        return bool(self.claimed or self.scratch)

    def finish(self, committed: list[PendingMessage], syncer: Syncer) -> None:
        """
        The round's second thread job, after its committers were answered: write the claimed
        messages' files (L{preprocess}), then remove the intd entries of the messages released
        (L{scratch}; one left by a crash is removed at a start once 36 hours old, queue.md
        5.10).
        """
        self.preprocess(committed, syncer)
        if self.written:
            crashpoint.reached("after-info")
        scratch, self.scratch = self.scratch, []
        for path in scratch:
            try:
                _unlink(path)
            except OSError:
                pass

    def preprocess(self, committed: list[PendingMessage], syncer: Syncer) -> None:
        """Write the claimed messages' files from their envelopes (after their commit)."""
        for p in committed:
            if p.id not in self.claimed:
                continue
            assert self.control is not None and p.committed is not None
            env = p.committed
            dirs: set[str] = set()
            try:
                local, remote, birth = writeFiles(
                    self.layout, p.id, env.sender, env.recipients, self.control, syncer, dirs)
            except OSError:
                self.problems.append(Problem(p.id, f"warning: trouble writing to info/{p.id}",
                                             True))
                continue
            self.written.append(Written(
                Preprocessed(p.id, env.sender, env.uid, env.qp, p.messSize, birth, p.stamp,
                             local, remote), frozenset(dirs)))

    def dropped(self) -> list[int]:
        """Claimed numbers that came out neither written nor as a problem (not committed)."""
        out = {w.result.id for w in self.written} | {p.id for p in self.problems}
        return sorted(self.claimed - out)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
