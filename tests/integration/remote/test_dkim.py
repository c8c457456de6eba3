"""
DKIM signing end to end (docs/behaviour/dkim.md): keys made by `qmtwist dkim keygen`, their
printed TXT records served by the loopback DNS server, a message relayed by RemoteAgent to
Postfix's smtp-sink, which dumps what it received; dkim.verify checks the dump against the
record, asking the loopback server. Also QMTP (the in-process QMTP sink) for the length hook.

Needs the Debian package postfix (for /usr/sbin/smtp-sink); skipped without it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import dkim
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.names import dns

from qmtwist.delivery import Report
from qmtwist.remote.mx import makeResolver
from tests.conftest import REPO, logLines
from tests.integration.remote.peers import PostfixSmtpSink, QMTPSinkFactory
from tests.integration.remote.test_delivery import agent, control, deliverAll, message, ports, request
from tests.support import waitFor

__all__ = ["ports"]

pytestmark = pytest.mark.skipif(
    not PostfixSmtpSink.available(), reason="smtp-sink missing (Debian package postfix)"
)

TEXT = (b"Received: (qmail 1 invoked by uid 0); 2 Dec 2026 18:00:00 -0000\n"
        b"From: Joe <joe@mail.keyed.example>\nTo: friend@remote.example\nSubject: signed\n"
        b"Date: Wed, 2 Dec 2026 18:00:00 +0000\nMessage-ID: <1@mail.keyed.example>\n\n"
        b"hello  there \n.leading dot\n\n")


def keygen(home, *args: str) -> str:
    """Run `qmtwist dkim keygen` as a user would; its one line of output."""
    r = subprocess.run([sys.executable, "-m", "qmtwist.cli", "--home", home.path, "dkim",
                        "keygen", *args], capture_output=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 1
    return lines[0]


def publish(server, line: str) -> None:
    """Serve a printed record `NAME. IN TXT "..." "..."` on the loopback DNS server."""
    words = shlex.split(line)
    assert words[1:3] == ["IN", "TXT"] and words[0].endswith(".")
    server.add(words[0].rstrip(".").encode(), dns.Record_TXT(*[w.encode() for w in words[3:]], ttl=0))


def dnsfuncFor(server):
    """A dnsfunc for dkim.verify (called on a thread) that asks the loopback DNS server."""
    resolver = makeResolver(reactor, server.servers)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        answers, _, _ = blockingCallFromThread(reactor, resolver.lookupText, name.rstrip(b"."))
        for rr in answers:
            if rr.type == dns.TXT:
                return b"".join(rr.payload.data)
        return None

    return dnsfunc


@pytest.fixture
def dumpSink(tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    os.chmod(dumps, 0o777)  # smtp-sink runs as nobody under root
    sink = PostfixSmtpSink(["-d", str(dumps) + "/m."])
    sink.start()
    yield sink, dumps
    sink.stop()


async def relay(home, tmp_path, sink, dumps, text: bytes, sender: bytes = b"joe@mail.keyed.example"):
    control(home, "smtproutes", b":127.0.0.1:%d\n" % sink.port)
    before = set(os.listdir(dumps))
    [r] = await deliverAll(agent(home, None), [request(message(tmp_path, text), b"friend@remote.example",
                                                       sender)])
    assert r == Report.success(b"127.0.0.1 accepted message.\nRemote host said: 250 2.0.0 Ok\n")
    [name] = waitFor(lambda: sorted(set(os.listdir(dumps)) - before), "smtp-sink's dump")
    path = dumps / name
    waitFor(lambda: path.read_bytes().endswith(b"\n\n"), "the complete dump")
    return path.read_bytes()


@pytest.mark.parametrize("keyType", ["rsa", "ed25519"])
@pytest_twisted.ensureDeferred
async def test_signedMessageVerifiesAgainstThePrintedRecord(home, tmp_path, dumpSink, loopbackDNS,
                                                            keyType, logEvents) -> None:
    sink, dumps = dumpSink
    line = keygen(home, "keyed.example", "--type", keyType)
    assert line.startswith(f'qmtwist._domainkey.keyed.example. IN TXT "v=DKIM1; k={keyType}; p=')
    publish(loopbackDNS, line)
    got = await relay(home, tmp_path, sink, dumps, TEXT)
    assert got.count(b"DKIM-Signature:") == 1
    assert b"a=%s-sha256" % keyType.encode() in got and b"d=keyed.example" in got
    dnsfunc = dnsfuncFor(loopbackDNS)
    assert await deferToThread(dkim.verify, got, dnsfunc=dnsfunc)
    assert not await deferToThread(dkim.verify, got.replace(b"hello", b"jello"), dnsfunc=dnsfunc)
    assert not await deferToThread(dkim.verify, got.replace(b"Subject: signed", b"Subject: x"),
                                   dnsfunc=dnsfunc)
    assert "dkim: msg 1 signed d=keyed.example s=qmtwist" in logLines(logEvents)


@pytest_twisted.ensureDeferred
async def test_bothKeysBothSignaturesVerify(home, tmp_path, dumpSink, loopbackDNS) -> None:
    sink, dumps = dumpSink
    publish(loopbackDNS, keygen(home, "keyed.example"))
    publish(loopbackDNS, keygen(home, "keyed.example", "--type", "ed25519", "--selector", "ed"))
    got = await relay(home, tmp_path, sink, dumps, TEXT)
    d = dkim.DKIM(got)
    dnsfunc = dnsfuncFor(loopbackDNS)
    sigs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
    assert len(sigs) == 2 and b"a=rsa-sha256" in sigs[0] and b"a=ed25519-sha256" in sigs[1]
    assert await deferToThread(d.verify, 0, dnsfunc)
    assert await deferToThread(d.verify, 1, dnsfunc)


@pytest_twisted.ensureDeferred
async def test_unkeyedDomainIsNotSigned(home, tmp_path, dumpSink, loopbackDNS) -> None:
    sink, dumps = dumpSink
    publish(loopbackDNS, keygen(home, "keyed.example"))
    got = await relay(home, tmp_path, sink, dumps,
                      TEXT.replace(b"joe@mail.keyed.example>", b"joe@unkeyed.example>"),
                      b"joe@unkeyed.example")
    assert b"DKIM-Signature" not in got and b"Subject: signed" in got


@pytest_twisted.ensureDeferred
async def test_qmtpRouteIsSignedWithTheRightLength(home, tmp_path, ports, loopbackDNS) -> None:
    publish(loopbackDNS, keygen(home, "keyed.example", "--type", "ed25519"))
    sinkFactory = QMTPSinkFactory()
    port = reactor.listenTCP(0, sinkFactory, interface="127.0.0.1")
    ports.append(port)
    control(home, "qmtproutes", b":127.0.0.1:%d\n" % port.getHost().port)
    [r] = await deliverAll(agent(home, None), [request(message(tmp_path, TEXT), b"f@remote.example")])
    assert r.outcome.value == "success", r
    [(got, _sender, _rcpts)] = sinkFactory.packages
    assert got.startswith(b"\nDKIM-Signature: v=1; a=ed25519-sha256;")  # QMTP's leading LF
    assert got.endswith(TEXT)
    assert await deferToThread(dkim.verify, got[1:], dnsfunc=dnsfuncFor(loopbackDNS))


# -- through the whole daemon: our own bounce, as a report, signed for me --------------------

def test_daemonBounceIsASignedReport(tmp_path, monkeypatch, dumpSink) -> None:
    """
    A local failure of a message from a remote sender: the bounce leaves by remote delivery
    to smtp-sink, signed for me's domain (sender.example) and parsed as an RFC 3464 report.
    """
    from qmtwist.home import Home, setup
    from tests.bounceparts import qsbmf, report
    from tests.integration.daemon import Daemon

    sink, dumps = dumpSink
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    home = Home(str(tmp_path / "home"))
    setup(home, me="sender.example")
    line = keygen(home, "sender.example", "--type", "ed25519")
    control(home, "smtproutes", b":127.0.0.1:%d\n" % sink.port)
    d = Daemon(str(tmp_path), ["--home", home.path, "--smtp", "none", "--qmtp", "none",
                               "--pop3", "none"], str(tmp_path / "log"))
    d.start()
    try:
        d.waitLine("status: local 0/10 remote 0/20")
        inj = subprocess.run(
            [sys.executable, "-m", "qmtwist.cli", "--home", home.path, "inject", "-f",
             "bob@elsewhere.example", "nosuch@sender.example"],
            input=b"From: bob@elsewhere.example\nSubject: lost\n\nhi there\n", capture_output=True,
            cwd=REPO)
        assert inj.returncode == 0, inj.stderr
        d.waitLine(": success: 127.0.0.1_accepted_message./")  # delivery 2: msg N: ...
        [name] = waitFor(lambda: os.listdir(dumps), "the bounce in smtp-sink's dump")
        waitFor(lambda: (dumps / name).read_bytes().endswith(b"--\n\n"), "the complete dump")
        got = (dumps / name).read_bytes()
    finally:
        assert d.stop() == 0
    assert b"\nX-Mail-Args: <>\n" in got  # a bounce: MAIL FROM:<>
    words = shlex.split(line)
    records = {words[0].encode(): "".join(words[3:]).encode()}
    assert dkim.verify(got, dnsfunc=lambda name, timeout=5: records.get(name))
    assert b" d=sender.example;" in got
    text = qsbmf(got)
    assert text.startswith(b"Hi. This is the qmail-send program at sender.example.\n")
    assert b"<nosuch@sender.example>:\nSorry, no mailbox here by that name. (#5.1.1)\n\n" in text
    [block] = report(got).get_payload()[1].get_payload()[1:]
    assert (block["Final-Recipient"], block["Status"]) == ("rfc822; nosuch@sender.example", "5.1.1")
