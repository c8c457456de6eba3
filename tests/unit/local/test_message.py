"""The queued message read in chunks: loop check and mbox quoting give the same answers as on the
whole message, at every chunk boundary (docs/behaviour/local.md 4.7, 4.9)."""

from __future__ import annotations

import os
import re

import pytest

from qmtwist.errors import TemporaryFailure
from qmtwist.local.message import CHUNK, QueuedMessage, headerHasLine, mboxQuoted

_FROM = re.compile(rb"^>*From ", re.M)


def wholeQuote(message: bytes) -> bytes:
    body = _FROM.sub(lambda m: b">" + m.group(0), message)
    return body + (b"\n" if body.endswith(b"\n") else b"\n\n")


def splits(data: bytes):
    """Every way of cutting data in two, and one-byte chunks."""
    yield [data]
    for i in range(len(data) + 1):
        yield [data[:i], data[i:]]
    yield [data[i:i + 1] for i in range(len(data))]


MESSAGES = [
    b"a\nFrom x\n>From y\n>>From z\nFromage\n From\n",
    b"From start\nbody\n",
    b"no final newline",
    b"ends with From",
    b"x\n>>>Fro",
    b"",
    b"\n\nFrom \n",
]


@pytest.mark.parametrize("message", MESSAGES)
def test_mboxQuotedAtEveryBoundary(message):
    for chunks in splits(message):
        assert b"".join(mboxQuoted(chunks)) == wholeQuote(message), chunks


DT = b"Delivered-To: joe@test.example\n"


@pytest.mark.parametrize("message, expected", [
    (b"Subject: x\n" + DT + b"\nbody\n", True),
    (b"Subject: x\n\n" + DT, False),  # in the body: not a loop
    (b"Delivered-To: joe@test.example.org\n\n", False),
    (b"X-" + DT + b"\n", False),
    (DT.rstrip(b"\n"), True),  # the whole message is that one line, no LF
    (b"\n" + DT, False),
])
def test_headerHasLineAtEveryBoundary(message, expected):
    for chunks in splits(message):
        assert headerHasLine(chunks, DT) is expected, chunks


def test_queuedMessageChunksAndRewind(tmp_path):
    p = tmp_path / "m"
    data = os.urandom(CHUNK * 2 + 17)
    p.write_bytes(data)
    with QueuedMessage.open(str(p)) as m:
        chunks = list(m.chunks())
        assert [len(c) for c in chunks] == [CHUNK, CHUNK, 17]
        assert b"".join(chunks) == data
        os.read(m.fd, 100)  # a program moved the shared offset
        assert os.lseek(m.rewound(), 0, os.SEEK_CUR) == 0
        assert b"".join(m.chunks()) == data  # pread: our reads never depend on the offset
    assert m.fd == -1


def test_unreadableMessageIsQmailLocalsTemporaryFailure(tmp_path):
    with pytest.raises(TemporaryFailure) as e:
        QueuedMessage.open(str(tmp_path / "missing"))
    assert e.value.text == "Unable to read message: No such file or directory. (#4.3.0)"
