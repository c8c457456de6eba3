"""twistd qmtwist's --smtp-per-ip, --qmtp-per-ip and --pop3-per-ip reach the listeners
(docs/commands.md, docs/behaviour/tcpserver.md 8.3)."""

from __future__ import annotations

from tests.support import buildWithFakeListeners


def built(monkeypatch, home, argv: list[str]) -> dict[str, dict]:
    calls: dict[str, dict] = {}

    def record(name: str, args: tuple, kw: dict) -> None:
        if name != "submission":
            calls[name] = dict(kw, concurrency=args[2])

    buildWithFakeListeners(monkeypatch, home, argv, record)
    return calls


def test_defaults_are_ten(monkeypatch, home):
    calls = built(monkeypatch, home, [])
    assert {name: c["perIP"] for name, c in calls.items()} == {"smtp": 10, "qmtp": 10, "pop3": 10}


def test_options_reach_each_listener(monkeypatch, home):
    calls = built(monkeypatch, home, ["--smtp-per-ip", "3", "--qmtp-per-ip", "0",
                                      "--pop3-per-ip", "5"])
    assert {name: c["perIP"] for name, c in calls.items()} == {"smtp": 3, "qmtp": 0, "pop3": 5}
    assert calls["smtp"]["concurrency"] == 40
