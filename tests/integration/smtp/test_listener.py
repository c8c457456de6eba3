"""The SMTP listener end to end: real sockets, real queue files (docs/behaviour/smtp.md 7, tcpserver.md 8;
FAQ 5.1, 5.4, 5.5)."""

from __future__ import annotations

import re
import smtplib

import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread

from tests.conftest import logLines
from tests.support import until
from tests.integration.smtp.conftest import Client, queueFiles, queuedMessages

MSG = b"Subject: t\r\n\r\nbody\r\n"
QRECEIVED = re.compile(rb"^Received: \(qmail (\d+) invoked from network\); \d+ \w+ \d{4} "
                       rb"\d\d:\d\d:\d\d -0000\n")
SRECEIVED = re.compile(rb"^Received: from unknown \(HELO client\.example\) \(127\.0\.0\.1\)\n"
                       rb"  by test\.example with (E?SMTPS?); \d+ \w+ \d{4} \d\d:\d\d:\d\d -0000\n")


def checkMessage(mess: bytes, proto: bytes = b"SMTP") -> bytes:
    m = QRECEIVED.match(mess)
    assert m, mess
    rest = mess[m.end():]
    s = SRECEIVED.match(rest)
    assert s and s.group(1) == proto, rest
    return rest[s.end():]


@pytest_twisted.inlineCallbacks
def test_smtplib_queues_message(startSMTP):
    srv = startSMTP()

    def talk():
        with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.example") as s:
            code, text = s.ehlo()
            assert (code, text) == (250, b"test.example\nPIPELINING\n8BITMIME\nSIZE 52428800\n"
                                    b"ENHANCEDSTATUSCODES\nSMTPUTF8\nCHUNKING")
            s.mail("alice@example.org")
            s.rcpt("bob@test.example")
            return s.data(MSG)

    code, text = yield deferToThread(talk)
    [(env, mess)] = queuedMessages(srv.home)
    assert env.sender == b"alice@example.org" and list(env.recipients) == [b"bob@test.example"]
    qp = QRECEIVED.match(mess).group(1)
    assert code == 250 and re.fullmatch(rb"2.0.0 ok \d+ qp " + qp, text)
    assert checkMessage(mess) == b"Subject: t\n\nbody\n"


@pytest_twisted.inlineCallbacks
def test_pipelined_dialogue_in_order(startSMTP):
    srv = startSMTP()
    dialogue = (b"EHLO client.example\r\n"
                b"MAIL FROM:<a@x.example>\r\nRCPT TO:<bob@test.example>\r\nDATA\r\n" + MSG +
                b".\r\nMAIL FROM:<b@x.example>\r\nRCPT TO:<v@relay.example>\r\n"
                b"RCPT TO:<carol@test.example>\r\nDATA\r\n..dot\r\n.\r\nNOOP\r\nQUIT\r\n")

    def talk():
        c = Client(srv.port)
        c.send(dialogue)
        return c.readAll()

    out = yield deferToThread(talk)
    assert re.fullmatch(
        rb"220 test.example ESMTP\r\n250-test.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
        rb"250-SIZE 52428800\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
        rb"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n250 2.0.0 ok \d+ qp \d+\r\n"
        rb"250 2.1.0 ok\r\n553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts \(#5.7.1\)\r\n"
        rb"250 2.1.5 ok\r\n354 go ahead\r\n250 2.0.0 ok \d+ qp \d+\r\n250 2.0.0 ok\r\n"
        rb"221 2.0.0 test.example\r\n", out)
    [(e1, m1), (e2, m2)] = queuedMessages(srv.home)
    assert (e1.sender, list(e1.recipients)) == (b"a@x.example", [b"bob@test.example"])
    assert (e2.sender, list(e2.recipients)) == (b"b@x.example", [b"carol@test.example"])
    assert checkMessage(m2) == b".dot\n"


RELAY_TRICKS = [b"victim@example.com", b"@test.example:victim@example.com",
                b'"victim@example.com"@example.com', b"user@other.example"]
LOCAL_TRICKS = [b"victim%example.com@test.example", b"victim@example.com@test.example"]


def relayDialogue(port: int) -> bytes:
    c = Client(port)
    c.send(b"HELO client.example\r\nMAIL FROM:<a@x.example>\r\n" +
           b"".join(b"RCPT TO:<" + r + b">\r\n" for r in RELAY_TRICKS + LOCAL_TRICKS) + b"QUIT\r\n")
    return c.readAll()


@pytest_twisted.inlineCallbacks
def test_fresh_home_refuses_relay_from_loopback(startSMTP):
    srv = startSMTP()
    out = yield deferToThread(relayDialogue, srv.port)
    nogw = b"553 5.7.1 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\r\n"
    assert out == (b"220 test.example ESMTP\r\n250 test.example\r\n250 2.1.0 ok\r\n" +
                   nogw * len(RELAY_TRICKS) + b"250 2.1.5 ok\r\n" * len(LOCAL_TRICKS) +
                   b"221 2.0.0 test.example\r\n")


