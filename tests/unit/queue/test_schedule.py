"""Retry schedule and lifetime (docs/behaviour/queue.md 5.6)."""

from __future__ import annotations

import pytest

from qmtwist.queue.schedule import TOO_LONG, isLastPass, nextPass

BIRTH = 1_700_000_000.0


@pytest.mark.parametrize("channel, step", [("local", 100), ("remote", 400)])
def test_tableOnSchedule(channel, step):
    """Attempt k at step*(k-1)**2 when every pass runs on time."""
    now = BIRTH
    times = [0.0]
    for _ in range(8):
        now = nextPass(BIRTH, now, channel)
        times.append(now - BIRTH)
    assert times == [float(step * (k - 1) ** 2) for k in range(1, 10)]


def test_tableValuesFromSpec():
    assert [nextPass(BIRTH, BIRTH + t, "local") - BIRTH for t in (0, 100, 400, 900, 1600)] == [
        100, 400, 900, 1600, 2500]
    assert [nextPass(BIRTH, BIRTH + t, "remote") - BIRTH for t in (0, 400, 1600, 3600, 6400)] == [
        400, 1600, 3600, 6400, 10000]


def test_latePassUsesFloorOfSquareRoot():
    # a pass at birth+150: floor(sqrt(150)) = 12 -> (12+10)**2 = 484
    assert nextPass(BIRTH, BIRTH + 150, "local") == BIRTH + 484
    # remote at birth+99.9: floor(sqrt(99)) = 9 -> 29**2 = 841
    assert nextPass(BIRTH, BIRTH + 99.9, "remote") == BIRTH + 841
    # just under a square
    assert nextPass(BIRTH, BIRTH + 399, "local") == BIRTH + (19 + 10) ** 2


def test_birthInTheFutureCountsAsNow():
    """A touched info file with an mtime ahead of the clock: qmail uses n = 0."""
    assert nextPass(BIRTH, BIRTH - 50, "local") == BIRTH + 100
    assert nextPass(BIRTH, BIRTH - 50, "remote") == BIRTH + 400


def test_lifetimeRule():
    lifetime = 604800
    assert not isLastPass(BIRTH, BIRTH, lifetime)
    assert not isLastPass(BIRTH, BIRTH + lifetime, lifetime)
    assert isLastPass(BIRTH, BIRTH + lifetime + 1, lifetime)
    assert isLastPass(BIRTH, BIRTH + 0.5, 0)
    assert not isLastPass(BIRTH, BIRTH, 0)


def test_tooLongText():
    assert TOO_LONG == (
        b"I'm not going to try again; this message has been in the queue too long.\n")
