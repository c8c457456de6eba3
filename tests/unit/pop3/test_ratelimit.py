"""POP3 password guessing is limited per client address, on a Clock (docs/behaviour/pop3.md 10.1)."""

from __future__ import annotations

from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from qmtwist.pop3.checkpassword import Result
from qmtwist.pop3.server import POP3Factory, POP3Server
from qmtwist.ratelimit import FailureLimiter
from tests.conftest import logLines
from tests.unit.pop3.test_mailbox import makeMaildir
from tests.unit.pop3.test_server import NOW, FakeLogin, talk

TOO_MANY = b"-ERR too many failed logins, try later\r\n"
FAILED = b"-ERR authorization failed\r\n"


class Sessions:
    """Sessions of one listener: one login strategy and one limiter, as POP3Factory shares them."""

    def __init__(self, maildir: str) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.login = FakeLogin({(b"joe", b"right"): (Result.SERVE, maildir)})
        self.limiter = FailureLimiter(self.clock)

    def connect(self, ip: bytes = b"10.0.0.1") -> tuple[POP3Server, StringTransport]:
        proto = POP3Server(self.login, self.clock, b"test.example", 1, maybeDeferred,
                           limiter=self.limiter)
        proto.env = {"TCPREMOTEIP": ip}
        tr = StringTransport()
        proto.makeConnection(tr)
        return proto, tr

    def attempt(self, password: bytes, ip: bytes = b"10.0.0.1") -> bytes:
        proto, tr = self.connect(ip)
        tr.clear()
        proto.dataReceived(b"USER joe\r\nPASS " + password + b"\r\n")
        self.clock.advance(1)  # the failed-login delay
        return tr.value()


def test_three_failures_then_refused_unchecked_for_a_growing_period(tmp_path, logEvents):
    s = Sessions(makeMaildir(tmp_path / "Maildir"))
    assert [s.attempt(b"guess%d" % i) for i in range(3)] == [b"+OK \r\n" + FAILED] * 3
    assert len(s.login.calls) == 3
    # the right password, from the same address: refused without being checked
    assert s.attempt(b"right") == b"+OK \r\n" + TOO_MANY
    assert len(s.login.calls) == 3
    # another address is not affected
    proto, tr = s.connect(b"10.0.0.2")
    assert talk(proto, tr, b"USER joe\r\nPASS right\r\n") == b"+OK \r\n+OK \r\n"
    lines = logLines(logEvents)
    assert ("pop3: too many failed logins from 10.0.0.1; refusing logins from 10.0.0.1 for 30 "
            "seconds") in lines
    assert "pop3: too many failed logins from 10.0.0.1; refused joe unchecked" in lines
    # 30 s after the third failure the address may try again ...
    assert s.limiter.refusedFor("10.0.0.1") == 30 - 2  # two 1 s delays since the third failure
    s.clock.advance(27.5)
    assert s.attempt(b"right") == b"+OK \r\n" + TOO_MANY  # at 29.5 s; the clock moves 1 s on
    proto, tr = s.connect()
    assert talk(proto, tr, b"USER joe\r\nPASS right\r\n") == b"+OK \r\n+OK \r\n"
    # ... and three more failures refuse it for twice as long
    for i in range(3):
        assert s.attempt(b"again%d" % i).endswith(FAILED)
    assert s.limiter.refusedFor("10.0.0.1") == 60 - 1
    s.clock.advance(58.5)
    assert s.attempt(b"right").endswith(TOO_MANY)
    assert s.attempt(b"right") == b"+OK \r\n+OK \r\n"


def test_refused_session_ends_with_status_256(tmp_path):
    s = Sessions(makeMaildir(tmp_path / "Maildir"))
    for i in range(3):
        s.attempt(b"x%d" % i)
    proto, tr = s.connect()
    proto.dataReceived(b"USER joe\r\nPASS right\r\nSTAT\r\n")
    assert tr.value().endswith(TOO_MANY) and tr.disconnecting and proto.exitStatus == 256


def test_apop_is_limited_too(tmp_path):
    s = Sessions(makeMaildir(tmp_path / "Maildir"))
    for i in range(3):
        s.attempt(b"x%d" % i)
    proto, tr = s.connect()
    assert talk(proto, tr, b"APOP joe 0123\r\n") == TOO_MANY
    assert len(s.login.calls) == 3


def test_no_limiter_no_limit(tmp_path):
    clock = Clock()
    login = FakeLogin({})
    for _ in range(6):
        proto = POP3Server(login, clock, b"h", 1, maybeDeferred)
        proto.env = {"TCPREMOTEIP": b"10.0.0.1"}
        tr = StringTransport()
        proto.makeConnection(tr)
        proto.dataReceived(b"USER joe\r\nPASS x\r\n")
        clock.advance(1)
        assert tr.value().endswith(FAILED)
    assert len(login.calls) == 6


def test_factory_shares_one_limiter_on_the_reactor():
    class Ctx:
        reactor = Clock()

    f = POP3Factory(Ctx(), FakeLogin({}), None)
    assert isinstance(f.limiter, FailureLimiter) and f.limiter.clock is Ctx.reactor
