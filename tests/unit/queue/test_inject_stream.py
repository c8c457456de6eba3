"""
The store's streaming way in (docs/behaviour/queue.md 5.3), as qmail-queue uses it: the message
is written chunk by chunk, the envelope asked for only after the last chunk, and any error on
the way leaves nothing in the queue.
"""

from __future__ import annotations

import os

import pytest

from qmtwist.errors import QueueError
from qmtwist.queue.store import injectStream, readChunks, writeMessage


def queueFiles(layout) -> list[str]:
    out = []
    for top in ("pid", "mess", "intd", "todo"):
        for dirpath, _dirs, files in os.walk(layout.sub(top)):
            out.extend(os.path.join(dirpath, f) for f in files)
    return out


def test_envelope_is_read_after_the_message(home):
    order: list[str] = []

    def chunks():
        for c in (b"Subject: s\n", b"\nbody\n"):
            order.append("chunk")
            yield c

    def envelope():
        order.append("envelope")
        return b"a@x.example", [b"b@y.example"]

    q = injectStream(home.queue, chunks(), envelope, b"by uid 0", uid=0, qp=7)
    assert order == ["chunk", "chunk", "envelope"]
    with open(home.queue.mess(q.id), "rb") as f:
        assert f.read().endswith(b"Subject: s\n\nbody\n")
    assert os.path.exists(home.queue.todo(q.id)) and q.qp == 7


def test_a_read_error_leaves_nothing(home):
    def chunks():
        yield b"Subject: s\n\n"
        raise QueueError(54, "read error")

    with pytest.raises(QueueError) as e:
        injectStream(home.queue, chunks(), lambda: (b"", [b"b@y.example"]), b"by uid 0")
    assert e.value.code == 54 and queueFiles(home.queue) == []


def test_a_bad_envelope_leaves_nothing(home):
    with pytest.raises(QueueError):
        writeMessage(home.queue, [b"x\n"], lambda: (b"a\nb", [b"c@d"]), b"by uid 0", 0, 1, 0.0)
    assert queueFiles(home.queue) == []


def test_readChunks_reads_a_descriptor_to_the_end(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"x" * 10)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert list(readChunks(fd, 4)) == [b"xxxx", b"xxxx", b"xx"]
    finally:
        os.close(fd)
