"""A real home, a real injector and a LocalAgent on the running reactor, for integration tests."""

from __future__ import annotations

import os
import shutil
import tempfile

from attrs import define
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from qmtwist.context import Context, ControlCache
from qmtwist.delivery import DeliveryRequest, Report
from qmtwist.home import Home, setup
from qmtwist.local.agent import LocalAgent
from qmtwist.queue.commit import Injector
from qmtwist.queue.envelope import Envelope, decodeTodo

SENDER = b"sender@remote.example"
MESSAGE = b"Subject: test\nTo: someone\n\nFrom the body\nline two\n"


def runInThread(f):
    return deferToThread(f)


@define
class World:
    """
    A home in a fresh directory that other uids may traverse (pytest's tmp_path is 0700).

    @ivar base: the directory holding the home, user homes and message files.
    """

    base: str
    home: Home
    ctx: Context
    counter: int = 0

    @classmethod
    def make(cls) -> World:
        base = tempfile.mkdtemp(prefix="qmtwist-local-")
        os.chmod(base, 0o755)
        home = Home(os.path.join(base, "home"))
        setup(home, me="test.example")
        injector = Injector(home.queue, home.control, reactor, runInThread)
        ctx = Context(home, reactor, injector, ControlCache(home), runInThread)
        return cls(base, home, ctx)

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def agent(self, root: bool = False) -> LocalAgent:
        return LocalAgent(self.ctx, root=root)

    def mess(self, data: bytes = MESSAGE) -> str:
        """A message file as the queue holds it: the queue's Received line first."""
        self.counter += 1
        path = os.path.join(self.base, f"mess{self.counter}")
        with open(path, "wb") as f:
            f.write(b"Received: (qmail 1 invoked from network); 1 Jan 2026 00:00:00 -0000\n")
            f.write(data)
        os.chmod(path, 0o600)
        return path

    def request(self, rcpt: bytes, mess: str | None = None, sender: bytes = SENDER,
                position: int = 0, repeat: bool = False) -> DeliveryRequest:
        """A delivery of C{mess} (default: a new message), stamped as the queue stamps it."""
        mess = mess or self.mess()
        st = os.stat(mess)
        return DeliveryRequest(7, mess, sender, rcpt, position,
                               f"{st.st_mtime_ns // 1000}.P{st.st_ino}", repeat)

    def userHome(self, name: str, uid: int | None = None, gid: int | None = None,
                 maildir: bool = True) -> str:
        """A home under base with an assign pair for C{name} (uid/gid default: ours)."""
        uid = os.getuid() if uid is None else uid
        gid = os.getgid() if gid is None else gid
        h = os.path.join(self.base, "u-" + name)
        os.mkdir(h, 0o755)
        if maildir:
            for d in ("Maildir", "Maildir/tmp", "Maildir/new", "Maildir/cur"):
                os.mkdir(os.path.join(h, d), 0o700)
        for dirpath, dirnames, filenames in os.walk(h):
            os.chown(dirpath, uid, gid) if os.getuid() == 0 else None
        with open(os.path.join(self.home.users, "assign"), "ab") as f:
            f.write(b"=%s:%s:%d:%d:%s:::\n" % (name.encode(), name.encode(), uid, gid, h.encode()))
            f.write(b"+%s-:%s:%d:%d:%s:-::\n" % (name.encode(), name.encode(), uid, gid,
                                                 h.encode()))
        return h

    def dotqmail(self, homeDir: str, name: str, text: bytes, mode: int = 0o644) -> None:
        p = os.path.join(homeDir, name)
        with open(p, "wb") as f:
            f.write(text)
        os.chmod(p, mode)
        if os.getuid() == 0:
            st = os.stat(homeDir)
            os.chown(p, st.st_uid, st.st_gid)

    def todo(self) -> list[tuple[Envelope, bytes]]:
        """Each queued message in todo/: its envelope and its mess file bytes."""
        out = []
        todo = self.home.queue.sub("todo")
        for n in sorted(os.listdir(todo), key=int):
            with open(os.path.join(todo, n), "rb") as f:
                env = decodeTodo(f.read())
            with open(self.home.queue.mess(int(n)), "rb") as f:
                out.append((env, f.read()))
        return out


def maildirFiles(maildir: str) -> list[bytes]:
    """The contents of every message in C{new/}, sorted."""
    new = os.path.join(maildir, "new")
    out = []
    for n in sorted(os.listdir(new)):
        with open(os.path.join(new, n), "rb") as f:
            out.append(f.read())
    return out


async def deliverOne(agent: LocalAgent, req: DeliveryRequest) -> Report:
    [d] = agent.deliver([req])
    return await d


def withoutReceived(data: bytes) -> bytes:
    """A queued message without its first (the queue's Received) line."""
    return data.split(b"\n", 1)[1]
