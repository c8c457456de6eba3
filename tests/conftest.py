"""Fixtures shared by every test: a fresh home directory and a log-event collector."""

from __future__ import annotations

import os

import pytest
from twisted.logger import globalLogPublisher

from qmtwist.home import Home, setup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Child processes (HOME/bin launchers, twistd) import the code under test, not an older install.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


@pytest.fixture
def home(tmp_path) -> Home:
    """A complete home in tmp_path with me = test.example."""
    h = Home(str(tmp_path / "home"))
    setup(h, me="test.example")
    return h


@pytest.fixture
def logEvents():
    """Every twisted.logger event emitted during the test, as dicts."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def logLines(events: list[dict]) -> list[str]:
    """The formatted text of the collected events."""
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]
