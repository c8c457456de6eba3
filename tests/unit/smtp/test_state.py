"""The SMTP session's phases (qmtwist/smtp/state.py): one state, changes logged when traced."""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from qmtwist.smtp import server
from qmtwist.smtp.server import SMTPServer
from qmtwist.smtp.state import ALLOWED, State
from tests.unit.smtp.helpers import FakeInjector, FakeQueued, makeControl, makeSession


@pytest.fixture(autouse=True)
def _trace(monkeypatch):
    """State changes are logged only with QMTWIST_TRACE_SMTP set (server.TRACE)."""
    monkeypatch.setattr(server, "TRACE", True)


def transitions(events) -> list[tuple[str, str]]:
    return [(e["old"], e["new"]) for e in events
            if isinstance(e.get("log_source"), SMTPServer)
            and e.get("log_format") == "state {old} -> {new}"]


def test_a_transaction_walks_the_phases_and_logs_each_change(logEvents):
    inj = FakeInjector()
    inj.hold = True
    proto, t, inj, _ = makeSession(injector=inj, cert=True)
    assert proto.state is State.GREETED
    proto.dataReceived(b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@test.example>\r\nDATA\r\n")
    assert proto.state is State.DATA and proto._inData
    proto.dataReceived(b"body\r\n.\r\nNOOP\r\n")
    assert proto.state is State.COMMIT and proto._waiting
    inj.pending[0].callback(FakeQueued(1, 100, 1700000000.0))
    assert proto.state is State.HELO
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nSTARTTLS\r\n")
    assert proto.state is State.GREETED and proto.tls
    proto.dataReceived(b"QUIT\r\n")
    assert proto.state is State.CLOSED and proto._closed
    proto.connectionLost(Failure(ConnectionDone()))
    seen = transitions(logEvents)
    assert seen == [("new", "greeted"), ("greeted", "helo"), ("helo", "mail"), ("mail", "data"),
                    ("data", "commit"), ("commit", "helo"), ("helo", "mail"),
                    ("mail", "greeted"), ("greeted", "closed")]
    assert all(e["log_level"] is LogLevel.debug for e in logEvents
               if e.get("log_format") == "state {old} -> {new}")
    assert all(State(new) in ALLOWED[State(old)] for old, new in seen)


def test_refused_message_and_bare_lf(logEvents):
    proto, t, inj, _ = makeSession(control=makeControl(databytes=3))
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<u@test.example>\r\nDATA\r\nlong\r\n.\r\n")
    assert proto.state is State.GREETED  # 552, the transaction is over; no HELO was seen
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<u@test.example>\r\nDATA\r\nbare\n")
    assert proto.state is State.CLOSED and proto.exitStatus == 256
    seen = transitions(logEvents)
    assert seen[-2:] == [("mail", "data"), ("data", "closed")]
    assert ("data", "greeted") in seen
    assert all(State(new) in ALLOWED[State(old)] for old, new in seen)


def test_timeout_is_twisted_timeoutmixin_on_the_injected_clock():
    proto, t, inj, clock = makeSession(control=makeControl(timeoutsmtpd=30))
    assert proto.callLater == clock.callLater and proto.timeOut == 30
    clock.advance(30)
    assert proto.state is State.CLOSED and proto.exitStatus == 256
    assert not clock.getDelayedCalls()


def test_timer_waits_for_a_pending_commit():
    inj = FakeInjector()
    inj.hold = True
    proto, t, inj, clock = makeSession(control=makeControl(timeoutsmtpd=30), injector=inj)
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<u@test.example>\r\nDATA\r\n.\r\n")
    clock.advance(90)
    assert proto.state is State.COMMIT and not t.disconnecting
    inj.pending[0].callback(FakeQueued(1, 100, 1700000000.0))
    assert proto.state is State.GREETED
    clock.advance(30)
    assert t.value().endswith(b"250 2.0.0 ok 1700000000 qp 100\r\n451 4.4.2 timeout (#4.4.2)\r\n")
