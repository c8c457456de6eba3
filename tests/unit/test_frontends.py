"""L{qmtwist.frontends}: what a listener process is given, and its restarts (operations.md 21.7)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from qmtwist.frontends import (CannotShare, ListenerProcesses, frontEndArguments, handedOver)


def test_handed_over_endpoints():
    assert handedOver("tcp:25", "INET", 0) == "systemd:domain=INET:index=0"
    assert handedOver("tcp6:25:interface=\\:\\:", "INET6", 2) == "systemd:domain=INET6:index=2"
    assert handedOver("ssl:465", "INET", 1) == "systemd:domain=INET:index=1:tls=yes"
    assert handedOver("systemd:domain=INET:name=smtps:tls=yes", "INET", 0).endswith(":tls=yes")
    assert handedOver("unix:/run/x.sock", "UNIX", 3) == "systemd:domain=UNIX:index=3"
    with pytest.raises(CannotShare, match="privateKey"):
        handedOver("ssl:465:privateKey=/etc/other.pem", "INET", 0)


def test_arguments_keep_rules_order_and_divide_concurrency():
    options = {"home": "/var/qmail", "dns": [("127.0.0.1", 5353), ("::1", 53)],
               "smtp-concurrency": 40, "qmtp-concurrency": 5, "pop3-concurrency": 40,
               "smtp-per-ip": 10, "log-format": "json", "log-noise": False,
               "smtp-rules": ["/r/a", "/r/b"], "submission-rules": "/r/sub"}
    handed = {"smtp": ["systemd:domain=INET:index=0", "systemd:domain=INET6:index=1"],
              "submission": ["systemd:domain=INET:index=2"]}
    args = frontEndArguments(options, {"syslog": True, "prefix": "mail"}, handed, 3)
    assert args[:4] == ["-n", "--pidfile=", "--syslog", "--prefix=mail"]
    rest = args[args.index("qmtwist"):]
    assert rest[:4] == ["qmtwist", "--no-queue", "--home", "/var/qmail"]
    pairs = list(zip(rest[4::2], rest[5::2]))
    assert ("--dns", "127.0.0.1:5353") in pairs and ("--dns", "[::1]:53") in pairs
    assert ("--smtp-concurrency", "14") in pairs and ("--qmtp-concurrency", "2") in pairs
    assert ("--smtp-per-ip", "10") in pairs and ("--log-format", "json") in pairs
    assert "--log-noise" not in rest
    assert [v for k, v in pairs if k == "--smtp-rules"] == ["/r/a", "/r/b"]
    assert [v for k, v in pairs if k == "--submission-rules"] == ["/r/sub"]
    assert [v for k, v in pairs if k == "--smtp"] == handed["smtp"]
    assert ("--qmtp", "none") in pairs and ("--submissions", "none") in pairs


def test_logfile_is_passed_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = frontEndArguments({"home": "h"}, {"logfile": "mail.log"}, {}, 1)
    assert args[2:4] == ["--logfile", str(tmp_path / "mail.log")]


class _Transport:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class _Port:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reading = True

    def fileno(self) -> int:
        return self.fd

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True

    @property
    def socket(self) -> Any:
        import socket

        class S:
            family = socket.AF_INET
        return S()


class _Listener:
    def __init__(self, kind: str, description: str, fd: int) -> None:
        self.kind = kind
        self.description = description
        self.port = _Port(fd)
        self._waitingForPort = None


class _Reactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[str, str], dict[int, Any]]] = []

    def spawnProcess(self, proto, executable, args, env, path, childFDs):  # type: ignore[no-untyped-def]
        self.spawned.append((proto, args, env, childFDs))
        t = _Transport(1000 + len(self.spawned))
        return t


def _make(count: int = 2) -> tuple[_Reactor, ListenerProcesses, list[_Listener]]:
    reactor = _Reactor()
    listeners = [_Listener("smtp", "tcp:25", 7), _Listener("pop3", "ssl:995", 9)]
    lp = ListenerProcesses(reactor, count, listeners, lambda handed: ["ARGS", repr(handed)],
                           environ={"NOTIFY_SOCKET": "/run/n", "LISTEN_PID": "1", "X": "y"},
                           python="/usr/bin/python3")
    lp.startService()
    return reactor, lp, listeners


def test_start_hands_every_socket_to_every_process():
    reactor, lp, listeners = _make()
    assert len(reactor.spawned) == 2
    proto, args, env, fds = reactor.spawned[0]
    assert args[:3] == ["/usr/bin/python3", "-m", "qmtwist.listenerprocess"]
    assert fds == {0: "w", 1: 1, 2: 2, 3: 7, 4: 9}
    assert env["LISTEN_FDS"] == "2" and env["LISTEN_FDNAMES"] == "smtp0:pop30"
    assert "NOTIFY_SOCKET" not in env and "LISTEN_PID" not in env and env["X"] == "y"
    assert lp.handed == {"smtp": ["systemd:domain=INET:index=0"],
                         "pop3": ["systemd:domain=INET:index=1:tls=yes"]}
    assert not any(lst.port.reading for lst in listeners)  # the daemon no longer accepts


def test_restart_backs_off_while_it_dies_young():
    reactor, lp, _ = _make(count=1)
    died = Failure(ProcessTerminated(signal=9))
    for expected in (1.0, 2.0, 4.0):
        proto = reactor.spawned[-1][0]
        proto.processEnded(died)
        before = len(reactor.spawned)
        reactor.advance(expected - 0.01)
        assert len(reactor.spawned) == before
        reactor.advance(0.02)
        assert len(reactor.spawned) == before + 1
    # one that ran a minute or more starts again after 1 s; while none runs the daemon accepts
    assert not any(lst.port.reading for lst in lp.listeners)
    reactor.advance(61)
    reactor.spawned[-1][0].processEnded(died)
    assert all(lst.port.reading for lst in lp.listeners)
    reactor.advance(1.01)
    assert not any(lst.port.reading for lst in lp.listeners)
    assert len(reactor.spawned) == 5


def test_stop_terms_then_kills_and_waits():
    reactor, lp, _ = _make(count=2)
    transports = [lp.running_[0][1], lp.running_[1][1]]
    d = lp.stopService()
    assert [t.signals for t in transports] == [["TERM"], ["TERM"]]
    fired: list[object] = []
    d.addCallback(fired.append)
    reactor.spawned[0][0].processEnded(Failure(ProcessDone(0)))
    assert not fired
    reactor.advance(10)  # the second one ignored TERM
    assert transports[1].signals == ["TERM", "KILL"]
    assert transports[0].signals == ["TERM"]
    reactor.spawned[1][0].processEnded(Failure(ProcessTerminated(signal=9)))
    assert fired == [None]
    reactor.advance(100)
    assert len(reactor.spawned) == 2  # no restart after stop


def test_hup_is_passed_on():
    reactor, lp, _ = _make(count=2)
    lp.hup()
    assert [t.signals for _, t in lp.running_.values()] == [["HUP"], ["HUP"]]
