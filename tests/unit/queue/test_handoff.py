"""
The in-process hand-off (docs/behaviour/queue.md 5.11): the daemon's injector preprocesses its
own messages in their commit rounds, over a real queue directory, with every thread hop
recorded and run by the test, and every sync counted.
"""

from __future__ import annotations

import builtins
import os
import time
from typing import Any, Callable

import pytest
from attrs import define
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from qmtwist.context import ControlCache
from qmtwist.errors import QueueError
from qmtwist.queue import clean
from qmtwist.queue.commit import RETRY_SOON, Injector
from qmtwist.queue.envelope import decodeChannel
from qmtwist.queue.preprocess import messStamp
from qmtwist.queue.service import QueueService
from qmtwist.queue.store import Syncer, inject
from tests.support import runHeld
from tests.unit.queue.test_service import SpyAgent


class Hops:
    """runInThread for several parts: each call is a hop, recorded by part, run by L{run}."""

    def __init__(self) -> None:
        self.queue: list[tuple[str, Callable[[], Any], Deferred[Any]]] = []
        self.count: dict[str, int] = {}

    def runner(self, name: str) -> Callable[[Callable[[], Any]], Deferred[Any]]:
        def runInThread(f: Callable[[], Any]) -> Deferred[Any]:
            self.count[name] = self.count.get(name, 0) + 1
            d: Deferred[Any] = Deferred()
            self.queue.append((name, f, d))
            return d
        return runInThread

    def runOne(self) -> str:
        name, f, d = self.queue.pop(0)
        runHeld(f, d)
        return name

    def runAll(self) -> list[str]:
        ran = []
        while self.queue:
            ran.append(self.runOne())
        return ran


@define
class FailingSyncer(Syncer):
    """A Syncer whose next syncfs, or next sync of todo/, fails (a disk error)."""

    failFilesystem: int = 0
    failTodo: int = 0

    def syncFilesystem(self, path: str) -> None:
        if self.failFilesystem:
            self.failFilesystem -= 1
            raise OSError(5, "Input/output error")
        super().syncFilesystem(path)

    def syncDirs(self, paths: Any) -> None:
        paths = list(paths)
        if self.failTodo and any(p.endswith("/todo") for p in paths):
            self.failTodo -= 1
            raise OSError(5, "Input/output error")
        super().syncDirs(paths)


@define
class Daemon:
    home: Any
    clock: Clock
    hops: Hops
    syncer: Syncer
    injector: Injector
    service: QueueService
    local: SpyAgent
    remote: SpyAgent

    def commit(self, recipients: list[bytes], body: bytes = b"Subject: t\n\nhello\n"
               ) -> list[Any]:
        out: list[Any] = []
        self.injector.inject(b"joe@test.example", recipients, body, b"by uid 0").addBoth(
            out.append)
        return out

    def files(self, sub: str) -> list[int]:
        return sorted(int(n) for n in os.listdir(self.home.queue.sub(sub)))


def makeDaemon(home: Any, syncer: Syncer | None = None, start: bool = True) -> Daemon:
    """The injector and queue service as the daemon hooks them up (qmtwist/plugin.py)."""
    clock = Clock()
    clock.advance(time.time())
    hops = Hops()
    syncer = syncer or Syncer()
    injector = Injector(home.queue, home.control, clock, hops.runner("injector"), syncer=syncer)
    local, remote = SpyAgent("local"), SpyAgent("remote")
    service = QueueService(home.queue, ControlCache(home), clock, hops.runner("service"),
                           {"local": local, "remote": remote}, injector, syncer=Syncer())
    injector.addObserver(service.preprocess)
    d = Daemon(home, clock, hops, syncer, injector, service, local, remote)
    if start:
        service.startService()
        hops.runAll()  # recovery of the empty queue
        hops.count.clear()
    return d


def kind(f: Callable[[], Any]) -> str:
    """Which of the injector's thread jobs C{f} is: C{round}, C{finish} or C{settle}."""
    return {"_startRound": "round", "_finish": "finish", "_settle": "settle"}[
        f.__qualname__.split(".")[1]]


