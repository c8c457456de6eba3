"""
Finding and reading a user's C{.qmail} file (qmail-local, docs/behaviour/local.md 3.6, 4.1, 4.3).

Everything here is synchronous and runs with the user's privileges: on a thread of the daemon
(not root) or in the per-user helper child (root). Names derived from a recipient address reach
the file system only through L{safeName}, which refuses C{/}, NUL, C{..} and names over 255 bytes
(such a candidate is treated as nonexistent) [qmtwist, stricter than qmail].
"""

from __future__ import annotations

import enum
import os
import stat

from attrs import frozen

from qmtwist.errors import PermanentFailure, TemporaryFailure

NO_MAILBOX = "Sorry, no mailbox here by that name. (#5.1.1)"
BLANK_FIRST = "Uh-oh: first line of .qmail file is blank. (#4.2.1)"


class Kind(enum.Enum):
    PROGRAM = "program"
    MBOX = "mbox"
    MAILDIR = "maildir"
    FORWARD = "forward"


@frozen
class Instruction:
    """
    One delivery line.

    @ivar value: the program text (without C{|}), the path as written, or the forward address.
    @ivar lineno: line number in its file, 1-based (for the log and Maildir keys).
    """

    kind: Kind
    value: bytes
    lineno: int


@frozen
class DotQmail:
    """
    The instructions that apply to one delivery.

    @ivar path: the chosen file, or C{None} when C{defaultdelivery} applies.
    @ivar default: C{DEFAULT}'s value, or C{None} when it is unset.
    """

    path: str | None
    default: bytes | None
    instructions: tuple[Instruction, ...]
    forwardOnly: bool = False


def safeName(name: bytes) -> bool:
    """Whether a candidate file name may be looked up in the home directory at all."""
    return (0 < len(name) <= 255 and b"/" not in name and b"\0" not in name
            and b".." not in name and b"\n" not in name)


def extName(ext: bytes) -> bytes:
    """C{ext} as it appears in a file name: dots become colons, ASCII upper case lower (FAQ 4.6)."""
    return ext.replace(b".", b":").lower()


def candidates(dash: bytes, ext: bytes) -> list[tuple[bytes, bytes | None]]:
    """
    The C{.qmail} names to try, in order, each with its C{DEFAULT} value (C{None}: unset).
    """
    if not dash:
        return [(b".qmail", None)]
    e = extName(ext)
    out: list[tuple[bytes, bytes | None]] = [(b".qmail" + dash + e, None)]
    for i in range(len(e) - 1, -1, -1):
        if e[i:i + 1] == b"-":
            out.append((b".qmail" + dash + e[:i + 1] + b"default", ext[i + 1:]))
    out.append((b".qmail" + dash + b"default", ext))
    return out


def parse(data: bytes) -> tuple[list[Instruction], bool]:
    """
    Parse a C{.qmail} text (docs/behaviour/local.md 4.1).

    @return: the instructions and whether a C{+list} line made the file forward-only.
    @raise TemporaryFailure: the first line is blank.
    """
    lines = data.split(b"\n")
    if lines and lines[-1] == b"" and data.endswith(b"\n"):
        lines.pop()
    out: list[Instruction] = []
    forwardOnly = False
    for n, raw in enumerate(lines, 1):
        line = raw.rstrip(b" \t")
        if not line:
            if n == 1:
                raise TemporaryFailure(BLANK_FIRST)
            continue
        c = line[:1]
        if c == b"#":
            continue
        if c == b"|":
            out.append(Instruction(Kind.PROGRAM, line[1:], n))
        elif c in (b"/", b"."):
            kind = Kind.MAILDIR if line.endswith(b"/") else Kind.MBOX
            out.append(Instruction(kind, line, n))
        elif c == b"&":
            out.append(Instruction(Kind.FORWARD, line[1:], n))
        elif c == b"+":
            if line == b"+list":
                forwardOnly = True
        else:
            out.append(Instruction(Kind.FORWARD, line, n))
    return out, forwardOnly


