"""qmail-smtpd session details: DATA conversion, hops, pipelining order, STARTTLS, timeout, queue errors."""

from __future__ import annotations

from tests.unit.smtp.helpers import makeControl, makeSession

ENVELOPE = b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@test.example>\r\nDATA\r\n"
OK3 = b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"


def body(writer) -> bytes:
    """The message written, without the SMTP Received line (two lines)."""
    return writer.data.split(b"\n", 2)[2]


def test_received_line_and_conversion():
    proto, t, inj, _ = makeSession(env={"TCPREMOTEIP": b"127.0.0.1", "TCPLOCALHOST": b"test.example"})
    proto.dataReceived(b"HELO client.example\r\n" + ENVELOPE +
                       b"Subject: t\r\n\r\n..dot\r\nCR\rinside\r\n8bit \xff\r\n.\r\n")
    w = inj.writers[0]
    assert w.data == (
        b"Received: from unknown (HELO client.example) (127.0.0.1)\n"
        b"  by test.example with SMTP; 14 Nov 2023 22:13:20 -0000\n"
        b"Subject: t\n\n.dot\nCR\rinside\n8bit \xff\n")
    assert w.committed == (b"a@b", [b"bob@test.example"])


def test_received_helo_same_as_host_and_unsafe_chars():
    proto, t, inj, _ = makeSession(env={"TCPREMOTEIP": b"1.2.3.4", "TCPREMOTEHOST": b"c.example",
                                        "TCPLOCALIP": b"5.6.7.8"})
    proto.dataReceived(b"HELO C.Example\r\n" + ENVELOPE + b".\r\n")
    assert inj.writers[0].data.split(b"\n")[:2] == [
        b"Received: from c.example (1.2.3.4)", b"  by 5.6.7.8 with SMTP; 14 Nov 2023 22:13:20 -0000"]
    proto2, t, inj2, _ = makeSession(env={"TCPREMOTEIP": b"1.2.3.4"})
    proto2.dataReceived(b"EHLO a b<c>[1.2.3.4]\r\n" + ENVELOPE + b".\r\n")
    assert inj2.writers[0].data.split(b"\n")[0] == (
        b"Received: from unknown (HELO a?b?c?[1.2.3.4]) (1.2.3.4)")


def test_relayclient_appended():
    proto, t, inj, _ = makeSession(env={"TCPREMOTEIP": b"127.0.0.1", "RELAYCLIENT": b"@fixme"})
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<joe@x.com>\r\nRCPT TO:<bob>\r\nDATA\r\n.\r\n")
    assert inj.writers[0].committed == (b"a@b", [b"joe@x.com@fixme", b"bob@fixme"])


def test_local_ip_rewrite():
    proto, t, inj, _ = makeSession(control=makeControl(localiphost=b"lip.example",
                                                       rcpthosts=(b"lip.example",)))
    t.clear()
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@[127.0.0.1]>\r\nRCPT TO:<bob@[10.0.0.1]>\r\n")
    assert t.value() == (b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"
                         b"553 5.7.1 sorry, that domain isn't in my list of allowed "
                         b"rcpthosts (#5.7.1)\r\n")
    assert proto.recipients == [b"bob@lip.example"]


def test_hop_count():
    hops = b"Received: x\r\n" * 50 + b"Delivered-To: y\r\n" * 49
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(ENVELOPE + hops + b"\r\nReceived: not a header\r\n.\r\n")
    assert t.value() == OK3 + b"250 2.0.0 ok 1700000000 qp 100\r\n"
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(ENVELOPE + hops + b"received: one more\r\n\r\n.\r\n")
    assert t.value() == OK3 + b"554 5.4.6 too many hops, this message is looping (#5.4.6)\r\n"
    assert inj.writers[0].aborted and inj.committed == []


def test_databytes_exact_limit():
    proto, t, inj, _ = makeSession(control=makeControl(databytes=6))
    t.clear()
    proto.dataReceived(ENVELOPE + b"12345\r\n.\r\n" + ENVELOPE + b"123456\r\n.\r\n")
    assert t.value() == (OK3 + b"250 2.0.0 ok 1700000000 qp 100\r\n" + OK3 +
                         b"552 5.3.4 sorry, that message size exceeds my databytes limit (#5.3.4)\r\n")
    assert inj.writers[1].aborted and len(inj.committed) == 1


