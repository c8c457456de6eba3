"""The .qmail lookup chain, line types and file checks (docs/behaviour/local.md 3.6, 4.1, 4.3)."""

from __future__ import annotations

import os

import pytest

from qmtwist.errors import PermanentFailure, TemporaryFailure
from qmtwist.local import dotqmail
from qmtwist.local.dotqmail import Instruction, Kind


@pytest.mark.parametrize("ext,names", [
    (b"", [b".qmail-", b".qmail-default"]),
    (b"a", [b".qmail-a", b".qmail-default"]),
    (b"a-b", [b".qmail-a-b", b".qmail-a-default", b".qmail-default"]),
    (b"a-b-c", [b".qmail-a-b-c", b".qmail-a-b-default", b".qmail-a-default", b".qmail-default"]),
    (b"a-", [b".qmail-a-", b".qmail-a-default", b".qmail-default"]),
    (b"P.D.Q.Bach", [b".qmail-p:d:q:bach", b".qmail-default"]),
])
def test_candidates(ext, names):
    assert [n for n, _ in dotqmail.candidates(b"-", ext)] == names


def test_candidatesNoDash():
    assert dotqmail.candidates(b"", b"") == [(b".qmail", None)]


def test_defaultValues():
    c = dict(dotqmail.candidates(b"-", b"a-B.c"))
    assert c[b".qmail-a-b:c"] is None
    assert c[b".qmail-a-default"] == b"B.c"
    assert c[b".qmail-default"] == b"a-B.c"


def test_parseLineTypes():
    text = (b"# comment\n|prog arg  \t\n./mbox\n/abs/Maildir/\n&fw@x\nbare@y\n+ignored\n\n"
            b"./Maildir/\n")
    ins, fo = dotqmail.parse(text)
    assert not fo
    assert ins == [
        Instruction(Kind.PROGRAM, b"prog arg", 2), Instruction(Kind.MBOX, b"./mbox", 3),
        Instruction(Kind.MAILDIR, b"/abs/Maildir/", 4), Instruction(Kind.FORWARD, b"fw@x", 5),
        Instruction(Kind.FORWARD, b"bare@y", 6), Instruction(Kind.MAILDIR, b"./Maildir/", 9)]


def test_parsePlusList():
    ins, fo = dotqmail.parse(b"a@b\n+list\n")
    assert fo and ins == [Instruction(Kind.FORWARD, b"a@b", 1)]


def test_blankFirstLine():
    with pytest.raises(TemporaryFailure) as e:
        dotqmail.parse(b"\n&a@b\n")
    assert e.value.text == "Uh-oh: first line of .qmail file is blank. (#4.2.1)"


@pytest.mark.parametrize("name", [
    b".qmail-../x", b".qmail-a/b", b".qmail-a\0b", b".qmail-" + b"x" * 250, b".qmail-a\nb"])
def test_unsafeNames(name):
    assert not dotqmail.safeName(name)


def _home(tmp_path, files):
    h = tmp_path / "h"
    h.mkdir(mode=0o755)
    for name, (data, mode) in files.items():
        p = h / name
        p.write_bytes(data)
        os.chmod(p, mode)
    return str(h)


def test_locateChain(tmp_path):
    home = _home(tmp_path, {".qmail-a-default": (b"&x@y\n", 0o644),
                            ".qmail-default": (b"&z@y\n", 0o644)})
    dq = dotqmail.locate(home, b"-", b"a-B.c", b"./Maildir/\n")
    assert dq.path == os.path.join(home, ".qmail-a-default")
    assert dq.default == b"B.c"
    assert dq.instructions == (Instruction(Kind.FORWARD, b"x@y", 1),)
    dq = dotqmail.locate(home, b"-", b"other", b"")
    assert dq.default == b"other" and dq.instructions[0].value == b"z@y"


