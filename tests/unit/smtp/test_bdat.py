"""CHUNKING (qmtwist/smtp/bdat.py, docs/behaviour/smtp-extensions.md 20.4): BDAT on a StringTransport."""

from __future__ import annotations

import pytest

from qmtwist.smtp.bdat import ChunkSection, parseBdat
from qmtwist.smtp.data import BARE_LF, MORE
from qmtwist.smtp.state import State
from tests.unit.smtp.helpers import FakeInjector, FakeWriter, makeControl, makeSession

ENV = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<bob@test.example>\r\n"
OK2 = b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n"
QUEUED = b"250 2.0.0 ok 1700000000 qp 100\r\n"


def body(writer) -> bytes:
    """The stored message without the Received line the server writes first (two lines)."""
    return writer.data.split(b"\n", 2)[2]


@pytest.mark.parametrize("arg, parsed", [
    (b"0 LAST", (0, True)), (b"10", (10, False)), (b"7 last", (7, True)),
    (b"  12   LAST ", (12, True)), (b"", None), (b"x", None), (b"-1", None), (b"1 LASTX", None),
    (b"1 LAST more", None), (b"9" * 19, None), (b"9" * 18, (10 ** 18 - 1, False)),
])
def test_parseBdat(arg, parsed):
    assert parseBdat(arg) == parsed