def test_a_message_is_answered_after_its_round_preprocessed_next_and_released_later(home):
    d = makeDaemon(home)
    answer = d.commit([b"fred@test.example", b"bob@elsewhere.example"])
    assert kind(d.hops.queue[0][1]) == "round"
    d.hops.runOne()  # the round: committed and answered, not yet preprocessed
    [q] = answer
    assert d.files("todo") == [q.id] and not os.path.exists(home.queue.info(q.id))
    assert [kind(f) for _, f, _ in d.hops.queue] == ["finish"]
    d.hops.runOne()  # its files written, not yet durable nor released
    assert d.files("todo") == [q.id]
    with open(home.queue.local(q.id), "rb") as f:
        assert [e.address for e in decodeChannel(f.read())] == [b"fred@test.example"]
    assert d.local.requests == [] and d.remote.requests == []
    assert [kind(f) for _, f, _ in d.hops.queue] == ["settle"]
    d.hops.runOne()
    assert d.files("todo") == [] and d.files("intd") == []
    [lr], [rr] = d.local.requests, d.remote.requests
    assert (lr.msgId, lr.recipient, rr.recipient) == (q.id, b"fred@test.example",
                                                      b"bob@elsewhere.example")
    # the stamp and size from the round's fstat, the birth from the info file: as a re-read
    stamp, size = messStamp(home.queue, q.id)
    m = d.service.messages[q.id]
    assert (m.stamp, m.size) == (stamp, size) == (lr.stamp, m.size)
    assert m.birth == os.stat(home.queue.info(q.id)).st_mtime
    assert d.hops.count == {"injector": 3}  # no hop of the queue service
    assert d.syncer.fsSyncs == 2 and d.syncer.dirSyncs == 2  # syncfs + todo/ per round


def test_the_next_round_does_not_wait_for_the_preprocessing(home):
    """A commit that arrives while a round runs starts its own round as soon as that one
    returns, before the returned round's messages are preprocessed."""
    d = makeDaemon(home)
    first = d.commit([b"fred@test.example"])
    second = d.commit([b"fred@test.example"])  # waits for the round under way
    d.hops.runOne()
    assert len(first) == 1 and second == []
    assert [kind(f) for _, f, _ in d.hops.queue] == ["finish", "round"]
    d.hops.queue.reverse()  # the second round runs first: it does not need the files
    d.hops.runOne()
    assert len(second) == 1
    d.hops.runAll()
    assert len(d.local.requests) == 2 and d.files("todo") == [] and d.files("intd") == []


def test_under_load_every_sync_belongs_to_a_round(home):
    """Two syncs per round; the preprocessing jobs make none: the syncs that make a round's
    preprocessing durable and remove its todo entries are those of a later round."""
    d = makeDaemon(home)
    answers = []
    for i in range(5):
        answers.append(d.commit([b"fred@test.example"]))
        answers.append(d.commit([b"fred@test.example"]))
        d.hops.runOne()  # two commits arrive during each job
    kinds = []
    while d.hops.queue:
        kinds.append(kind(d.hops.queue[0][1]))
        d.hops.runOne()
    assert all(len(a) == 1 for a in answers) and len(d.service.messages) == 10
    assert d.service.intake._claimed == set()
    rounds = d.injector.rounds + kinds.count("settle")
    assert (d.syncer.fsSyncs, d.syncer.dirSyncs, d.syncer.fileSyncs) == (rounds, rounds, 0)
    assert d.injector.rounds <= 10 and kinds.count("settle") == 1
    assert d.files("todo") == [] and d.files("intd") == []


def test_a_burst_of_100_costs_the_syncs_of_three_rounds(home):
    d = makeDaemon(home)
    answers = [d.commit([b"fred@test.example"]) for i in range(100)]
    kinds = []
    while d.hops.queue:
        kinds.append(kind(d.hops.queue[0][1]))
        d.hops.runOne()
    assert all(len(a) == 1 for a in answers) and len(d.service.messages) == 100
    # 1 message, 99, then a round that settles all 100 once both are preprocessed
    assert kinds == ["round", "finish", "round", "finish", "settle"]
    assert d.syncer.total == 6


def test_without_syncfs_files_and_directories_are_synced(home):
    d = makeDaemon(home, Syncer(useSyncfs=False))
    d.commit([b"fred@test.example", b"bob@elsewhere.example"])
    d.hops.runAll()
    assert len(d.local.requests) == 1 and d.files("todo") == []
    # mess, intd, info, local, remote fsynced; mess/N then info/N, local/N, remote/N with
    # todo/ (two rounds)
    assert d.syncer.fileSyncs == 5
    assert d.syncer.dirSyncs == 1 + 1 + 3 + 1


