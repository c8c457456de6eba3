"""
The POP3 transaction state (qmtwist/pop3/transaction.py, docs/behaviour/pop3.md 10.3) driven
command by command over a real Maildir in tmp_path: the replies, the marks, and the Maildir
changes that happen at QUIT and only then. Maildir work runs inline (C{maybeDeferred}).
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import Clock

from qmtwist.pop3.transaction import NO_MAILDIR, OK, SYNTAX, UNIMPLEMENTED, Transaction

NOW = 1_800_000_000.0
ONE = b"Subject: one\n\nfirst\n"
TWO = b"Subject: two\nX-A: b\n\nline 1\n.dot line\nline 3\n"
THREE = b"Subject: three\n\nno final newline"


def put(maildir: str, rel: str, data: bytes) -> str:
    path = os.path.join(maildir, rel)
    with open(path, "wb") as f:
        f.write(data)
    return path


def listing(maildir: str) -> dict[str, list[str]]:
    return {sub: sorted(os.listdir(os.path.join(maildir, sub))) for sub in ("tmp", "new", "cur")}


@pytest.fixture
def maildir(tmp_path) -> str:
    """Three messages, oldest first by the number their names start with, in new/ and cur/."""
    md = str(tmp_path / "Maildir")
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(md, sub))
    put(md, "cur/1000.A.host:2,S", ONE)
    put(md, "new/2000.B.host", TWO)
    put(md, "new/30000.C.host", THREE)
    put(md, "new/.hidden", b"not a message")
    return md


class Session:
    """One transaction: what it wrote, and whether it closed."""

    def __init__(self, maildir: str) -> None:
        self.out: list[bytes] = []
        self.closed = 0
        clock = Clock()
        clock.advance(NOW)
        self.t = Transaction(maildir, maybeDeferred, clock, self.out.append, self._close)
        started = self.t.start()
        assert started.called

    def _close(self) -> None:
        self.closed += 1

    def __call__(self, line: bytes) -> bytes:
        """Send one command line; return everything written in reply."""
        del self.out[:]
        verb, _, arg = line.partition(b" ")
        d = self.t.line(verb, arg)
        assert d is None or d.called, "a Maildir step did not finish inline"
        return b"".join(self.out)


def test_entering_lists_the_maildir_and_greets(maildir):
    s = Session(maildir)
    assert s.out == [OK]
    assert s.closed == 0
    assert [m.path for m in s.t.messages] == [
        "cur/1000.A.host:2,S", "new/2000.B.host", "new/30000.C.host"]


@pytest.mark.parametrize("remove", ["", "new", "cur"])
def test_entering_without_maildir_refuses_and_closes(tmp_path, remove):
    md = str(tmp_path / "Maildir")
    if remove:
        for sub in ("tmp", "new", "cur"):
            if sub != remove:
                os.makedirs(os.path.join(md, sub))
    s = Session(md)
    assert s.out == [NO_MAILDIR]
    assert s.closed == 1


def test_entering_removes_tmp_files_not_accessed_for_36_hours(maildir):
    old = put(maildir, "tmp/old", b"x")
    os.utime(old, (NOW - 36 * 3600 - 1, NOW))
    young = put(maildir, "tmp/young", b"x")
    os.utime(young, (NOW - 36 * 3600 + 60, NOW))
    Session(maildir)
    assert listing(maildir)["tmp"] == ["young"]


def test_stat_list_uidl(maildir):
    s = Session(maildir)
    sizes = (len(ONE), len(TWO), len(THREE))
    assert s(b"STAT") == b"+OK 3 %d\r\n" % sum(sizes)
    assert s(b"LIST") == b"+OK \r\n1 %d\r\n2 %d\r\n3 %d\r\n.\r\n" % sizes
    assert s(b"LIST 2") == b"+OK 2 %d\r\n" % len(TWO)
    # the UIDL is the name without new/ or cur/ and without anything from the first colon
    assert s(b"UIDL") == b"+OK \r\n1 1000.A.host\r\n2 2000.B.host\r\n3 30000.C.host\r\n.\r\n"
    assert s(b"UIDL 1") == b"+OK 1 1000.A.host\r\n"


def test_marked_messages_leave_stat_and_the_listings(maildir):
    s = Session(maildir)
    assert s(b"DELE 2") == OK
    assert s(b"STAT") == b"+OK 2 %d\r\n" % (len(ONE) + len(THREE))
    assert s(b"LIST") == b"+OK \r\n1 %d\r\n3 %d\r\n.\r\n" % (len(ONE), len(THREE))
    assert s(b"UIDL") == b"+OK \r\n1 1000.A.host\r\n3 30000.C.host\r\n.\r\n"
    for command in (b"LIST 2", b"UIDL 2", b"RETR 2", b"TOP 2 1", b"DELE 2"):
        assert s(command) == b"-ERR already deleted\r\n", command


NUMBER_ERRORS = [
    (b"x1", SYNTAX),
    (b"0", b"-ERR messages are counted from 1\r\n"),
    (b"4", b"-ERR not that many messages\r\n"),
    (b"0004", b"-ERR not that many messages\r\n"),
]


@pytest.mark.parametrize("line, reply", [
    (verb + b" " + arg, reply)
    for verb in (b"LIST", b"UIDL", b"RETR", b"TOP", b"DELE") for arg, reply in NUMBER_ERRORS
] + [(verb, SYNTAX) for verb in (b"RETR", b"TOP", b"DELE")])  # LIST, UIDL alone list all
def test_message_numbers(maildir, line, reply):
    s = Session(maildir)
    assert s(line) == reply
    assert s.t.deleted == set()


def test_message_number_is_the_leading_digits(maildir):
    s = Session(maildir)
    assert s(b"LIST 2abc") == b"+OK 2 %d\r\n" % len(TWO)
    assert s(b"UIDL 03") == b"+OK 3 30000.C.host\r\n"


def test_retr_sends_the_message_with_crlf_and_dot_stuffing(maildir):
    s = Session(maildir)
    assert s(b"RETR 2") == (b"+OK \r\nSubject: two\r\nX-A: b\r\n\r\nline 1\r\n..dot line\r\n"
                            b"line 3\r\n\r\n.\r\n")
    assert s(b"RETR 3 extra args") == (
        b"+OK \r\nSubject: three\r\n\r\nno final newline\r\n\r\n.\r\n")


def test_top_sends_the_header_and_n_body_lines(maildir):
    s = Session(maildir)
    assert s(b"TOP 2 2") == (b"+OK \r\nSubject: two\r\nX-A: b\r\n\r\nline 1\r\n..dot line\r\n"
                             b"\r\n.\r\n")
    assert s(b"TOP 2 0") == b"+OK \r\nSubject: two\r\nX-A: b\r\n\r\n\r\n.\r\n"
    assert s(b"TOP 2") == s(b"TOP 2 0")  # a missing n means 0
    assert s(b"TOP 2 many") == s(b"TOP 2 0")  # and so does a non-numeric one
    assert s(b"TOP 2 99") == s(b"RETR 2")


def test_a_message_gone_since_the_listing(maildir):
    s = Session(maildir)
    os.unlink(os.path.join(maildir, "new/2000.B.host"))
    assert s(b"RETR 2") == b"-ERR unable to open that message\r\n"
    assert s(b"TOP 2 1") == b"-ERR unable to open that message\r\n"
    assert s(b"LIST 2") == b"+OK 2 %d\r\n" % len(TWO)  # the listing is the session's


def test_dele_last_rset(maildir):
    s = Session(maildir)
    assert s(b"LAST") == b"+OK 0\r\n"
    assert s(b"DELE 3") == OK
    assert s(b"DELE 1") == OK
    assert s(b"LAST") == b"+OK 3\r\n"  # the highest number marked, not the latest
    assert s(b"RSET") == OK
    assert s(b"LAST") == b"+OK 0\r\n"
    assert s(b"STAT") == b"+OK 3 %d\r\n" % (len(ONE) + len(TWO) + len(THREE))
    assert s(b"RETR 1") == b"+OK \r\nSubject: one\r\n\r\nfirst\r\n\r\n.\r\n"
    assert listing(maildir)["cur"] == ["1000.A.host:2,S"]  # marks touch no file


@pytest.mark.parametrize("command", [
    b"CAPA", b"STLS", b"USER joe", b"PASS x", b"APOP joe x", b"X1", b"HELP"])
def test_anything_else_is_unimplemented(maildir, command):
    s = Session(maildir)
    assert s(command) == UNIMPLEMENTED


def test_noop(maildir):
    assert Session(maildir)(b"NOOP") == OK


def test_quit_unlinks_the_marked_and_moves_the_rest_of_new_to_cur(maildir):
    s = Session(maildir)
    s(b"DELE 1")
    s(b"RETR 2")
    assert s(b"QUIT") == OK
    assert s.closed == 1
    assert listing(maildir) == {"tmp": [], "new": [".hidden"],
                                "cur": ["2000.B.host:2,", "30000.C.host:2,"]}
    # the UIDLs stay the same across the move
    s2 = Session(maildir)
    assert s2(b"UIDL") == b"+OK \r\n1 2000.B.host\r\n2 30000.C.host\r\n.\r\n"


def test_quit_after_rset_deletes_nothing(maildir):
    s = Session(maildir)
    s(b"DELE 1")
    s(b"DELE 2")
    s(b"RSET")
    assert s(b"QUIT") == OK
    assert listing(maildir)["cur"] == ["1000.A.host:2,S", "2000.B.host:2,", "30000.C.host:2,"]


def test_quit_reports_a_marked_message_it_could_not_unlink(maildir):
    s = Session(maildir)
    s(b"DELE 1")
    s(b"DELE 3")
    os.unlink(os.path.join(maildir, "cur/1000.A.host:2,S"))  # gone meanwhile
    assert s(b"QUIT") == b"-ERR unable to unlink all deleted messages\r\n" + OK
    assert s.closed == 1
    assert listing(maildir) == {"tmp": [], "new": [".hidden"], "cur": ["2000.B.host:2,"]}


def test_without_quit_nothing_changes(maildir):
    before = listing(maildir)
    s = Session(maildir)
    s(b"DELE 1")
    s(b"DELE 2")
    s(b"RETR 3")
    del s  # the connection dropped, timed out or reached EOF
    assert listing(maildir) == before
