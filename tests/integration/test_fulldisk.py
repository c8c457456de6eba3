"""
A full disk, for real: the home on a tiny tmpfs. qmail-queue exits 53 and leaves nothing half
queued; the daemon's injector refuses the message and the queue stays consistent.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.threads import deferToThread
import pytest_twisted

from qmtwist.errors import QueueError
from qmtwist.home import Home, setup
from qmtwist.queue.commit import Injector
from tests.integration.test_daemon import _envelopeOnFd1, queueEmpty
from tests.support import until


@pytest.fixture
def tinyHome(tmp_path):
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        home = Home(str(mnt / "home"))
        setup(home, me="test.example")
        yield home
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def _leftovers(home: Home) -> list[str]:
    return [d for d in ("pid", "intd", "todo") if os.listdir(home.queue.sub(d))]


def test_qmail_queue_on_full_disk_exits_53_and_leaves_nothing(tinyHome):
    big = b"Subject: big\n\n" + b"x" * 1023 + b"\n"
    big = big * 1024  # 1 MB on a 512 KB filesystem
    r = subprocess.run([os.path.join(tinyHome.bin, "qmail-queue")], input=big,
                       stderr=subprocess.PIPE, **_envelopeOnFd1(b"Fa@b\0Tc@test.example\0\0"))
    assert r.returncode == 53
    assert queueEmpty(tinyHome)
    assert _leftovers(tinyHome) == []
    # Space is back: a small message is queued normally afterwards.
    r = subprocess.run([os.path.join(tinyHome.bin, "qmail-queue")], input=b"Subject: s\n\nx\n",
                       stderr=subprocess.PIPE, **_envelopeOnFd1(b"Fa@b\0Tc@test.example\0\0"))
    assert r.returncode == 0, r.stderr
    assert len(os.listdir(tinyHome.queue.sub("todo"))) == 1


@pytest_twisted.inlineCallbacks
def test_daemon_injector_on_full_disk_refuses_with_53(tinyHome):
    injector = Injector(tinyHome.queue, tinyHome.control, reactor, deferToThread)
    writer = injector.newMessage(b"from network")
    with pytest.raises(QueueError) as e:
        for _ in range(1024):
            writer.write(b"y" * 1024)
    assert e.value.code == 53
    assert e.value.text == "qq write error or disk full (#4.3.0)"
    writer.abort()  # the files go on a thread
    yield ensureDeferred(until(lambda: queueEmpty(tinyHome) and _leftovers(tinyHome) == [],
                               "the aborted message's files removed"))
    q = yield injector.inject(b"a@b", [b"c@test.example"], b"Subject: s\n\nx\n", b"by uid 0")
    assert os.listdir(tinyHome.queue.sub("todo")) == [str(q.id)]
