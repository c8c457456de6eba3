"""Maildir writer: names, failures, exactly once (docs/behaviour/local.md 4.8)."""

from __future__ import annotations

import os

import pytest

from qmtwist.errors import TemporaryFailure
from qmtwist.local import maildir


def _md(tmp_path):
    md = tmp_path / "Maildir"
    for s in ("tmp", "new", "cur"):
        (md / s).mkdir(parents=True)
    return md


def test_hostPart():
    assert maildir.hostPart("a/b:c") == b"a\\057b\\072c"


def test_deliverBytesAndName(tmp_path):
    md = _md(tmp_path)
    name = maildir.deliver(str(md), [b"R\n", b"D\n", b"msg\n"], now=lambda: 1000.25,
                           host=b"h")
    assert name.startswith(b"new/1000.M250000P%dQ" % os.getpid()) and name.endswith(b".h")
    assert (md / os.fsdecode(name)).read_bytes() == b"R\nD\nmsg\n"
    assert os.listdir(md / "tmp") == []


def test_keyedNameAndExactlyOnce(tmp_path):
    md = _md(tmp_path)
    first = maildir.deliver(str(md), [b"m\n"], key="111.22Q3", line=2, now=lambda: 5.5,
                            host=b"h")
    assert first == b"new/5.M500000K111.22Q3L2.h"
    # a repeat finds the copy in new/ and writes nothing
    again = maildir.deliver(str(md), [b"m\n"], key="111.22Q3", line=2, mayBeRepeat=True)
    assert again == first
    # the reader moved it to cur/ with flags: still found
    os.rename(md / "new" / "5.M500000K111.22Q3L2.h", md / "cur" / "5.M500000K111.22Q3L2.h:2,S")
    assert maildir.deliver(str(md), [b"m\n"], key="111.22Q3", line=2,
                           mayBeRepeat=True) == b"cur/5.M500000K111.22Q3L2.h:2,S"
    assert os.listdir(md / "new") == []
    # another line of the same delivery, or another recipient, is a new copy
    assert maildir.deliver(str(md), [b"m\n"], key="111.22Q3", line=12, mayBeRepeat=True,
                           host=b"h").startswith(b"new/")
    assert maildir.deliver(str(md), [b"m\n"], key="111.22Q30", line=2, mayBeRepeat=True,
                           host=b"h").startswith(b"new/")
    assert len(os.listdir(md / "new")) == 2


def test_crashAfterLinkBeforeUnlink(tmp_path):
    """A crash left the file in tmp/ and new/: the retry reports success, one copy."""
    md = _md(tmp_path)
    name = "7.M0K9.9Q0L1.h"
    (md / "tmp" / name).write_bytes(b"m\n")
    os.link(md / "tmp" / name, md / "new" / name)
    assert maildir.deliver(str(md), [b"m\n"], key="9.9Q0", line=1, mayBeRepeat=True) == (
        b"new/" + name.encode())
    assert os.listdir(md / "new") == [name]
    assert os.listdir(md / "tmp") == []


def test_repeatRemovesItsOwnLeftoverInTmp(tmp_path):
    """
    A crash before the link left this delivery's file in tmp/: the retry removes it and writes
    one copy; a leftover of another delivery (other recipient, other line, no key) is not its
    to remove.
    """
    md = _md(tmp_path)
    (md / "tmp" / "7.M0K9.9Q0L1.h").write_bytes(b"m")
    others = ["7.M0K9.9Q01L1.h", "7.M0K9.9Q0L11.h", "7.M0P55Q3.h"]
    for n in others:
        (md / "tmp" / n).write_bytes(b"x")
    name = maildir.deliver(str(md), [b"m\n"], key="9.9Q0", line=1, mayBeRepeat=True,
                           now=lambda: 8.0, host=b"h")
    assert name == b"new/8.M0K9.9Q0L1.h"
    assert sorted(os.listdir(md / "tmp")) == sorted(others)
    # a first attempt never looks: nothing of this key can be left over
    (md / "tmp" / "7.M0K9.9Q5L1.h").write_bytes(b"m")
    maildir.deliver(str(md), [b"m\n"], key="9.9Q5", line=1, now=lambda: 9.0, host=b"h")
    assert "7.M0K9.9Q5L1.h" in os.listdir(md / "tmp")


def test_hostileKeyCannotMakeAPath(tmp_path):
    md = _md(tmp_path)
    name = maildir.deliver(str(md), [b"m\n"], key="../../x/y", line=1, host=b"h")
    assert b"/" not in name[4:]
    assert os.listdir(tmp_path) == ["Maildir"]


def test_missingMaildir(tmp_path):
    with pytest.raises(TemporaryFailure) as e:
        maildir.deliver(str(tmp_path / "none"), [b"m"])
    assert e.value.text == "Unable to chdir to maildir. (#4.2.1)"
    (tmp_path / "half" / "new").mkdir(parents=True)
    with pytest.raises(TemporaryFailure) as e:
        maildir.deliver(str(tmp_path / "half"), [b"m"])
    assert e.value.text == "Temporary error on maildir delivery. (#4.3.0)"
    assert not os.path.exists(tmp_path / "half" / "tmp")


