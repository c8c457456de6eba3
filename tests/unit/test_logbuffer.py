"""
The buffered log observer (qmtwist.logbuffer, docs/behaviour/operations.md 21.4.1): twistd's lines
byte for byte, written on the timer, at the size limit, at shutdown and before rotation.
"""

from __future__ import annotations

import io
import os
import signal
import time

from twisted.internet.task import Clock
from twisted.logger import (
    LogLevel,
    LogPublisher,
    Logger,
    eventsFromJSONLogFile,
    formatEvent,
    textFileLogObserver,
)
from twisted.python import log as legacy
from twisted.python.failure import Failure

from qmtwist.logbuffer import BufferedObserver, LineBuffer, classicText, jsonText
from qmtwist.logformat import daemonObserver, isNoise, jsonLines


class Target(io.StringIO):
    """A file that counts its flushes (each one a write to the disk's page cache)."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def observer(clock, noise=False, limit=64 * 1024, debug=False, render=None):
    target = Target()
    buf = LineBuffer(target, clock, interval=0.25, limit=limit)
    return target, buf, BufferedObserver(buf, render or classicText(), noise=noise, debug=debug)


def emitAll(obs, skip=()) -> None:
    """The same events (made once) into C{obs}."""
    if not EVENTS:
        makeEvents(EVENTS.append)
    for e in EVENTS:
        if e["log_format"] not in skip:
            obs(dict(e))


EVENTS: list = []


def makeEvents(obs) -> None:
    """The kinds of event a daemon logs: qmail-send's and tcpserver's, !r, a failure, a
    multi-line text, a legacy line with a system, a bad format."""
    pub = LogPublisher(obs)
    send = Logger(namespace="qmail-send", observer=pub)
    smtp = Logger(namespace="qmtwist.smtp", observer=pub)
    send.info("new msg {id}", id=2154929)
    send.info("info msg {id}: bytes {bytes} from <{sender}> qp {qp} uid {uid}", id=2154929,
              bytes=1322, sender="bench@client.example", qp=12628043, uid=0)
    smtp.info("tcpserver: ok {n} {fields}", n=1, fields="a:127.0.0.1:25 :127.0.0.1::5")
    send.warn("alert: {what!r} {n:>5}", what="x", n=3)
    send.info("two\nlines {x}", x=1)
    send.info("missing {field}")
    send.info("called {f()}", f=lambda: "yes")
    send.failure("deferral", Failure(ValueError("boom")))
    pub(dict(log_format="legacy {x}", x=1, log_system="SMTP,3,127.0.0.1", log_time=time.time(),
             log_level=LogLevel.info, log_namespace="log_legacy"))


def test_lines_are_byte_for_byte_twisteds():
    old = io.StringIO()
    emitAll(textFileLogObserver(old))
    target, buf, obs = observer(Clock())
    emitAll(obs)
    buf.flush()
    assert target.getvalue() == old.getvalue()
    assert "Traceback" in old.getvalue() and "Unable to format event" in old.getvalue()


def test_json_lines_are_jsonLines():
    old = io.StringIO()
    skip = ("missing {field}",)  # eventAsJSON itself fails on it, in both
    emitAll(jsonLines(old), skip)
    target, buf, obs = observer(Clock(), render=jsonText)
    emitAll(obs, skip)
    buf.flush()
    new = list(eventsFromJSONLogFile(io.StringIO(target.getvalue())))
    assert [e["text"] for e in new] == [
        e["text"] for e in eventsFromJSONLogFile(io.StringIO(old.getvalue()))]
    assert new[0]["id"] == 2154929 and new[0]["text"] == "new msg 2154929"


def test_timer_writes_once_after_the_interval():
    clock = Clock()
    target, buf, obs = observer(clock)
    log = Logger(namespace="qmail-send", observer=obs)
    for i in range(50):
        log.info("new msg {id}", id=i)
    assert target.getvalue() == "" and len(clock.getDelayedCalls()) == 1
    clock.advance(0.2)
    assert target.getvalue() == ""
    clock.advance(0.05)
    assert target.getvalue().count("new msg") == 50 and target.flushes == 1
    assert clock.getDelayedCalls() == []  # idle: no timer
    log.info("end msg {id}", id=1)
    clock.advance(0.25)
    assert target.getvalue().endswith("end msg 1\n") and target.flushes == 2


def test_size_limit_writes_at_once():
    clock = Clock()
    target, buf, obs = observer(clock, limit=500)
    log = Logger(namespace="qmail-send", observer=obs)
    n = 0
    while not target.getvalue():
        log.info("new msg {id}", id=n)
        n += 1
    assert 500 <= len(target.getvalue()) < 600 and target.getvalue().count("\n") == n
    assert target.flushes == 1


def test_shutdown_writes_the_last_lines_and_then_every_line_at_once():
    clock = Clock()
    target, buf, obs = observer(clock)
    log = Logger(namespace="qmail-send", observer=obs)
    log.info("status: exiting")
    buf.close()  # the reactor's "after shutdown" trigger (onShutdown)
    assert target.getvalue().endswith("status: exiting\n") and clock.getDelayedCalls() == []
    Logger(namespace="twisted.internet.base", observer=obs).info("Main loop terminated.")
    assert target.getvalue().endswith("Main loop terminated.\n")


def test_daemon_observer_flushes_after_shutdown_and_before_rotation(tmp_path):
    class Reactor(Clock):
        triggers: list = []

        def addSystemEventTrigger(self, phase, event, f):
            self.triggers.append((phase, event, f))

        def callFromThread(self, f, *a):
            f(*a)

    reactor = Reactor()
    path = tmp_path / "twistd.log"
    old = signal.getsignal(signal.SIGUSR1)
    try:
        obs = daemonObserver({"logfile": str(path)}, "text", False, reactor=reactor)
        log = Logger(namespace="qmail-send", observer=obs)
        log.info("new msg {id}", id=1)
        assert path.read_text() == ""
        os.kill(os.getpid(), signal.SIGUSR1)  # rotation: the lines first, then the new file
        assert "new msg 1" in (tmp_path / "twistd.log.1").read_text()
        assert path.read_text() == ""
        log.info("status: exiting")
        [(phase, event, close)] = reactor.triggers
        assert (phase, event) == ("after", "shutdown")
        close()
        assert path.read_text().endswith("[qmail-send#info] status: exiting\n")
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_debug_events_are_not_formatted_unless_asked():
    class Exploding:
        def __format__(self, spec):
            raise AssertionError("formatted")

    target, buf, obs = observer(Clock())
    Logger(namespace="qmtwist.smtp", observer=obs).debug("state {x}", x=Exploding())
    buf.flush()
    assert target.getvalue() == ""
    target, buf, obs = observer(Clock(), debug=True)
    Logger(namespace="qmtwist.smtp", observer=obs).debug("state {x}", x="DATA")
    buf.flush()
    assert target.getvalue().endswith("[qmtwist.smtp#debug] state DATA\n")


def test_noise_is_dropped_unless_asked():
    from twisted.names.dns import DNSDatagramProtocol

    events: list = []
    legacy.addObserver(events.append)
    try:
        proto = DNSDatagramProtocol(None)
        proto.doStart()
        proto.doStop()
    finally:
        legacy.removeObserver(events.append)
    texts = [formatEvent(e) for e in events]
    assert [t.split(" <")[0] for t in texts] == ["Starting protocol", "Stopping protocol"], texts
    assert all(isNoise(e) for e in events)
    target, buf, obs = observer(Clock())
    from twisted.internet.protocol import Factory

    class QmtwistFactory(Factory):
        pass

    pub = LogPublisher(obs)
    legacy.addObserver(pub)
    try:
        f = QmtwistFactory()
        f.doStart()
        f.doStop()
        proto = DNSDatagramProtocol(None)
        proto.doStart()
        proto.doStop()
        legacy.msg("InboundSMTPFactory (SessionFactory) starting on 2525")  # a space in it
        legacy.msg("/etc/resolv.conf changed, reparsing")  # not noise
    finally:
        legacy.removeObserver(pub)
    Logger(namespace="qmail-send", observer=pub).info("new msg {id}", id=5)
    buf.flush()
    assert target.getvalue().endswith("[qmail-send#info] new msg 5\n")
    assert "[-] /etc/resolv.conf changed, reparsing\n" in target.getvalue()
    assert target.getvalue().count("\n") == 2, target.getvalue()
