"""The Maildir host name part is looked up at most once a second (docs/behaviour/local.md 4.8)."""

from __future__ import annotations

import socket

from qmtwist.local import maildir


def test_hostNameLookedUpAtMostOnceASecond(monkeypatch):
    names = iter(["one.example", "two/example"])
    lookups: list = []
    monkeypatch.setattr(socket, "gethostname", lambda: lookups.append(1) or next(names))
    monkeypatch.setattr(maildir, "_hostCache", None)
    now = [100.0]
    assert maildir.currentHostPart(lambda: now[0]) == b"one.example"
    now[0] += maildir.HOST_INTERVAL / 2
    assert maildir.currentHostPart(lambda: now[0]) == b"one.example"
    assert len(lookups) == 1
    now[0] += maildir.HOST_INTERVAL / 2
    assert maildir.currentHostPart(lambda: now[0]) == b"two\\057example"  # a change is seen
    assert len(lookups) == 2


def test_deliveryNamesCarryTheHost(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "box.example")
    monkeypatch.setattr(maildir, "_hostCache", None)
    for sub in ("tmp", "new", "cur"):
        (tmp_path / sub).mkdir()
    name = maildir.deliver(str(tmp_path), [b"Subject: x\n\nbody\n"], "1.P2Q0", 1)
    assert name.startswith(b"new/") and name.endswith(b"K1.P2Q0L1.box.example")
