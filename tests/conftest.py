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


@pytest.fixture(autouse=True)
def _traversableTmp(tmp_path, tmp_path_factory):
    """
    As root, deliveries run as unprivileged users: make the test's directories searchable by
    them, as /var/qmail is (pytest creates its temporary directories with mode 0700).
    """
    if os.getuid() == 0:
        stop = os.path.dirname(str(tmp_path_factory.getbasetemp()))
        path = str(tmp_path)
        while path.startswith(stop) and len(path) >= len(stop):
            mode = os.stat(path).st_mode & 0o7777
            if mode & 0o011 != 0o011:
                os.chmod(path, mode | 0o011)
            if path == stop:
                break
            path = os.path.dirname(path)
    yield
