"""
What every test shares: a free loopback port, and the one way to wait for state outside the test
(a child's log, files it writes, a peer's counters).

L{waitFor} blocks: for tests that do not run the reactor (a C{twistd} child, C{tcpserver}, plain
sockets). L{until} is the same wait for tests on the running reactor (pytest-twisted): it sleeps
with C{deferLater}, so the reactor goes on serving the peers that live in the test process.
Both return the predicate's first true value, so a test can wait for and take a result at once
(C{[mess] = waitFor(lambda: newFiles(maildir), "the message")}).
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def freePort(host: str = "127.0.0.1") -> int:
    """
    A TCP port on C{host} that nothing listens on right now: bind port 0, read the port the
    kernel chose, close. Only for a child that must be told its port before it starts (a
    C{twistd} that a test restarts on the same port) or a port that must stay closed. A listener
    in the test process binds port 0 itself and reads C{getHost().port}; a C{tcpserver} child
    binds port 0 and tells its port (L{tcpserverPort}).
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tcpserverPort(child: Any) -> int:
    """
    The port a C{tcpserver -1 ... 0 PROG} child bound (C{subprocess.Popen} with C{stdout=PIPE}):
    it prints the number once it listens, so the test connects at once and no port is guessed.
    """
    line = child.stdout.readline()
    if not line.strip().isdigit():
        raise AssertionError(f"tcpserver did not start listening (exit {child.poll()}): {line!r}")
    return int(line)


def _expired(what: str, context: Callable[[], str] | None) -> AssertionError:
    text = f"timed out waiting for {what}"
    if context is not None:
        text += "\n" + context()
    return AssertionError(text)


def waitFor(predicate: Callable[[], T], what: str, deadline: float = 30.0,
            interval: float = 0.05, context: Callable[[], str] | None = None) -> T:
    """
    Poll C{predicate()} until it is true and return that value; after C{deadline} seconds fail
    naming C{what}, followed by C{context()} (a child's last log lines, say). A predicate may
    raise L{AssertionError} to end the wait early (the child it waits on has exited).
    """
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise _expired(what, context)
        time.sleep(interval)


async def until(predicate: Callable[[], T], what: str, deadline: float = 30.0,
                interval: float = 0.05, context: Callable[[], str] | None = None,
                clock: Any = None) -> T:
    """
    L{waitFor} on the running reactor: the same arguments, but the wait between two polls is a
    C{deferLater} on C{clock} (the global reactor unless given), never a sleep.
    """
    from twisted.internet.task import deferLater

    if clock is None:
        from twisted.internet import reactor as clock
    end = clock.seconds() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if clock.seconds() > end:
            raise _expired(what, context)
        await deferLater(clock, interval, lambda: None)


class FakeListener:
    """What L{qmtwist.plugin.buildServices} does with a listener service: parent and name it,
    wire its C{reload} to SIGHUP, and let the metrics observe its factory."""

    def __init__(self) -> None:
        self.factory = type("Factory", (), {"observers": []})()
        self.name = ""

    def reload(self) -> None:
        pass

    def setServiceParent(self, parent: Any) -> None:
        pass

    def setName(self, name: str) -> None:
        self.name = name


def buildWithFakeListeners(monkeypatch: Any, home: Any, argv: list[str],
                           record: Callable[[str, tuple[Any, ...], dict[str, Any]], None]) -> None:
    """Run C{twistd qmtwist --no-queue ARGV}'s wiring with each listener maker replaced:
    C{record(protocol, args, keywords)} sees every call (the context left out)."""
    from qmtwist import plugin

    def maker(name: str) -> Callable[..., FakeListener]:
        def make(ctx: Any, *args: Any, **kw: Any) -> FakeListener:
            record(name, args, kw)
            return FakeListener()
        return make

    for name in ("SMTP", "QMTP", "POP3", "Submission"):
        monkeypatch.setattr(plugin, f"make{name}Service", maker(name.lower()))
    options = plugin.Options()
    options.parseOptions(["--home", home.path, "--no-queue"] + argv)
    # the daemon's ThreadRunner registers its stop with the reactor; nothing here runs
    plugin.buildServices(options, type("Reactor", (), {
        "addSystemEventTrigger": lambda self, *a, **kw: None})())
