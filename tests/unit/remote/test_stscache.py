"""The MTA-STS policy cache (docs/behaviour/tls-policy.md 19.2): expiry on a Clock, the file."""

from __future__ import annotations

import os

import pytest_twisted
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from qmtwist.remote import stscache
from qmtwist.remote.mtasts import Policy
from qmtwist.remote.stscache import Entry, PolicyCache

POLICY = Policy("enforce", (b"mx.example.com", b"*.example.net"), 3600)


def cache(tmp_path, clock: Clock | None = None) -> tuple[PolicyCache, Clock]:
    clock = clock or Clock()
    return PolicyCache(str(tmp_path / "mtasts"), clock, maybeDeferred), clock


@pytest_twisted.ensureDeferred
async def test_expiresAfterMaxAge(tmp_path) -> None:
    c, clock = cache(tmp_path)
    clock.advance(1000)
    await c.put(b"example.com", b"id1", POLICY)
    clock.advance(3599)
    assert await c.get(b"example.com") == Entry(b"id1", POLICY, 4600)
    clock.advance(1)
    assert await c.get(b"example.com") is None
    await c.flush()
    assert stscache.readFile(c.path) == {}  # the expired entry is gone from the file too


@pytest_twisted.ensureDeferred
async def test_survivesARestart(tmp_path) -> None:
    c, clock = cache(tmp_path)
    await c.put(b"example.com", b"id1", POLICY)
    await c.flush()
    again, _ = cache(tmp_path, clock)
    assert await again.get(b"example.com") == Entry(b"id1", POLICY, 3600)
    assert await again.get(b"example.org") is None


def test_decodeSkipsWhatIsMalformed() -> None:
    good = stscache.encode({b"a.example": Entry(b"x", POLICY, 5.0)})
    assert stscache.decode(good) == {b"a.example": Entry(b"x", POLICY, 5.0)}
    assert stscache.decode(b"not json") == {}
    assert stscache.decode(b"[1, 2]") == {}
    assert stscache.decode(b'{"a.example": {"id": "x", "mode": "strict", "mx": [], '
                           b'"max_age": 1, "expires": 2}, "b.example": {"id": "y"}}') == {}


@pytest_twisted.ensureDeferred
async def test_limitDropsTheSoonestToExpire(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(stscache, "LIMIT", 2)
    c, clock = cache(tmp_path)
    await c.put(b"a.example", b"1", Policy("testing", (b"mx.a.example",), 10))
    await c.put(b"b.example", b"1", Policy("testing", (b"mx.b.example",), 30))
    await c.put(b"c.example", b"1", Policy("testing", (b"mx.c.example",), 20))
    await c.flush()
    assert sorted(stscache.readFile(c.path)) == [b"b.example", b"c.example"]


@pytest_twisted.ensureDeferred
async def test_writeErrorIsLoggedNotRaised(tmp_path, logEvents) -> None:
    c = PolicyCache(str(tmp_path / "missing" / "mtasts"), Clock(), maybeDeferred)
    await c.put(b"example.com", b"id1", POLICY)
    await c.flush()
    assert await c.get(b"example.com") is not None  # still in memory
    assert not os.path.exists(tmp_path / "missing")
    assert any(e.get("log_format", "").startswith("warning: unable to write")
               for e in logEvents)
