"""An ordinary user injects through the daemon's socket when queue/ is not writable (docs/behaviour/queue.md
5.3).

The test stands in for the daemon's side of HOME/run/qmail-queue.sock with a small server that
speaks the protocol documented in L{qmtwist.tools.queueclient} and reads the peer's uid from
SO_PEERCRED. The sending program runs as a real unprivileged account made with useradd.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading

import pytest
import pytest_twisted

from qmtwist.home import Home, setup
from tests.integration.tools.conftest import ROOT

USER = "qmtwisttest"
PYTHON = "/usr/bin/python3"


def _account() -> pwd.struct_passwd:
    if os.getuid() != 0:
        pytest.skip("needs root to create and become an unprivileged account")
    if not shutil.which("useradd") or not shutil.which("setpriv"):
        pytest.skip("useradd or setpriv is missing")
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", USER], check=True)
        return pwd.getpwnam(USER)


@pytest.fixture
def world(tmp_path_factory):
    """A home and a copy of attrs that another account can read (tmp_path is 0700)."""
    pw = _account()
    if not os.path.exists(PYTHON) or subprocess.run(
            [PYTHON, "-c", f"import sys; sys.exit(sys.version_info[:2] != {sys.version_info[:2]})"]
    ).returncode:
        pytest.skip(f"{PYTHON} is missing or not Python {sys.version_info[:2]}")
    top = tempfile.mkdtemp(prefix="qmtwist-unpriv-")
    os.chmod(top, 0o755)
    deps = os.path.join(top, "deps")
    import attr
    import attrs

    for module in (attr, attrs):
        src = os.path.dirname(module.__file__)
        shutil.copytree(src, os.path.join(deps, os.path.basename(src)))
    home = Home(os.path.join(top, "home"))
    setup(home, me="test.example")
    subprocess.run(["chmod", "-R", "a+rX", deps], check=True)
    for path in (home.path, home.bin, home.run, home.control):
        os.chmod(path, 0o755)
    yield home, pw, deps
    shutil.rmtree(top)


def _serve(sock: socket.socket, got: list) -> None:
    conn, _ = sock.accept()
    cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", cred)
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\0\0,"):
            break
    got.append((uid, data))
    conn.sendall(b"0\n")
    conn.close()


def _send(home: Home, pw, deps: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
         PYTHON, os.path.join(home.bin, "sendmail"), "-t"],
        input=b"To: friend@x.y\nSubject: from a user\n\nhello\n", capture_output=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{ROOT}:{deps}", "USER": USER},
        timeout=60)


def test_userSendsThroughDaemonSocket(world):
    home, pw, deps = world
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(home.queueSocket)
    os.chmod(home.queueSocket, 0o777)
    server.listen(1)
    got: list = []
    t = threading.Thread(target=_serve, args=(server, got), daemon=True)
    t.start()
    try:
        r = _send(home, pw, deps)
    finally:
        t.join(30)
        server.close()
    assert (r.returncode, r.stderr) == (0, b"")
    [(uid, data)] = got
    assert uid == pw.pw_uid
    envelope = f"F{USER}@test.example\0Tfriend@x.y\0\0".encode()
    assert data.endswith(b"%d:%s," % (len(envelope), envelope))
    assert b"\nSubject: from a user\n\nhello\n" in data
    assert os.listdir(home.queue.sub("todo")) == []


def test_userWithoutDaemon(world):
    home, pw, deps = world
    r = _send(home, pw, deps)
    assert (r.returncode, r.stderr) == (
        111, b"qmail-inject: fatal: qq trouble creating files in queue (#4.3.0)\n")
    assert os.listdir(home.queue.sub("todo")) == []


@pytest_twisted.ensureDeferred
async def test_userThroughTheDaemonsQueueSocket(world):
    """Client and the daemon's own socket server (qmtwist.queue.socketserver), no delivery."""
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread

    from qmtwist.queue.commit import Injector
    from qmtwist.queue.socketserver import QueueSocketFactory

    home, pw, deps = world
    injector = Injector(home.queue, home.control, reactor, deferToThread)
    port = reactor.listenUNIX(home.queueSocket, QueueSocketFactory(injector), mode=0o666)
    try:
        r = await deferToThread(_send, home, pw, deps)
    finally:
        await port.stopListening()
    assert (r.returncode, r.stderr) == (0, b"")
    [name] = os.listdir(home.queue.sub("todo"))
    with open(home.queue.todo(int(name)), "rb") as f:
        todo = f.read()
    assert todo.startswith(b"u%d\0p" % pw.pw_uid)
    assert todo.split(b"\0", 2)[2] == f"F{USER}@test.example\0Tfriend@x.y\0".encode()
    with open(home.queue.mess(int(name)), "rb") as f:
        mess = f.read()
    assert mess.startswith(b"Received: (qmail ") and b" invoked by uid %d); " % pw.pw_uid in mess
    assert mess.endswith(b"\nSubject: from a user\n\nhello\n")
