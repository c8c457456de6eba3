"""The failed-login limiter on a Clock (qmtwist/ratelimit.py; docs/behaviour/pop3.md 10.1)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from qmtwist.ratelimit import FailureLimiter, addressKey


def limiter(**kw) -> tuple[FailureLimiter, Clock]:
    clock = Clock()
    clock.advance(1_000_000)
    return FailureLimiter(clock, **kw), clock


def test_three_failures_in_the_window_refuse_for_a_growing_period():
    lim, clock = limiter()
    assert lim.failed("1.2.3.4") == 0 and lim.failed("1.2.3.4") == 0
    assert lim.refusedFor("1.2.3.4") == 0
    assert lim.failed("1.2.3.4") == 30
    assert lim.refusedFor("1.2.3.4") == 30 and lim.refusedFor("5.6.7.8") == 0
    clock.advance(29.5)
    assert lim.refusedFor("1.2.3.4") == 0.5
    clock.advance(0.5)
    assert lim.refusedFor("1.2.3.4") == 0
    # the next round of three is refused twice as long, then four times ...
    for period in (60, 120, 240):
        assert [lim.failed("1.2.3.4") for _ in range(3)] == [0, 0, period]
        assert lim.refusedFor("1.2.3.4") == period
        clock.advance(period)


def test_failures_outside_the_window_do_not_add_up():
    lim, clock = limiter()
    for _ in range(10):
        lim.failed("k")
        clock.advance(30.1)  # two failures per minute at most
    assert lim.refusedFor("k") == 0


def test_period_is_capped_and_forgotten_after_quiet_time():
    lim, clock = limiter(block=1000, maxBlock=3600, forget=7200)
    periods = []
    for _ in range(4):
        periods.append([lim.failed("k") for _ in range(3)][-1])
        clock.advance(periods[-1])
    assert periods == [1000, 2000, 3600, 3600]
    clock.advance(7200)  # quiet: the growth starts afresh
    assert [lim.failed("k") for _ in range(3)][-1] == 1000


def test_keys_are_bounded():
    lim, clock = limiter(maxKeys=100)
    for i in range(1000):
        lim.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(lim) <= 100
    assert lim.refusedFor("10.0.3.231") == 0


def test_stale_keys_are_dropped():
    lim, clock = limiter(forget=100, window=60)
    for i in range(50):
        lim.failed(f"a{i}")
    clock.advance(101)
    lim.failed("b")
    assert len(lim) == 1


@pytest.mark.parametrize("ip,key", [
    (b"127.0.0.1", "127.0.0.1"), ("10.1.2.3", "10.1.2.3"),
    ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"), ("2001:db8:1:2::99", "2001:db8:1:2::/64"),
    ("::ffff:10.0.0.1", "10.0.0.1"), (b"unknown", "unknown"),
])
def test_address_key(ip, key):
    assert addressKey(ip) == key
