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
    assert reports == [Report.success(b"127.0.0.1 accepted message.\nRemote host said: 250 2.0.0 Ok\n")] * 2


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
