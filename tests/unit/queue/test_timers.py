"""The queue service's timer heap (docs/behaviour/queue.md 5.6): pure data, no clock."""

from __future__ import annotations

from qmtwist.queue.timers import TimerHeap


def test_pops_what_is_due_earliest_first_and_keeps_the_rest():
    heap = TimerHeap()
    heap.push(30.0, 3, "remote")
    heap.push(10.0, 1, "local")
    heap.push(20.0, 2, "local")
    assert heap.nextDue() == 10.0
    assert list(heap.popDue(20.0)) == [(1, "local"), (2, "local")]
    assert (len(heap), heap.nextDue()) == (1, 30.0)
    assert list(heap.popDue(29.9)) == []


def test_an_entry_pushed_during_a_sweep_is_seen_if_due():
    heap = TimerHeap()
    heap.push(5.0, 1, "local")
    seen = []
    for n, channel in heap.popDue(10.0):
        seen.append(n)
        if n == 1:
            heap.push(10.0, 2, channel)
    assert seen == [1, 2] and heap.nextDue() is None
