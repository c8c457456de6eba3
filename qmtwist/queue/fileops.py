"""
The queue service's file operations, run in batches on a thread (docs/behaviour/queue.md 5.12).

Every blocking file operation of the queue service after preprocessing (D marks, bounce
paragraphs, channel-file and message removal, the C{why/} notes) goes through one L{FileOps}.
Operations submitted while a batch runs wait and go together in the next one: one thread hop
per batch, in submission order.

Writes that must be durable before anything depends on them (the C{D} marks of the channel
files) are submitted with L{FileOps.submitDurable}: the batch writes all of them, then makes
them durable with one sync, and only after it does it run their follow-ups and fire their
Deferreds. With syncfs(2) that one sync is one C{syncfs} of the queue's filesystem, however
many channel files the batch marked; without it, one fsync per file. A failed sync fails every
durable write of the batch.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet.defer import Deferred

from qmtwist.queue import crashpoint
from qmtwist.queue.store import Syncer

RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]
#: An unsynced write: returns the descriptor it wrote through, still open.
DurableWrite = Callable[[], int]


class FileOps:
    """
    Runs queued blocking file operations in batches, one thread hop per batch, in order.

    @param syncer: how the durable writes of a batch are synced (a plain L{Syncer} when
        omitted: one fsync per file).
    @param root: a directory on the queue's filesystem, for C{syncfs} (with a syncer that can
        group).
    @ivar durableSyncs: how many syncs the durable writes have cost (for tests and figures).
    """

    def __init__(self, runInThread: RunInThread, syncer: Syncer | None = None,
                 root: str | None = None) -> None:
        self.runInThread = runInThread
        self.syncer = syncer
        self.root = root
        self.durableSyncs = 0
        self._waiting: list[tuple[Callable[[], Any], Callable[[], Any] | None, bool,
                                  Deferred[Any]]] = []
        self._running = False

    def submit(self, op: Callable[[], Any]) -> Deferred[Any]:
        """Run C{op} on a thread after the operations submitted before it; fires with its result."""
        return self._add(op, None, False)

    def submitDurable(self, write: DurableWrite,
                      then: Callable[[], Any] | None = None) -> Deferred[None]:
        """
        Run C{write} (which writes without syncing and returns its open descriptor) in the next
        batch; once the batch's one sync has made every such write durable, close the
        descriptor, run C{then} (on the thread) and fire. Fails when the write or the sync does.
        """
        return self._add(write, then, True)

    def _add(self, op: Callable[[], Any], then: Callable[[], Any] | None,
             durable: bool) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._waiting.append((op, then, durable, d))
        if not self._running:
            self._run()
        return d

    def _sync(self, fds: list[int]) -> None:
        """One sync for the batch's durable writes."""
        if self.syncer is not None and self.syncer.canGroup and self.root is not None:
            self.syncer.syncFilesystem(self.root)
        else:
            for fd in fds:
                os.fsync(fd)
        self.durableSyncs += 1

    def _work(self, batch: list[tuple[Callable[[], Any], Callable[[], Any] | None, bool,
                                      Deferred[Any]]]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        opened: list[tuple[int, int]] = []  # (index in batch, descriptor)
        for i, (op, _then, durable, _d) in enumerate(batch):
            try:
                value = op()
            except Exception as e:
                results.append((False, e))
                continue
            results.append((True, None if durable else value))
            if durable:
                opened.append((i, value))
        if not opened:
            return results
        try:
            crashpoint.reached("before-mark-sync")
            try:
                self._sync([fd for _, fd in opened])
            except OSError as e:
                for i, _ in opened:
                    results[i] = (False, e)
                return results
            crashpoint.reached("after-mark-sync")
        finally:
            for _, fd in opened:
                try:
                    os.close(fd)
                except OSError:
                    pass
        for i, _ in opened:
            then = batch[i][1]
            if then is not None:
                try:
                    then()
                except Exception as e:
                    results[i] = (False, e)
        return results

    def _run(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True

        def done(results: list[tuple[bool, Any]]) -> None:
            self._running = False
            for (ok, value), (_, _, _, d) in zip(results, batch):
                if ok:
                    d.callback(value)
                else:
                    d.errback(value)
            if self._waiting and not self._running:
                self._run()

        def crashed(f: Any) -> None:
            done([(False, f.value)] * len(batch))

        self.runInThread(lambda: self._work(batch)).addCallbacks(done, crashed)