@pytest_twisted.inlineCallbacks
def test_faq54_relayclient_rule(startSMTP):
    srv = startSMTP(rules=b'127.:allow,RELAYCLIENT=""\n')
    out = yield deferToThread(relayDialogue, srv.port)
    assert out == (b"220 test.example ESMTP\r\n250 test.example\r\n250 2.1.0 ok\r\n" +
                   b"250 2.1.5 ok\r\n" * (len(RELAY_TRICKS) + len(LOCAL_TRICKS)) +
                   b"221 2.0.0 test.example\r\n")


@pytest_twisted.inlineCallbacks
def test_faq55_relayclient_fixme(startSMTP):
    srv = startSMTP(rules=b'127.0.0.1:allow,RELAYCLIENT="@fixme"\n')

    def talk():
        with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.example") as s:
            return s.sendmail("alice@example.org", ["joe@x.com", "bob"], MSG)

    refused = yield deferToThread(talk)
    assert refused == {}
    [(env, mess)] = queuedMessages(srv.home)
    assert list(env.recipients) == [b"joe@x.com@fixme", b"bob@fixme"]


@pytest_twisted.inlineCallbacks
def test_deny_rule_and_log_lines(startSMTP, logEvents):
    srv = startSMTP(rules=b"127.0.0.1:deny\n")

    def talk():
        c = Client(srv.port)
        return c.readAll()

    out = yield deferToThread(talk)
    assert out == b""
    lines = [ln for ln in logLines(logEvents) if ln.startswith("tcpserver:")]
    assert lines[0] == "tcpserver: status: 0/40"
    assert lines[1:3] == ["tcpserver: status: 1/40", "tcpserver: pid 1 from 127.0.0.1"]
    assert re.fullmatch(r"tcpserver: deny 1 test\.example:127\.0\.0\.1:%d :127\.0\.0\.1::\d+"
                        % srv.port, lines[3])
    assert lines[4:] == ["tcpserver: end 1 status 256", "tcpserver: status: 0/40"]
    assert {e.get("log_namespace") for e in logEvents
            if "tcpserver" in e.get("log_format", "")} == {"qmtwist.smtp"}


@pytest_twisted.inlineCallbacks
def test_faq51_concurrency_limit(startSMTP, logEvents):
    srv = startSMTP(concurrency=3)

    def talk():
        clients = [Client(srv.port) for _ in range(3)]
        greetings = [c.readUntil(b"\r\n") for c in clients]
        fourth = Client(srv.port)
        for c in clients:  # a round trip on each: the server has had time to see the fourth
            c.send(b"NOOP\r\n")
            assert c.readUntil(b"\r\n") == b"250 2.0.0 ok\r\n"
        fourth.sock.setblocking(False)
        try:
            early = fourth.sock.recv(100)
        except BlockingIOError:
            early = None
        fourth.sock.setblocking(True)
        clients[0].send(b"QUIT\r\n")
        assert clients[0].readAll() == b"221 2.0.0 test.example\r\n"
        late = fourth.readUntil(b"\r\n")
        for c in clients[1:] + [fourth]:
            c.send(b"QUIT\r\n")
            c.readAll()
        return greetings, early, late

    greetings, early, late = yield deferToThread(talk)
    assert greetings == [b"220 test.example ESMTP\r\n"] * 3
    assert early is None
    assert late == b"220 test.example ESMTP\r\n"
    lines = [ln for ln in logLines(logEvents) if ln.startswith("tcpserver:")]
    assert "tcpserver: status: 3/3" in lines
    assert lines.index("tcpserver: end 1 status 0") < lines.index("tcpserver: pid 4 from 127.0.0.1")
    assert max(int(ln.split()[-1].split("/")[0]) for ln in lines if "status:" in ln) == 3
    ok4 = [ln for ln in lines if ln.startswith("tcpserver: ok 4 ")]
    assert len(ok4) == 1


@pytest_twisted.inlineCallbacks
def test_disconnect_in_data_queues_nothing(startSMTP):
    srv = startSMTP()

    def talk():
        c = Client(srv.port)
        c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@test.example>\r\nDATA\r\npartial\r\n")
        c.readUntil(b"354 go ahead\r\n")
        c.close()
        d = Client(srv.port)  # the server keeps serving
        d.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@test.example>\r\nDATA\r\nx\n.\n")
        return d.readAll()

    out = yield deferToThread(talk)
    assert out.endswith(b"354 go ahead\r\n451 4.5.2 See http://pobox.com/~djb/docs/smtplf.html.\r\n")
    # an aborted message's files are removed on a thread, just after the session
    yield ensureDeferred(until(lambda: queueFiles(srv.home) == [], "no queue files"))


@pytest_twisted.inlineCallbacks
def test_databytes_rule_and_ten_megabyte_line(startSMTP):
    srv = startSMTP(rules=b"127.:allow,DATABYTES=\"1000\"\n")

    def talk():
        c = Client(srv.port)
        c.send(b"NOOP " + b"x" * 10_000_000 + b"\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@test.example>\r\n"
               b"DATA\r\n" + b"y" * 2000 + b"\r\n.\r\nQUIT\r\n")
        return c.readAll()

    out = yield deferToThread(talk)
    assert out == (b"220 test.example ESMTP\r\n500 5.5.2 line too long (#5.5.2)\r\n"
                   b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"
                   b"354 go ahead\r\n552 5.3.4 sorry, that message size exceeds my databytes limit "
                   b"(#5.3.4)\r\n221 2.0.0 test.example\r\n")
    # an aborted message's files are removed on a thread, just after the session
    yield ensureDeferred(until(lambda: queueFiles(srv.home) == [], "no queue files"))


