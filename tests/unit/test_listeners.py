"""Repeatable listener options (qmtwist/listeners.py, docs/commands.md "Listeners")."""

from __future__ import annotations

from qmtwist import plugin
from qmtwist.listeners import endpoints, settings
from tests.support import buildWithFakeListeners


def built(monkeypatch, home, argv: list[str]) -> list[tuple[str, str, str]]:
    """(protocol, endpoint, rules) of each listener buildServices makes for C{argv}."""
    calls: list[tuple[str, str, str]] = []

    def record(name: str, args: tuple, kw: dict) -> None:
        if name == "submission":
            args = args[1:]  # the listener's name comes first
        calls.append((name, args[0], args[1]))

    buildWithFakeListeners(monkeypatch, home, argv, record)
    return calls



def test_defaults_unchanged(monkeypatch, home):
    r = home.rules
    assert built(monkeypatch, home, []) == [
        ("smtp", "tcp:2525:interface=127.0.0.1", r + "/smtp"),
        ("qmtp", "tcp:2209:interface=127.0.0.1", r + "/qmtp"),
        ("pop3", "tcp:2110:interface=127.0.0.1", r + "/pop3")]


def test_each_option_repeated_with_its_rules(monkeypatch, home):
    calls = built(monkeypatch, home, [
        "--smtp", "tcp:25", "--smtp", "tcp6:25:interface=\\:\\:1", "--smtp-rules", "/r/v4",
        "--smtp-rules", "/r/v6", "--qmtp", "none", "--pop3", "tcp:110", "--pop3", "ssl:995",
        "--submission", "tcp:587", "--submissions", "ssl:465", "--submission-rules", "/r/sub"])
    assert calls == [
        ("smtp", "tcp:25", "/r/v4"), ("smtp", "tcp6:25:interface=\\:\\:1", "/r/v6"),
        ("pop3", "tcp:110", home.rules + "/pop3"), ("pop3", "ssl:995", home.rules + "/pop3"),
        ("submission", "tcp:587", "/r/sub"), ("submission", "ssl:465", "/r/sub")]


def test_plain_dicts_and_fewer_rules_than_endpoints():
    assert endpoints({}, "smtp") == []
    assert endpoints({"smtp": "none"}, "smtp") == []
    assert endpoints({"smtp": "tcp:25"}, "smtp") == ["tcp:25"]
    assert endpoints({"smtp": []}, "smtp") == ["tcp:2525:interface=127.0.0.1"]
    assert endpoints({"submission": []}, "submission") == []
    options = {"smtp-rules": ["/a"], "smtp-concurrency": 7, "smtp-per-ip": 0}
    assert settings(options, "smtp", 2, "/h/rules") == ("/a", 7, 0)
    assert settings(options, "submissions", 0, "/h/rules") == ("/h/rules/submission", 7, 0)
    assert settings({}, "qmtp", 0, "/h/rules") == ("/h/rules/qmtp", 40, 10)


def test_self_check_sees_every_smtp_listener():
    assert plugin.listenerAddresses({"smtp": ["tcp:25:interface=192.0.2.1",
                                              "tcp6:25:interface=\\:\\:1"], "qmtp": "none"}) == (
        "192.0.2.1", "::1")