def test_pipelined_answers_wait_for_commit():
    """Commands pipelined after the final dot are answered only after 250 ok."""
    proto, t, inj, _ = makeSession()
    inj.hold = True
    t.clear()
    proto.dataReceived(ENVELOPE + b"hi\r\n.\r\nMAIL FROM:<c@d>\r\nNOOP\r\n")
    assert t.value() == OK3
    assert t.producerState == "paused"
    from tests.unit.smtp.helpers import FakeQueued
    inj.pending[0].callback(FakeQueued(7, 42, 1700000001.5))
    assert t.value() == OK3 + b"250 2.0.0 ok 1700000001 qp 42\r\n250 2.1.0 ok\r\n250 2.0.0 ok\r\n"
    assert t.producerState == "producing"


def test_commit_failure_texts():
    proto, t, inj, _ = makeSession()
    inj.commitError = 53
    t.clear()
    proto.dataReceived(ENVELOPE + b".\r\n")
    assert t.value() == OK3 + b"451 4.3.0 qq write error or disk full (#4.3.0)\r\n"
    proto, t, inj, _ = makeSession()
    inj.commitError = 11
    t.clear()
    proto.dataReceived(ENVELOPE + b".\r\n")
    assert t.value() == OK3 + b"554 5.1.3 envelope address too long for qq (#5.1.3)\r\n"