@pytest_twisted.inlineCallbacks
def test_silent_client_times_out(startSMTP, logEvents):
    import os

    def setTimeout(home):
        with open(os.path.join(home.control, "timeoutsmtpd"), "w") as f:
            f.write("1\n")

    srv = startSMTP()
    setTimeout(srv.home)

    def talk():
        c = Client(srv.port)
        return c.readAll()

    out = yield deferToThread(talk)
    assert out == b"220 test.example ESMTP\r\n451 4.4.2 timeout (#4.4.2)\r\n"
    assert "tcpserver: end 1 status 256" in logLines(logEvents)


def test_bind_failure_logs_alert(startSMTP, logEvents):
    srv = startSMTP()
    from qmtwist.smtp.listener import makeSMTPService
    svc = makeSMTPService(srv.ctx, "tcp:%d:interface=127.0.0.1" % srv.port, None, 40)
    with pytest.raises(Exception):
        svc.startService()
    alerts = [ln for ln in logLines(logEvents) if ln.startswith("alert:")]
    assert len(alerts) == 1
    assert alerts[0].startswith("alert: cannot start: unable to listen on tcp:%d:interface="
                                "127.0.0.1: " % srv.port)
    assert "Address already in use" in alerts[0]


@pytest_twisted.inlineCallbacks
def test_missing_rcpthosts_accepts_only_locals(home, startSMTP, logEvents):
    import os
    os.unlink(os.path.join(home.control, "rcpthosts"))
    with open(os.path.join(home.control, "virtualdomains"), "wb") as f:
        f.write(b"virt.example:bob\n")
    srv = startSMTP()
    assert ("warning: control/rcpthosts missing; accepting only local and virtual domains"
            in logLines(logEvents))

    def talk():
        c = Client(srv.port)
        c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@test.example>\r\nRCPT TO:<x@virt.example>\r\n"
               b"RCPT TO:<x@example.com>\r\nQUIT\r\n")
        return c.readAll()

    out = yield deferToThread(talk)
    assert out == (b"220 test.example ESMTP\r\n250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n"
                   b"553 5.7.1 sorry, that "
                   b"domain isn't in my list of allowed rcpthosts (#5.7.1)\r\n221 2.0.0 test.example\r\n")


def test_bad_endpoint_logs_alert(startSMTP, logEvents):
    srv = startSMTP()
    from qmtwist.smtp.listener import makeSMTPService
    svc = makeSMTPService(srv.ctx, "tcp:notaport", None, 40)
    with pytest.raises(Exception):
        svc.startService()
    alerts = [ln for ln in logLines(logEvents) if ln.startswith("alert:")]
    assert len(alerts) == 1 and alerts[0].startswith(
        "alert: cannot start: unable to listen on tcp:notaport: ")


def test_logs_the_port_it_is_bound_to(startSMTP, logEvents):
    """tcp:0 binds a port chosen by the kernel: the log line says which."""
    srv = startSMTP(endpoint="tcp:0:interface=127.0.0.1")
    assert srv.port != 0
    assert "smtp: listening on 127.0.0.1:%d" % srv.port in logLines(logEvents)


@pytest_twisted.inlineCallbacks
def test_remote_host_name_from_the_daemons_resolver(home, startSMTP, logEvents):
    """=host rules ask the resolver the listener was given (the daemon's --dns one)."""
    from tests.unit.test_tcpserver_ptr import FakeResolver
    from qmtwist.ptr import makeHostLookup
    from twisted.internet import reactor

    resolver = FakeResolver({"1.0.0.127.in-addr.arpa": "client.example"},
                            {"client.example": ["127.0.0.1"]})
    srv = startSMTP(rules=b'=client.example:allow,RELAYCLIENT=""\n:deny\n',
                    lookupHost=makeHostLookup(reactor, resolver))

    def talk():
        c = Client(srv.port)
        c.send(b"QUIT\r\n")
        return c.readAll()

    out = yield deferToThread(talk)
    assert out.startswith(b"220 ")
    assert ("tcpserver: ok 1 test.example:127.0.0.1:%d client.example:127.0.0.1::" % srv.port
            ) in "\n".join(logLines(logEvents))


@pytest_twisted.inlineCallbacks
def test_accepted_connection_has_nagle_off(startSMTP):
    """
    TCP_NODELAY on the accepted socket (tcpserver.md 8.3): with Nagle's algorithm on, a
    pipelining client's RCPT reply, written after the recipient check, waited for its ACK.
    """
    import socket

    srv = startSMTP()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    try:
        greeting = yield deferToThread(sock.recv, 1024)
        assert greeting.startswith(b"220 ")
        [session] = list(srv.service.factory.protocols)
        handle = session.transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        sock.close()