def test_a_chunk_with_crlf_dot_crlf_inside_is_one_message():
    proto, t, inj, _ = makeSession()
    t.clear()
    chunk = b"Subject: x\r\n\r\nline one\r\n.\r\nline three\r\n..two dots\r\n"
    proto.dataReceived(ENV + b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
    assert t.value() == OK2 + QUEUED + b"250 2.0.0 ok\r\n"
    [w] = inj.writers
    assert body(w) == b"Subject: x\n\nline one\n.\nline three\n..two dots\n"
    assert w.committed == (b"a@b.example", [b"bob@test.example"])


def test_chunks_split_anywhere_give_the_same_message():
    """CR LF split across chunks and packets; every byte value passes (binary-safe but for LF)."""
    data = b"H: v\r\n\r\n" + bytes(b for b in range(256) if b not in (10, 13)) + b"\r\nend\r\n"
    want = data.replace(b"\r\n", b"\n")
    cut = data.index(b"\r\n", 10) + 1  # the first chunk ends between CR and LF
    stream = (ENV + b"BDAT %d\r\n" % cut + data[:cut] +
              b"BDAT %d LAST\r\n" % (len(data) - cut) + data[cut:])
    proto, t, inj, _ = makeSession()
    t.clear()
    for i in range(len(stream)):
        proto.dataReceived(stream[i:i + 1])
    assert t.value() == OK2 + b"250 2.0.0 ok %d bytes\r\n" % cut + QUEUED
    assert body(inj.writers[0]) == want


def test_a_bare_cr_is_kept_and_a_final_partial_line_gets_its_lf():
    proto, t, inj, _ = makeSession()
    t.clear()
    chunk = b"a\rb\r\nno newline"
    proto.dataReceived(ENV + b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    assert t.value() == OK2 + QUEUED
    assert body(inj.writers[0]) == b"a\rb\nno newline\n"


def test_bare_lf_in_a_chunk_is_refused_as_in_data():
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(ENV + b"BDAT 6\r\nhi\nyo\r\nNOOP\r\n")
    assert t.value() == OK2 + b"451 4.5.2 See http://pobox.com/~djb/docs/smtplf.html.\r\n"
    assert t.disconnecting and proto.exitStatus == 256
    assert inj.writers[0].aborted and inj.committed == []


def test_bdat_then_data_is_refused_and_nothing_is_queued():
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(ENV + b"BDAT 4\r\nab\r\nDATA\r\nRCPT TO:<bob@test.example>\r\n")
    assert t.value() == (OK2 + b"250 2.0.0 ok 4 bytes\r\n"
                         b"503 5.5.1 sorry, BDAT and DATA may not be mixed (#5.5.1)\r\n"
                         b"503 5.5.1 MAIL first (#5.5.1)\r\n")
    assert inj.writers[0].aborted and inj.committed == []
    assert proto.state is State.GREETED


def test_refused_bdat_has_its_chunk_discarded():
    """The chunk of a BDAT without MAIL or RCPT is read and dropped, never run as commands."""
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(b"BDAT 12 LAST\r\nQUIT\r\nQUIT\r\nNOOP\r\n"
                       b"MAIL FROM:<a@b>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    assert t.value() == (b"503 5.5.1 MAIL first (#5.5.1)\r\n250 2.0.0 ok\r\n250 2.1.0 ok\r\n"
                         b"503 5.5.1 RCPT first (#5.5.1)\r\n250 2.0.0 ok\r\n")
    assert not t.disconnecting and inj.writers == []


def test_bdat_syntax_error():
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(b"BDAT\r\nBDAT x LAST\r\n")
    assert t.value() == b"501 5.5.4 syntax error in BDAT (#5.5.4)\r\n" * 2


def test_databytes_counts_chunks_and_refuses_at_the_chunk():
    proto, t, inj, _ = makeSession(control=makeControl(databytes=10))
    t.clear()
    proto.dataReceived(ENV + b"BDAT 6\r\n12345\n")
    proto.dataReceived(b"BDAT 8\r\n123456\r\nBDAT 2 LAST\r\nxy")
    assert t.value() == (OK2 + b"451 4.5.2 See http://pobox.com/~djb/docs/smtplf.html.\r\n")
    proto, t, inj, _ = makeSession(control=makeControl(databytes=10))
    t.clear()
    proto.dataReceived(ENV + b"BDAT 7\r\n12345\r")  # the chunk's CR LF split across packets
    proto.dataReceived(b"\nBDAT 8\r\n123456\r\nBDAT 2 LAST\r\nxy")
    assert t.value() == (OK2 + b"250 2.0.0 ok 7 bytes\r\n"  # 6 bytes stored, then 7 more
                         b"552 5.3.4 sorry, that message size exceeds my databytes limit (#5.3.4)\r\n"
                         b"503 5.5.1 MAIL first (#5.5.1)\r\n")
    assert inj.writers[0].aborted and inj.committed == []


def test_bdat_last_commit_waits_and_pipelined_commands_wait_too():
    inj = FakeInjector()
    inj.hold = True
    proto, t, inj, _ = makeSession(injector=inj)
    t.clear()
    proto.dataReceived(ENV + b"BDAT 3 LAST\r\nx\r\nNOOP\r\n")
    assert t.value() == OK2 and proto.state is State.COMMIT and t.producerState == "paused"
    from tests.unit.smtp.helpers import FakeQueued
    inj.pending[0].callback(FakeQueued(1, 100, 1700000000.0))
    assert t.value() == OK2 + QUEUED + b"250 2.0.0 ok\r\n"


def test_rset_and_mail_drop_a_chunked_message():
    proto, t, inj, _ = makeSession()
    t.clear()
    proto.dataReceived(ENV + b"BDAT 3\r\nab\nRSET\r\n")
    # "ab\n" has a bare LF: closed. A clean chunk, then RSET:
    proto, t, inj, _ = makeSession()
    proto.dataReceived(ENV + b"BDAT 4\r\nab\r\nRSET\r\n" + ENV + b"BDAT 4 LAST\r\ncd\r\n")
    assert inj.writers[0].aborted and inj.writers[0].committed is None
    assert body(inj.writers[1]) == b"cd\n"
    proto, t, inj, _ = makeSession()
    proto.dataReceived(ENV + b"BDAT 4\r\nab\r\n" + ENV + b"BDAT 0 LAST\r\n")
    assert inj.writers[0].aborted and body(inj.writers[1]) == b""


def test_hops_are_counted_in_chunks():
    proto, t, inj, _ = makeSession()
    t.clear()
    chunk = b"Received: x\r\n" * 100 + b"\r\nbody\r\n"
    proto.dataReceived(ENV + b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    assert t.value() == OK2 + b"554 5.4.6 too many hops, this message is looping (#5.4.6)\r\n"
    assert inj.committed == []


def test_chunk_section_keeps_at_most_a_line_start():
    """Memory: a 1 MB line in one feed is written out, only a CR kept back."""
    w = FakeWriter(FakeInjector(), 1)
    s = ChunkSection(w, 0)
    assert s.feed(b"x" * 1_000_000 + b"\r") == MORE
    assert len(s._partial) == 1 and w.size == 1_000_000
    assert s.feed(b"\nnext") == MORE and s._partial == b"next"
    assert s.feed(b"\n") == BARE_LF