@pytest.fixture
def fsyncs(monkeypatch):
    """The descriptors maildir.deliver fsyncs (each still synced for real)."""
    calls: list[int] = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(maildir.os, "fsync", fsync)
    return calls


def test_aFileOnAWatchedFilesystemIsNotSyncedByItsWriter(tmp_path, fsyncs):
    """docs/behaviour/local.md 4.8.1: on a filesystem the caller syncs whole, neither the file
    nor new/ is synced by the writer; elsewhere the file is."""
    md = _md(tmp_path)
    dev = os.stat(md / "tmp").st_dev
    maildir.deliver(str(md), [b"m\n"], key="1.1Q1", line=1, syncNew=False,
                    lateDataOn=frozenset({dev}))
    assert fsyncs == []
    maildir.deliver(str(md), [b"m\n"], key="1.1Q2", line=1, syncNew=False,
                    lateDataOn=frozenset({dev + 1}))
    assert len(fsyncs) == 1  # the file; new/ is still the caller's
    # syncNew wins: a writer that syncs new/ itself syncs the file first
    maildir.deliver(str(md), [b"m\n"], key="1.1Q3", line=1, lateDataOn=frozenset({dev}))
    assert len(fsyncs) == 3
    assert sorted(os.listdir(md / "new")) and len(os.listdir(md / "new")) == 3


def test_anEarlierCopyCutShortIsWrittenAgain(tmp_path):
    """A crash after the link and before the sync can leave the name with part of the data
    (or none): the retry does not count it; it removes it and writes the whole message."""
    md = _md(tmp_path)
    body = [b"Return-Path: <a@b>\n", b"Delivered-To: x@y\n", b"hello\n"]
    first = maildir.deliver(str(md), body, key="7.7Q0", line=1, now=lambda: 1000.0)
    for t, cut in ((2000.0, b""), (3000.0, b"Return-Path: <a@b>\n")):
        (md / os.fsdecode(first)).write_bytes(cut)
        again = maildir.deliver(str(md), lambda: iter(body), key="7.7Q0", line=1,
                                mayBeRepeat=True, now=lambda: t)
        assert again != first
        assert os.listdir(md / "new") == [os.path.basename(os.fsdecode(again))]
        assert (md / os.fsdecode(again)).read_bytes() == b"".join(body)
        first = again
    # a whole copy counts, as before
    assert maildir.deliver(str(md), body, key="7.7Q0", line=1, mayBeRepeat=True) == first


def test_aLongerEarlierCopyDoesNotCount(tmp_path):
    md = _md(tmp_path)
    first = maildir.deliver(str(md), [b"m\n"], key="7.7Q1", line=1, now=lambda: 1000.0)
    (md / os.fsdecode(first)).write_bytes(b"m\nmore\n")
    again = maildir.deliver(str(md), [b"m\n"], key="7.7Q1", line=1, mayBeRepeat=True,
                            now=lambda: 2000.0)
    assert again != first and (md / os.fsdecode(again)).read_bytes() == b"m\n"


def test_aDifferentCopyInCurIsLeftToItsReader(tmp_path):
    """A copy a reader already moved to cur/ is not removed, even when it does not match; the
    delivery writes a whole copy into new/."""
    md = _md(tmp_path)
    first = maildir.deliver(str(md), [b"m\n"], key="7.7Q2", line=1)
    cur = md / "cur" / (os.path.basename(os.fsdecode(first)) + ":2,S")
    os.rename(md / os.fsdecode(first), cur)
    cur.write_bytes(b"")
    again = maildir.deliver(str(md), [b"m\n"], key="7.7Q2", line=1, mayBeRepeat=True)
    assert again.startswith(b"new/") and cur.exists()
    assert (md / os.fsdecode(again)).read_bytes() == b"m\n"


def test_distrustedEarlierCopyIsWrittenAgain(tmp_path):
    """After a failed sync the earlier copy may be cached but not on the disk: even a whole one
    in new/ is replaced."""
    md = _md(tmp_path)
    first = maildir.deliver(str(md), [b"m\n"], key="7.7Q3", line=1, now=lambda: 1000.0)
    again = maildir.deliver(str(md), [b"m\n"], key="7.7Q3", line=1, mayBeRepeat=True,
                            distrustEarlier=True, now=lambda: 2000.0)
    assert again != first and os.listdir(md / "new") == [os.path.basename(os.fsdecode(again))]


def test_sameContent(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abcdef")
    path = os.fsencode(p)
    assert maildir.sameContent(path, [b"abc", b"", b"def"])
    assert not maildir.sameContent(path, [b"abc"])
    assert not maildir.sameContent(path, [b"abcdefg"])
    assert not maildir.sameContent(path, [b"abcdeX"])
    assert not maildir.sameContent(os.fsencode(tmp_path / "none"), [b""])
