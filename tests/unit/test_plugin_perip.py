"""twistd qmtwist's --smtp-per-ip, --qmtp-per-ip and --pop3-per-ip reach the listeners
(docs/commands.md, docs/behaviour/tcpserver.md 8.3)."""

from __future__ import annotations

from qmtwist import plugin


class _Reactor:
    def getThreadPool(self) -> None:
        return None


def built(monkeypatch, home, argv: list[str]) -> dict[str, dict]:
    calls: dict[str, dict] = {}
    original = plugin._optional

    class _Service:
        def setServiceParent(self, parent) -> None:
            pass

    def optional(modname: str, attr: str):
        if attr.startswith("make") and attr.endswith("Service"):
            name = attr[len("make"):-len("Service")].lower()

            def make(ctx, endpoint, rules, concurrency, *args, **kw):
                calls[name] = dict(kw, concurrency=concurrency)
                return _Service()

            return make
        return original(modname, attr)

    monkeypatch.setattr(plugin, "_optional", optional)
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