def test_numbers_from_trigger_and_scan_are_preprocessed_as_before(home):
    """Another process's message: its todo entry is read by the service's own hop."""
    d = makeDaemon(home)
    q = inject(home.queue, b"joe@test.example", [b"fred@test.example"], b"Subject: x\n\n",
               b"by uid 0", controlDir=home.control)
    d.service.scanTodo()
    assert d.hops.runAll() == ["service", "service"]  # list todo/, then preprocess
    assert [r.msgId for r in d.local.requests] == [q.id]
    assert d.files("todo") == []


def test_a_message_committed_before_recovery_is_done_goes_the_todo_way(home):
    d = makeDaemon(home, start=False)
    d.service.startService()  # the recovery's hop waits in the queue
    answer = d.commit([b"fred@test.example"])
    assert d.hops.runOne() == "service"  # recovery
    assert d.hops.runOne() == "injector"  # the round: not claimed, so not preprocessed
    [q] = answer
    assert not os.path.exists(home.queue.info(q.id))
    assert d.hops.runAll() == ["service"]  # the intake's preprocessing
    assert [r.msgId for r in d.local.requests] == [q.id]


def test_a_number_the_service_still_holds_is_not_claimed(home):
    d = makeDaemon(home)
    d.service.intake.known.add(1234)
    control, mine = d.service.intake.claim([1234, 99])
    assert mine == {99} and control is d.service.controls.snapshot
    # a claimed number is not read from todo/ meanwhile (observer or scan)
    d.service.intake.add([99])
    assert not d.service.intake.busy and d.hops.queue == []


def test_a_crash_before_the_settling_round_leaves_a_todo_entry_preprocessed_again(home):
    """queue.md 5.11: the todo entry is there until its removal is durable, and recovery
    preprocesses it afresh, with the controls of the restart: a locals change in between
    moves the recipient to the other channel, and the stale channel file goes."""
    d = makeDaemon(home)
    answer = d.commit([b"fred@test.example"])
    d.hops.runOne()  # the round
    d.hops.runOne()  # its preprocessing
    [q] = answer
    assert os.path.exists(home.queue.local(q.id)) and d.files("todo") == [q.id]
    # the crash: the settling round never runs; then test.example stops being local
    os.close(d.service._mutexFd)
    with open(os.path.join(home.control, "locals"), "wb") as f:
        f.write(b"other.example\n")
    scan = clean.recover(home.queue, time.time())
    assert scan.todo == (q.id,) and scan.messages == ()
    again = makeDaemon(home)
    assert [r.recipient for r in again.remote.requests] == [b"fred@test.example"]
    assert again.local.requests == []
    assert not os.path.exists(home.queue.local(q.id))
    assert again.files("todo") == []


def test_a_failed_first_sync_of_the_settling_round_leaves_them_to_the_todo_way(home,
                                                                             logEvents):
    syncer = FailingSyncer()
    d = makeDaemon(home, syncer)
    answer = d.commit([b"fred@test.example"])
    d.hops.runOne()
    [q] = answer
    syncer.failFilesystem = 1
    d.hops.runAll()
    assert d.local.requests == [] and d.files("todo") == [q.id]
    assert f"warning: trouble fsyncing info/{q.id}" in [e.get("line") for e in logEvents]
    d.clock.advance(RETRY_SOON)
    assert d.hops.runAll() == ["service"]  # preprocessed again from its todo entry
    assert [r.msgId for r in d.local.requests] == [q.id] and d.files("todo") == []


def test_a_failed_todo_sync_of_the_settling_round_is_retried_before_release(home):
    syncer = FailingSyncer()
    d = makeDaemon(home, syncer)
    d.commit([b"fred@test.example"])
    d.hops.runOne()  # the round
    d.hops.runOne()  # its preprocessing
    syncer.failTodo = 1
    d.hops.runOne()  # the todo entry removed, its removal not durable: not released
    assert d.local.requests == [] and d.hops.queue == []
    d.clock.advance(RETRY_SOON)
    assert d.hops.runAll() == ["injector"]
    assert len(d.local.requests) == 1


@pytest.mark.parametrize("fail", ["filesystem", "todo"])
def test_a_failed_round_drops_its_claims(home, fail):
    syncer = FailingSyncer(failFilesystem=int(fail == "filesystem"), failTodo=int(fail == "todo"))
    d = makeDaemon(home, syncer)
    answer = d.commit([b"fred@test.example"])
    d.hops.runAll()
    [f] = answer
    assert f.value.code == 53
    assert d.service.intake.known == set() and d.service.intake._claimed == set()
    # a todo link whose sync failed stays (a possible duplicate): the next look at todo/
    assert len(d.files("todo")) == (0 if fail == "filesystem" else 1)
    d.service.scanTodo()
    d.hops.runAll()
    assert len(d.local.requests) == (0 if fail == "filesystem" else 1)


