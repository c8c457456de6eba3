"""twistd qmtwist's --smtp-per-ip, --qmtp-per-ip and --pop3-per-ip reach the listeners
(docs/commands.md, docs/behaviour/tcpserver.md 8.3)."""

from __future__ import annotations

from qmtwist import plugin


class _Reactor:
    def getThreadPool(self) -> None:
        return None


def built(monkeypatch, home, argv: list[str]) -> dict[str, dict]:
    calls: dict[str, dict] = {}

    class _Service:
        def __init__(self) -> None:
            self.factory = type("Factory", (), {"observers": []})()  # the metrics observe it

        def reload(self) -> None:  # plugin.py wires it to SIGHUP
            pass

        def setServiceParent(self, parent) -> None:
            pass

    def maker(name: str):
        def make(ctx, endpoint, rules, concurrency, *args, **kw):
            calls[name] = dict(kw, concurrency=concurrency)
            return _Service()

        return make

    for name in ("smtp", "qmtp", "pop3"):
        monkeypatch.setattr(plugin, f"make{name.upper()}Service", maker(name))
    options = plugin.Options()
    options.parseOptions(["--home", home.path, "--no-queue"] + argv)
    plugin.buildServices(options, _Reactor())
    return calls


def test_defaults_are_ten(monkeypatch, home):
    calls = built(monkeypatch, home, [])
    assert {name: c["perIP"] for name, c in calls.items()} == {"smtp": 10, "qmtp": 10, "pop3": 10}


def test_options_reach_each_listener(monkeypatch, home):
    calls = built(monkeypatch, home, ["--smtp-per-ip", "3", "--qmtp-per-ip", "0",
                                      "--pop3-per-ip", "5"])
    assert {name: c["perIP"] for name, c in calls.items()} == {"smtp": 3, "qmtp": 0, "pop3": 5}
    assert calls["smtp"]["concurrency"] == 40
