"""Fixtures shared by the POP3 integration tests."""

import pytest


@pytest.fixture
def pop3home(home):
    """The shared home fixture (its directories are searchable by the virtual users as root)."""
    return home