def test_messages_settled_after_the_stop_are_left_for_the_next_start(home):
    d = makeDaemon(home)
    answer = d.commit([b"fred@test.example"])
    d.hops.runOne()
    d.service.stopService()
    d.hops.runAll()
    assert d.local.requests == []
    [q] = answer
    scan = clean.recover(home.queue, time.time())  # info durable, todo gone: resumed
    assert [m.id for m in scan.messages] == [q.id] and scan.todo == ()


def test_the_round_neither_reads_todo_nor_stats_the_message_file(home, monkeypatch):
    d = makeDaemon(home)
    touched: list[str] = []
    realStat, realOpen = os.stat, os.open

    def stat(path: Any, *a: Any, **kw: Any) -> Any:
        touched.append(f"stat {path}")
        return realStat(path, *a, **kw)

    def osOpen(path: Any, flags: int, *a: Any, **kw: Any) -> Any:
        if not flags & (os.O_WRONLY | os.O_RDWR):
            touched.append(f"read {path}")
        return realOpen(path, flags, *a, **kw)

    def fileOpen(path: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        if "r" in mode:
            touched.append(f"read {path}")
        return realFileOpen(path, mode, *a, **kw)

    realFileOpen = builtins.open
    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "open", osOpen)
    monkeypatch.setattr(builtins, "open", fileOpen)
    answer = d.commit([b"fred@test.example"])
    d.hops.runAll()
    monkeypatch.undo()
    [q] = answer
    assert len(d.local.requests) == 1
    queue = home.queue
    assert [t for t in touched if queue.todo(q.id) in t or queue.mess(q.id) in t] == []


def test_a_message_is_released_only_once_its_intd_entry_is_gone(home):
    """The round that settles a message removes its todo entry; the job after it removes its
    intd entry, and only then does the queue service get the message (a removal never looks
    for an intd entry that a new message of the same number may own)."""
    d = makeDaemon(home)
    first = d.commit([b"fred@test.example"])
    d.commit([b"fred@test.example"])  # waits for the first round
    d.hops.runOne()  # round 1; round 2 starts at once
    assert [kind(f) for _, f, _ in d.hops.queue] == ["finish", "round"]
    d.hops.runOne()  # message 1 preprocessed
    d.commit([b"fred@test.example"])  # waits for round 2
    d.hops.runOne()  # round 2; round 3 starts, settling message 1
    assert [kind(f) for _, f, _ in d.hops.queue] == ["finish", "round"]
    d.hops.runOne()  # message 2 preprocessed
    [q] = first
    d.hops.runOne()  # round 3: message 1's todo entry durably gone, its intd entry not yet
    assert q.id not in d.files("todo") and q.id in d.files("intd")
    assert d.local.requests == [] and q.id not in d.service.messages
    assert [kind(f) for _, f, _ in d.hops.queue] == ["finish"]
    d.hops.runOne()
    assert q.id not in d.files("intd") and [r.msgId for r in d.local.requests] == [q.id]
    d.hops.runAll()
    assert len(d.local.requests) == 3 and d.files("todo") == [] and d.files("intd") == []


def test_openMessage_creates_the_queue_file_in_a_thread_job(home):
    """A listener's message file is made by a job of the injector's runner, never on the
    reactor thread (docs/ARCHITECTURE.md 3); a failure comes as qmail-queue's error."""
    d = makeDaemon(home)
    got: list[Any] = []
    d.injector.openMessage(b"from network").addBoth(got.append)
    assert got == []
    assert all(os.listdir(home.queue.sub("mess", i)) == [] for i in range(23))
    assert d.hops.runOne() == "injector"
    [w] = got
    assert os.path.exists(home.queue.mess(w.id)) and os.listdir(home.queue.sub("pid")) == []
    w.write(b"Subject: t\n\nhi\n")
    answer: list[Any] = []
    w.commit(b"joe@test.example", [b"fred@test.example"]).addBoth(answer.append)
    d.hops.runAll()
    assert [a.id for a in answer] == [w.id] and len(d.local.requests) == 1
    os.rename(home.queue.sub("pid"), home.queue.sub("pid.gone"))
    failed: list[Any] = []
    d.injector.openMessage(b"from network").addBoth(failed.append)
    d.hops.runAll()
    [f] = failed
    assert f.check(QueueError) and f.value.code == 62  # qq trouble creating files in queue
