"""The connection cache's bookkeeping on a Clock (docs/behaviour/remote.md 11.8)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock

from qmtwist.remote.concurrency import Limiter
from qmtwist.remote.scache import ConnectionCache


class FakeConnection:
    """Stands in for a ReplyProtocol: close() ends it at once."""

    def __init__(self, clock: Clock) -> None:
        self.createdAt = clock.seconds()
        self.uses = 1
        self.lost: object = None
        self.pending = False
        self.quits = 0
        self._closed: list[defer.Deferred[None]] = []

    def hasPending(self) -> bool:
        return self.pending

    def whenClosed(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        if self.lost is None:
            self._closed.append(d)
        else:
            d.callback(None)
        return d

    def close(self) -> None:
        if self.lost is None:
            self.quits += 1
            self.peerClosed()

    def peerClosed(self) -> None:
        self.lost = "gone"
        waiters, self._closed = self._closed, []
        for d in waiters:
            d.callback(None)


def setup(limit: int = 2) -> tuple[Clock, Limiter, ConnectionCache]:
    clock = Clock()
    limiter = Limiter(limit)
    return clock, limiter, ConnectionCache(clock, limiter)


def test_idleConnectionExpiresWithQuitAndFreesItsSlot() -> None:
    clock, limiter, cache = setup()
    limiter.acquire()
    c = FakeConnection(clock)
    assert cache.put(("k",), c)
    assert limiter.active == 1
    clock.advance(1.9)
    assert len(cache) == 1 and c.quits == 0
    clock.advance(0.2)
    assert (len(cache), c.quits, limiter.active) == (0, 1, 0)


def test_takeByKeyOnly() -> None:
    clock, limiter, cache = setup()
    limiter.acquire()
    c = FakeConnection(clock)
    cache.put(("a",), c)
    assert cache.take([("b",)]) is None
    assert cache.take([("b",), ("a",)]) == (("a",), c)
    assert len(cache) == 0 and limiter.active == 1  # the slot passed to the taker


def test_connectionWithUnreadInputIsDropped() -> None:
    clock, limiter, cache = setup()
    limiter.acquire()
    c = FakeConnection(clock)
    cache.put(("a",), c)
    c.pending = True  # say a 421 arrived while idle
    assert cache.take([("a",)]) is None
    assert (c.quits, limiter.active) == (1, 0)


def test_peerClosingIdleConnectionFreesSlot() -> None:
    clock, limiter, cache = setup()
    limiter.acquire()
    c = FakeConnection(clock)
    cache.put(("a",), c)
    c.peerClosed()
    assert (len(cache), limiter.active) == (0, 0)


def test_reuseLimits() -> None:
    clock, limiter, cache = setup()
    old = FakeConnection(clock)
    clock.advance(300)
    assert not cache.put(("a",), old)
    worn = FakeConnection(clock)
    worn.uses = 100
    assert not cache.put(("a",), worn)


def test_fullLimiterClosesAnIdleConnection() -> None:
    clock, limiter, cache = setup(limit=1)
    limiter.acquire()
    c = FakeConnection(clock)
    cache.put(("a",), c)
    waiting = limiter.acquire()  # a delivery elsewhere
    assert waiting.called and c.quits == 1 and len(cache) == 0
    assert limiter.active == 1


def test_finishedConnectionGoesToAWaiterForTheSamePlace() -> None:
    clock, limiter, cache = setup(limit=1)
    limiter.acquire()
    other = limiter.acquire([("b",)])
    same = limiter.acquire([("a",)])
    c = FakeConnection(clock)
    assert cache.put(("a",), c)
    assert same.called and not other.called
    assert same.result == (("a",), c)
    same.result = None
    assert limiter.active == 1


def test_finishedConnectionClosedWhenOthersWait() -> None:
    clock, limiter, cache = setup(limit=1)
    limiter.acquire()
    other = limiter.acquire([("b",)])
    assert not cache.put(("a",), FakeConnection(clock))
    assert not other.called  # the caller closes it and releases the slot
    limiter.release()
    assert other.called