def _reason(e: OSError) -> str:
    return (e.strerror or str(e)).lower()


def checkHome(home: str) -> None:
    """
    The home directory checks of docs/behaviour/local.md 4.3.

    @raise TemporaryFailure: with qmail's text.
    """
    try:
        st = os.stat(home)
    except OSError as e:
        raise TemporaryFailure(f"Unable to stat home directory: {_reason(e)}. (#4.3.0)")
    if st.st_mode & 0o002:
        raise TemporaryFailure("Uh-oh: home directory is writable. (#4.7.0)")
    if st.st_mode & stat.S_ISVTX:
        raise TemporaryFailure(
            "Home directory is sticky: user is editing his .qmail file. (#4.2.1)")
    if not stat.S_ISDIR(st.st_mode) or not os.access(home, os.X_OK):
        raise TemporaryFailure(f"Unable to switch to {home}: access denied. (#4.3.0)")


def _open(home: str, name: bytes) -> tuple[int, os.stat_result] | None:
    """Open C{home/name} if it is a regular file; C{None} when missing or not regular."""
    path = os.path.join(os.fsencode(home), name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise TemporaryFailure(
            f"Unable to open {os.fsdecode(name)}: {_reason(e)}. (#4.3.0)")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def exists(home: str, name: bytes) -> bool:
    """Whether a checked name exists in the home (for the C{-owner} rule)."""
    if not safeName(name):
        return False
    return os.path.exists(os.path.join(os.fsencode(home), name))


def locate(home: str, dash: bytes, ext: bytes, defaultDelivery: bytes) -> DotQmail:
    """
    Choose and read the C{.qmail} file for (dash, ext) in C{home}; apply docs/behaviour/local.md 4.3's file
    checks.

    @param defaultDelivery: the text of C{control/defaultdelivery}.
    @raise TemporaryFailure: an unreadable candidate, a writable file, the x-bit rule.
    @raise PermanentFailure: no candidate exists (with a dash).
    """
    for name, default in candidates(dash, ext):
        if not safeName(name):
            continue
        found = _open(home, name)
        if found is None:
            continue
        fd, st = found
        try:
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as e:
            raise TemporaryFailure(f"Unable to read {os.fsdecode(name)}: {_reason(e)}. (#4.3.0)")
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if not data:
            return _default(defaultDelivery, default)
        if st.st_mode & 0o002:
            raise TemporaryFailure("Uh-oh: .qmail file is writable. (#4.7.0)")
        instructions, forwardOnly = parse(data)
        if st.st_mode & stat.S_IXUSR:
            forwardOnly = True
        if forwardOnly:
            kinds = {i.kind for i in instructions}
            if Kind.PROGRAM in kinds:
                raise TemporaryFailure("Uh-oh: .qmail has prog delivery but has x bit set. (#4.7.0)")
            if kinds & {Kind.MBOX, Kind.MAILDIR}:
                raise TemporaryFailure("Uh-oh: .qmail has file delivery but has x bit set. (#4.7.0)")
        return DotQmail(os.path.join(home, os.fsdecode(name)), default, tuple(instructions),
                        forwardOnly)
    if not dash:
        return _default(defaultDelivery, None)
    raise PermanentFailure(NO_MAILBOX)


def _default(text: bytes, default: bytes | None) -> DotQmail:
    instructions, _ = parse(text) if text.strip() else ([], False)
    return DotQmail(None, default, tuple(instructions))


def ownerFiles(home: str, dash: bytes, ext: bytes) -> tuple[bool, bool]:
    """Whether C{.qmail⟨dash⟩⟨ext′⟩-owner} and C{...-owner-default} exist (docs/behaviour/local.md 4.6)."""
    base = b".qmail" + dash + extName(ext) + b"-owner"
    return exists(home, base), exists(home, base + b"-default")
