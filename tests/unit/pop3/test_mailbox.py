"""Maildir listing, transmission format and QUIT changes of qmail-pop3d (docs/behaviour/pop3.md 10.3)."""

from __future__ import annotations

import os

import pytest

from qmtwist.pop3 import mailbox
from qmtwist.pop3.mailbox import Message, NoMaildir


def makeMaildir(path) -> str:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    return str(path)


def put(maildir: str, rel: str, data: bytes) -> None:
    with open(os.path.join(maildir, rel), "wb") as f:
        f.write(data)


def test_scan_orders_by_leading_number_and_skips_dotfiles(tmp_path):
    md = makeMaildir(tmp_path / "Maildir")
    put(md, "new/200.M2P1.host", b"bb")
    put(md, "cur/30.M1P1.host:2,S", b"a")
    put(md, "new/1000.M3P1.host", b"ccc")
    put(md, "new/.hidden", b"x")
    put(md, "cur/.x", b"x")
    assert mailbox.scan(md, 0) == [
        Message("cur/30.M1P1.host:2,S", b"30.M1P1.host", 1),
        Message("new/200.M2P1.host", b"200.M2P1.host", 2),
        Message("new/1000.M3P1.host", b"1000.M3P1.host", 3),
    ]


def test_scan_removes_tmp_files_older_than_36_hours(tmp_path):
    md = makeMaildir(tmp_path / "Maildir")
    put(md, "tmp/old", b"x")
    put(md, "tmp/young", b"x")
    os.utime(os.path.join(md, "tmp/old"), (1000, 1000))
    os.utime(os.path.join(md, "tmp/young"), (1000 + 36 * 3600, 1000))
    mailbox.scan(md, 1001 + 36 * 3600)
    assert os.listdir(os.path.join(md, "tmp")) == ["young"]


@pytest.mark.parametrize("build", [
    lambda p: None,                                    # missing
    lambda p: os.makedirs(os.path.join(p, "new")),     # no cur
])
def test_scan_without_maildir(tmp_path, build):
    p = str(tmp_path / "Maildir")
    build(p)
    with pytest.raises(NoMaildir):
        mailbox.scan(p, 0)


@pytest.mark.parametrize("data, limit, sent", [
    (b"A: b\n\nbody\n", None, b"A: b\r\n\r\nbody\r\n\r\n.\r\n"),
    (b"A: b\n\n.dot\n..two\n.\n", None, b"A: b\r\n\r\n..dot\r\n...two\r\n..\r\n\r\n.\r\n"),
    (b"no newline at end", None, b"no newline at end\r\n\r\n.\r\n"),
    (b"", None, b"\r\n.\r\n"),
    (b"a\r\nb\n", None, b"a\r\r\nb\r\n\r\n.\r\n"),
    (b"\xff\xfe\x80\n\n\x00\x01\n", None, b"\xff\xfe\x80\r\n\r\n\x00\x01\r\n\r\n.\r\n"),
    (b"H: 1\nI: 2\n\nl1\nl2\nl3\n", 0, b"H: 1\r\nI: 2\r\n\r\n\r\n.\r\n"),
    (b"H: 1\nI: 2\n\nl1\nl2\nl3\n", 2, b"H: 1\r\nI: 2\r\n\r\nl1\r\nl2\r\n\r\n.\r\n"),
    (b"H: 1\n\nl1\n", 10, b"H: 1\r\n\r\nl1\r\n\r\n.\r\n"),
    (b"H: 1\nno body\n", 0, b"H: 1\r\nno body\r\n\r\n.\r\n"),
])
def test_transmit(data, limit, sent):
    assert mailbox.transmit(data, limit) == sent


def test_finish_unlinks_marked_and_moves_new_to_cur(tmp_path):
    md = makeMaildir(tmp_path / "Maildir")
    put(md, "new/1.a", b"1")
    put(md, "new/2.b", b"2")
    put(md, "cur/3.c:2,S", b"3")
    msgs = mailbox.scan(md, 0)
    assert mailbox.finish(md, msgs, {0}) is True
    assert sorted(os.listdir(os.path.join(md, "cur"))) == ["2.b:2,", "3.c:2,S"]
    assert os.listdir(os.path.join(md, "new")) == []
    assert [m.uid for m in mailbox.scan(md, 0)] == [b"2.b", b"3.c"]


def test_finish_reports_vanished_deleted_message(tmp_path):
    md = makeMaildir(tmp_path / "Maildir")
    put(md, "new/1.a", b"1")
    put(md, "new/2.b", b"2")
    msgs = mailbox.scan(md, 0)
    os.unlink(os.path.join(md, "new/1.a"))
    assert mailbox.finish(md, msgs, {0}) is False
    assert os.listdir(os.path.join(md, "cur")) == ["2.b:2,"]