def test_locateMissingAndEmpty(tmp_path):
    home = _home(tmp_path, {".qmail-empty": (b"", 0o644)})
    with pytest.raises(PermanentFailure) as e:
        dotqmail.locate(home, b"-", b"nothing", b"./Maildir/\n")
    assert e.value.text == "Sorry, no mailbox here by that name. (#5.1.1)"
    dq = dotqmail.locate(home, b"-", b"empty", b"./Maildir/\n")
    assert dq.path is None and dq.instructions == (Instruction(Kind.MAILDIR, b"./Maildir/", 1),)
    dq = dotqmail.locate(home, b"", b"", b"./Mailbox\n")
    assert dq.instructions == (Instruction(Kind.MBOX, b"./Mailbox", 1),)


def test_locateDirectoryIsNotAFile(tmp_path):
    home = _home(tmp_path, {".qmail-default": (b"&d@x\n", 0o644)})
    os.mkdir(os.path.join(home, ".qmail-dir"))
    dq = dotqmail.locate(home, b"-", b"dir", b"")
    assert dq.instructions[0].value == b"d@x"


def test_hostileExtNeverLeavesHome(tmp_path):
    outside = tmp_path / ".qmail-x"
    outside.write_bytes(b"|evil\n")
    home = _home(tmp_path, {".qmail-default": (b"&safe@x\n", 0o644)})
    for ext in (b"../.qmail-x", b"/../../x", b"x\0y", b"x" * 1000, b"a\nb", b"..", b"../"):
        dq = dotqmail.locate(home, b"-", ext, b"")
        assert dq.instructions == (Instruction(Kind.FORWARD, b"safe@x", 1),), ext


@pytest.mark.parametrize("mode,content,text", [
    (0o646, b"&a@b\n", "Uh-oh: .qmail file is writable. (#4.7.0)"),
    (0o744, b"|prog\n", "Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)"),
    (0o744, b"./mbox\n", "Uh-oh: .qmail has file delivery but has x bit set. (#4.7.0)"),
])
def test_fileChecks(tmp_path, mode, content, text):
    home = _home(tmp_path, {".qmail-l": (content, mode)})
    with pytest.raises(TemporaryFailure) as e:
        dotqmail.locate(home, b"-", b"l", b"")
    assert e.value.text == text


def test_xBitForwardOnlyAllowed(tmp_path):
    home = _home(tmp_path, {".qmail-l": (b"a@b\n", 0o744), ".qmail-g": (b"a@b\n", 0o664)})
    assert dotqmail.locate(home, b"-", b"l", b"").forwardOnly
    assert dotqmail.locate(home, b"-", b"g", b"").instructions  # group-writable is accepted


def test_plusListForbidsPrograms(tmp_path):
    home = _home(tmp_path, {".qmail-l": (b"+list\n|prog\n", 0o644)})
    with pytest.raises(TemporaryFailure):
        dotqmail.locate(home, b"-", b"l", b"")


@pytest.mark.parametrize("mode,text", [
    (0o757, "Uh-oh: home directory is writable. (#4.7.0)"),
    (0o1755, "Home directory is sticky: user is editing his .qmail file. (#4.2.1)"),
])
def test_homeChecks(tmp_path, mode, text):
    h = tmp_path / "h"
    h.mkdir()
    os.chmod(h, mode)
    with pytest.raises(TemporaryFailure) as e:
        dotqmail.checkHome(str(h))
    assert e.value.text == text


def test_homeMissing(tmp_path):
    with pytest.raises(TemporaryFailure) as e:
        dotqmail.checkHome(str(tmp_path / "none"))
    assert e.value.text == "Unable to stat home directory: no such file or directory. (#4.3.0)"


def test_ownerFiles(tmp_path):
    home = _home(tmp_path, {".qmail-sos-owner": (b"", 0o644)})
    assert dotqmail.ownerFiles(home, b"-", b"SOS") == (True, False)
    (tmp_path / "h" / ".qmail-sos-owner-default").write_bytes(b"")
    assert dotqmail.ownerFiles(home, b"-", b"sos") == (True, True)
    assert dotqmail.ownerFiles(home, b"-", b"../x") == (False, False)
