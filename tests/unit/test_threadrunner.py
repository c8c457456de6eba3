"""qmtwist.threadrunner: blocking calls on worker threads, results on the reactor thread."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pytest

from qmtwist.threadrunner import ThreadRunner


class ThreadReactor:
    """callFromThread queues calls for the test thread to run, as the reactor would."""

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.lock = threading.Lock()
        self.triggers: list[tuple[str, str, Callable[[], Any]]] = []

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        with self.lock:
            self.calls.append((f, args))

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], Any]) -> None:
        self.triggers.append((phase, event, f))

    def runPending(self) -> int:
        with self.lock:
            calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)
        return len(calls)

    def until(self, pred: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached")
            self.runPending()
            time.sleep(0.001)


def test_result_fires_on_the_reactor_thread_only() -> None:
    reactor = ThreadReactor()
    runner = ThreadRunner(reactor, 2)
    where: list[str] = []
    got: list[Any] = []
    d = runner(lambda a, b=0: where.append(threading.current_thread().name) or a + b, 2, b=3)
    d.addCallback(lambda r: got.append((r, threading.current_thread() is threading.main_thread())))
    reactor.until(lambda: bool(where))
    assert where[0].startswith("qmtwist-io-")  # ran in a worker thread
    reactor.until(lambda: bool(got))
    assert got == [(5, True)]


def test_exception_becomes_a_failure_with_its_type() -> None:
    reactor = ThreadReactor()
    runner = ThreadRunner(reactor, 1)
    errors: list[Any] = []

    def boom() -> None:
        raise OSError(28, "No space left on device")
    runner(boom).addErrback(errors.append)
    reactor.until(lambda: bool(errors))
    assert errors[0].check(OSError)
    assert "No space left" in str(errors[0].value)


def test_results_finished_together_share_one_wakeup() -> None:
    reactor = ThreadReactor()
    runner = ThreadRunner(reactor, 4)
    gate = threading.Event()
    got: list[int] = []
    for i in range(4):
        runner(lambda i=i: gate.wait(10) and i).addCallback(got.append)
    gate.set()
    deadline = time.monotonic() + 10
    while len(runner._done) < 4 and time.monotonic() < deadline:  # all four finished
        time.sleep(0.001)
    with reactor.lock:
        wakeups = len(reactor.calls)
    assert wakeups == 1  # four results, one callFromThread
    reactor.runPending()
    assert sorted(got) == [0, 1, 2, 3]


def test_never_more_threads_than_size_and_reuses_idle_ones() -> None:
    reactor = ThreadReactor()
    runner = ThreadRunner(reactor, 3)
    gate = threading.Event()
    for _ in range(8):
        runner(gate.wait, 10)
    assert len(runner._threads) == 3
    gate.set()
    done: list[Any] = []
    reactor.until(lambda: not runner._done and runner._idle == 3)
    runner(lambda: 1).addCallback(done.append)
    reactor.until(lambda: bool(done))
    assert len(runner._threads) == 3


def test_stop_finishes_queued_calls_and_later_calls_run_inline() -> None:
    reactor = ThreadReactor()
    runner = ThreadRunner(reactor, 1)
    assert reactor.triggers and reactor.triggers[0][:2] == ("during", "shutdown")
    ran: list[int] = []
    fired: list[int] = []
    for i in range(5):
        runner(lambda i=i: (time.sleep(0.005), ran.append(i))[1]).addCallback(
            lambda _, i=i: fired.append(i))
    runner.stop()  # joins: every queued call ran, and their results fire now
    assert ran == [0, 1, 2, 3, 4]
    assert fired == [0, 1, 2, 3, 4]
    late: list[Any] = []
    runner(lambda: threading.current_thread() is threading.main_thread()).addCallback(late.append)
    assert late == [True]
    failed: list[Any] = []
    runner(lambda: 1 / 0).addErrback(failed.append)
    assert failed and failed[0].check(ZeroDivisionError)


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ThreadRunner(ThreadReactor(), 0)
