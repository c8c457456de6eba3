"""
Remote delivery against Postfix's smtp-sink with 4xx/5xx injected by its options.

Needs the Debian package postfix (for /usr/sbin/smtp-sink); skipped without it.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from qmtwist.delivery import Report
from tests.integration.remote.peers import PostfixSmtpSink
from tests.integration.remote.test_delivery import agent, control, deliverAll, message, request

pytestmark = pytest.mark.skipif(
    not PostfixSmtpSink.available(), reason="smtp-sink missing (Debian package postfix)"
)


@pytest.fixture
def smtpSink(request):
    sink = PostfixSmtpSink(getattr(request, "param", []))
    sink.start()
    yield sink
    sink.stop()


@pytest_twisted.ensureDeferred
async def test_accepted(home, tmp_path, smtpSink) -> None:
    control(home, "smtproutes", b":127.0.0.1:%d\n" % smtpSink.port)
    path = message(tmp_path)
    reports = await deliverAll(
        agent(home, None), [request(path, b"a@x.example"), request(path, b"b@y.example", pos=1)]
    )
    ok = Report.success(b"127.0.0.1 accepted message.\nRemote host said: 250 2.0.0 Ok\n")
    assert reports == [ok, ok]


@pytest.mark.parametrize(
    "smtpSink, expected",
    [
        (["-r", "rcpt"], Report.deferral(
            b"127.0.0.1 does not like recipient.\n"
            b"Remote host said: 450 4.3.0 Error: command failed\nGiving up on 127.0.0.1.\n")),
        (["-f", "rcpt"], Report.failure(
            b"127.0.0.1 does not like recipient.\n"
            b"Remote host said: 500 5.3.0 Error: command failed\nGiving up on 127.0.0.1.\n")),
        (["-r", "mail"], Report.deferral(
            b"Connected to 127.0.0.1 but sender was rejected.\n"
            b"Remote host said: 450 4.3.0 Error: command failed\n")),
        (["-f", "data"], Report.failure(
            b"127.0.0.1 failed on DATA command.\n"
            b"Remote host said: 500 5.3.0 Error: command failed\n")),
        (["-r", "."], Report.deferral(
            b"127.0.0.1 failed after I sent the message.\n"
            b"Remote host said: 450 4.3.0 Error: command failed\n")),
        (["-f", "."], Report.failure(
            b"127.0.0.1 failed after I sent the message.\n"
            b"Remote host said: 500 5.3.0 Error: command failed\n")),
        (["-q", "."], Report.deferral(
            b"Connected to 127.0.0.1 but connection died. Possible duplicate! (#4.4.2)\n")),
        (["-q", "rcpt"], Report.deferral(
            b"Connected to 127.0.0.1 but connection died. (#4.4.2)\n")),
    ],
    indirect=["smtpSink"],
)
@pytest_twisted.ensureDeferred
async def test_injectedErrors(home, tmp_path, smtpSink, expected) -> None:
    control(home, "smtproutes", b":127.0.0.1:%d\n" % smtpSink.port)
    [r] = await deliverAll(agent(home, None), [request(message(tmp_path), b"a@x.example")])
    assert r == expected


# -- through the whole daemon ----------------------------------------------------------------

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from qmtwist.home import Home, setup  # noqa: E402
from tests.integration.daemon import Daemon, waitFor  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _daemon(tmp_path, monkeypatch, sinkPort: int) -> tuple[Daemon, Home]:
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    home = Home(str(tmp_path / "home"))
    setup(home, me="sender.example")
    control(home, "smtproutes", b":127.0.0.1:%d\n" % sinkPort)
    r = subprocess.run([sys.executable, "-m", "qmtwist.cli", "--home", home.path, "user", "add",
                        "joe"], capture_output=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", "none", "--qmtp", "none",
                               "--pop3", "none"], str(tmp_path / "log"))
    d.start()
    d.waitLine("status: local 0/10 remote 0/20")
    inj = subprocess.run(
        [sys.executable, "-m", "qmtwist.cli", "--home", home.path, "inject", "-f",
         "joe@sender.example", "friend@remote.example"],
        input=b"Subject: hello\n\nhi there\n", capture_output=True, cwd=REPO)
    assert inj.returncode == 0, inj.stderr
    return d, home


def newMsg(d) -> str:
    """The number of the first message the daemon logged as new."""
    d.waitLine("new msg ")
    return next(x for x in d.lines() if x.startswith("new msg ")).split()[-1]


def test_daemonDeferralThenRetry(tmp_path, monkeypatch) -> None:
    sink = PostfixSmtpSink(["-r", "rcpt"])
    port = sink.start()
    d, _home = _daemon(tmp_path, monkeypatch, port)
    try:
        n = newMsg(d)
        d.waitLine(f"delivery 1: msg {n}: deferral: 127.0.0.1_does_not_like_recipient./"
                   "Remote_host_said:_450_4.3.0_Error:_command_failed/Giving_up_on_127.0.0.1./")
        sink.stop()
        sink = PostfixSmtpSink()
        sink.start(port)
        d.send(signal.SIGALRM)  # retry the deferred deliveries now
        d.waitLine(f"delivery 2: msg {n}: success: 127.0.0.1_accepted_message./"
                   "Remote_host_said:_250_2.0.0_Ok/")
        d.waitLine("end msg")
    finally:
        sink.stop()
        assert d.stop() == 0


def test_daemonBounceCarriesPeerText(tmp_path, monkeypatch) -> None:
    sink = PostfixSmtpSink(["-f", "rcpt"])
    port = sink.start()
    d, home = _daemon(tmp_path, monkeypatch, port)
    try:
        d.waitLine(f"delivery 1: msg {newMsg(d)}: failure: 127.0.0.1_does_not_like_recipient./"
                   "Remote_host_said:_500_5.3.0_Error:_command_failed/Giving_up_on_127.0.0.1./")
        maildir = os.path.join(home.homes, "joe", "Maildir", "new")
        [name] = waitFor(lambda: os.listdir(maildir), "the bounce in joe's Maildir")
        with open(os.path.join(maildir, name), "rb") as f:
            bounce = f.read()
        assert (b"<friend@remote.example>:\n127.0.0.1 does not like recipient.\n"
                b"Remote host said: 500 5.3.0 Error: command failed\n"
                b"Giving up on 127.0.0.1.\n") in bounce
    finally:
        sink.stop()
        assert d.stop() == 0
