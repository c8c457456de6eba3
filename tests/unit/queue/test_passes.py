"""When passes begin (qmtwist/queue/passes.py; docs/behaviour/queue.md 5.8, FAQ 7.3)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from qmtwist.context import ControlCache
from qmtwist.home import Home
from qmtwist.queue.envelope import ChannelEntry
from qmtwist.queue.finish import FileOps
from qmtwist.queue.passes import Passes
from qmtwist.queue.state import Channel, Message


class _Dispatch:
    def __init__(self) -> None:
        self.begun: list[tuple[int, str, bool]] = []

    def beginPass(self, m: Message, ch: Channel, now: float, lastPass: bool) -> None:
        ch.inPass = True
        self.begun.append((m.id, ch.name, lastPass))


Work = list[tuple[Callable[[], Any], Deferred[Any]]]


def _setup(home: Home, birth: float) -> tuple[Passes, _Dispatch, Clock, Message, Work]:
    clock = Clock()
    clock.advance(birth + 10)
    held: Work = []  # the file thread: its work runs only when the test says so

    def runner(f: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        held.append((f, d))
        return d

    ops = FileOps(runner)
    dispatch = _Dispatch()
    entries = [ChannelEntry(0, 1, b"a@x", False)]
    m = Message(7, b"s", birth, "1.P1", 10, {"local": Channel("local", entries, birth),
                                            "remote": Channel("remote", list(entries), birth)})
    passes = Passes(clock, home.queue, ControlCache(home), ops, dispatch,  # type: ignore[arg-type]
                    {7: m}, set(), lambda: False, lambda: None)
    return passes, dispatch, clock, m, held


def test_first_pass_of_every_channel_begins_at_once_without_a_file_read(home: Home):
    passes, dispatch, clock, m, held = _setup(home, 1000.0)
    passes.push(0, 7, "local")
    passes.push(0, 7, "remote")
    passes.arm()
    assert sorted(dispatch.begun) == [(7, "local", False), (7, "remote", False)]
    assert held == [] and not m.birthFresh


def test_later_pass_reads_the_info_mtime_on_the_file_thread(home: Home):
    """A touched info file (FAQ 7.3) counts from its new mtime; nothing is read until the
    file thread runs, and the pass begins only then."""
    old = time.time() - 10 * 86400  # past queuelifetime (7 days)
    passes, dispatch, clock, m, held = _setup(home, old)
    m.birthFresh = False
    info = home.queue.info(7)
    os.makedirs(os.path.dirname(info), exist_ok=True)
    with open(info, "wb") as f:
        f.write(b"F s\0")
    os.utime(info, (time.time(), time.time()))  # touched: young again
    clock.advance(time.time() - clock.seconds())
    passes.push(0, 7, "local")
    passes.arm()
    assert dispatch.begun == [] and m.channels["local"].starting
    assert len(held) == 1
    passes.arm()  # a second wake-up meanwhile begins nothing twice
    assert dispatch.begun == []
    assert m.birth == old
    work, d = held.pop()
    d.callback(work())  # the file thread's batch: the stat
    assert dispatch.begun == [(7, "local", False)]  # young again: not the last pass
    assert m.birth > old and not m.channels["local"].starting


def test_later_pass_of_an_old_untouched_message_is_its_last(home: Home):
    old = time.time() - 10 * 86400
    passes, dispatch, clock, m, held = _setup(home, old)
    m.birthFresh = False  # and no info file: the birth in memory stands
    clock.advance(time.time() - clock.seconds())
    passes.push(0, 7, "local")
    passes.arm()
    work, d = held.pop()
    d.callback(work())
    assert dispatch.begun == [(7, "local", True)]


def test_held_message_does_not_begin(home: Home):
    passes, dispatch, clock, m, held = _setup(home, 1000.0)
    passes.held.add(7)
    passes.push(0, 7, "local")
    passes.arm()
    assert dispatch.begun == []