def test_write_error_and_qqt_failure():
    proto, t, inj, _ = makeSession()
    inj.newError = 62
    t.clear()
    proto.dataReceived(ENVELOPE)
    assert t.value() == b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n451 4.3.0 qqt failure (#4.3.0)\r\n"
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(ENVELOPE)
    inj.writeError = 53
    proto.dataReceived(b"x\r\n.\r\n")
    assert t.value() == OK3 + b"451 4.3.0 qq write error or disk full (#4.3.0)\r\n"
    assert inj.writers[0].aborted


def test_disconnect_in_data_aborts():
    proto, t, inj, _ = makeSession()
    proto.dataReceived(ENVELOPE + b"partial\r\n")
    proto.connectionLost(None)
    assert inj.writers[0].aborted and inj.committed == []


def test_bare_lf_closes():
    proto, t, inj, _ = makeSession()
    proto.dataReceived(ENVELOPE + b"x\n")
    assert t.disconnecting and proto.exitStatus == 256
    assert inj.writers[0].aborted


def test_long_data_line_streams():
    """A 10 MB DATA line is written in pieces, never refused; memory stays bounded."""
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(ENVELOPE)
    chunk = b"y" * 100000
    for _ in range(100):
        proto.dataReceived(chunk)
        assert len(proto._buf) < 200000
    proto.dataReceived(b"\r\n.\r\n")
    assert t.value() == OK3 + b"250 2.0.0 ok 1700000000 qp 100\r\n"
    assert body(inj.writers[0]) == b"y" * 10000000 + b"\n"


def test_long_data_line_split_cr():
    """A CR kept across a flush boundary still pairs with its LF; dots only at line starts."""
    proto, t, inj, _ = makeSession()
    proto.dataReceived(ENVELOPE + b"." + b"z" * 70000 + b"\r")
    proto.dataReceived(b"\n.\r\n")
    assert body(inj.writers[0]) == b"z" * 70000 + b"\n"


def test_huge_command_line():
    proto, t, inj, _ = makeSession()
    t.clear()
    for _ in range(100):
        proto.dataReceived(b"x" * 100000)
    assert len(proto._buf) == 0
    proto.dataReceived(b"\r\nNOOP\r\n")
    assert t.value() == b"500 5.5.2 line too long (#5.5.2)\r\n250 2.0.0 ok\r\n"


def test_timeout():
    proto, t, inj, clock = makeSession(control=makeControl(timeoutsmtpd=30))
    t.clear()
    clock.advance(29)
    proto.dataReceived(b"NOOP\r\n")
    clock.advance(29)
    assert not t.disconnecting
    clock.advance(1)
    assert t.value() == b"250 2.0.0 ok\r\n451 4.4.2 timeout (#4.4.2)\r\n"
    assert t.disconnecting and proto.exitStatus == 256


def test_timeout_in_data_queues_nothing():
    proto, t, inj, clock = makeSession(control=makeControl(timeoutsmtpd=30))
    proto.dataReceived(ENVELOPE + b"x\r\n")
    clock.advance(30)
    proto.connectionLost(None)
    assert inj.writers[0].aborted and inj.committed == []


def test_quit_status():
    proto, t, inj, _ = makeSession()
    proto.dataReceived(b"QUIT\r\nNOOP\r\n")
    assert t.value().endswith(b"221 2.0.0 test.example\r\n")
    assert t.disconnecting and proto.exitStatus == 0


def test_starttls_offered_and_discards_pipelined():
    proto, t, inj, _ = makeSession(cert=True)
    t.clear()
    proto.dataReceived(b"EHLO x\r\n")
    assert t.value() == (b"250-test.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 0\r\n"
                         b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n"
                         b"250 STARTTLS\r\n")
    t.clear()
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@x>\r\n")
    assert t.value() == b"250 2.1.0 ok\r\n220 2.0.0 ready for tls\r\n"
    assert t.tlsStarted is not None
    assert proto.sender is None and proto.helo is None
    t.clear()
    proto.dataReceived(b"EHLO x\r\nRCPT TO:<bob@test.example>\r\n")
    assert t.value() == (b"250-test.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 0\r\n"
                         b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
                         b"503 5.5.1 MAIL first (#5.5.1)\r\n")
    proto.dataReceived(b"STARTTLS\r\n")
    assert t.value().endswith(b"502 5.5.1 unimplemented (#5.5.1)\r\n")
    proto.dataReceived(b"MAIL FROM:<a@b>\r\nRCPT TO:<bob@test.example>\r\nDATA\r\n.\r\n")
    assert inj.writers[0].data.split(b"\n")[1].endswith(b"with ESMTPS; 14 Nov 2023 22:13:20 -0000")


def test_starttls_not_offered_without_certificate_file():
    from tests.unit.smtp.helpers import FakeCertificate
    proto, t, inj, _ = makeSession(cert=True)
    proto.certificate = FakeCertificate(present=False)
    t.clear()
    proto.dataReceived(b"EHLO x\r\nSTARTTLS\r\n")
    assert t.value() == (b"250-test.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 0\r\n"
                         b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n"
                         b"502 5.5.1 unimplemented (#5.5.1)\r\n")


def test_random_garbage_keeps_serving():
    import random
    rnd = random.Random(5)
    proto, t, inj, _ = makeSession()
    for _ in range(10000):
        n = rnd.randrange(0, 60)
        line = bytes(rnd.choice(b"abcdefghDATAMAILRCPT:<>@. \t\r\x00\xff") for _ in range(n))
        if line.upper().startswith((b"DATA", b"QUIT", b"STARTTLS")):
            continue
        proto.dataReceived(line.replace(b"\n", b"") + b"\r\n")
    t.clear()
    proto.dataReceived(b"RSET\r\nNOOP\r\n")
    assert t.value() == b"250 2.0.0 flushed\r\n250 2.0.0 ok\r\n"
    assert not t.disconnecting and inj.committed == []


def test_cr_dot_cr_does_not_end_data():
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(ENVELOPE + b"a\r.\rb\r\n\r.\r\r\n.\r\n")
    assert t.value() == OK3 + b"250 2.0.0 ok 1700000000 qp 100\r\n"
    assert body(inj.writers[0]) == b"a\r.\rb\n\r.\r\n"


def test_pipelined_data_after_sync_commit_in_order():
    """Two whole transactions and QUIT in one packet: replies in order, both queued."""
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(ENVELOPE + b"one\r\n.\r\n" + ENVELOPE + b"two\r\n.\r\nQUIT\r\n")
    assert t.value() == (OK3 + b"250 2.0.0 ok 1700000000 qp 100\r\n" + OK3 +
                         b"250 2.0.0 ok 1700000000 qp 101\r\n221 2.0.0 test.example\r\n")
    assert [body(w) for w in inj.committed] == [b"one\n", b"two\n"]
