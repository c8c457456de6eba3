"""
End to end through the running daemon (twistd qmtwist as a child): inject, let the queue run,
look at the mailbox, the forwarded copy or the bounce. FAQ 3.2, 3.3, 4.2, 7.4; exit 100 bounces
with the program's output; a forwarding loop bounces.
"""

from __future__ import annotations

import os

import pytest

from qmtwist.home import virtualAccount
from qmtwist.queue.store import inject
from tests.integration.daemon import Daemon, waitFor
from tests.integration.local.helpers import World

NO_LISTENERS = ["--smtp", "none", "--qmtp", "none", "--pop3", "none"]


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture
def daemon(monkeypatch):
    # the daemon must import this tree, not a (possibly stale) installed copy
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    w = World.make()
    d = Daemon(w.base, ["--home", w.home.path, *NO_LISTENERS], os.path.join(w.base, "log"))
    yield w, d
    d.stop()
    w.cleanup()


def _user(w: World, name: str) -> str:
    """A user home; as root, owned by the unprivileged qmtwistv account (never uid 0)."""
    if os.getuid() == 0:
        return w.userHome(name, *virtualAccount())
    return w.userHome(name)


def _start(d: Daemon) -> None:
    d.start()
    d.waitLine("status: local 0/10")


def _files(maildir: str) -> list[bytes]:
    out = []
    for sub in ("new", "cur"):
        p = os.path.join(maildir, sub)
        for n in sorted(os.listdir(p)):
            with open(os.path.join(p, n), "rb") as f:
                out.append(f.read())
    return out


def _send(w: World, sender: bytes, rcpts: list[bytes], body: bytes = b"hello\n") -> None:
    inject(w.home.queue, sender, rcpts, b"Subject: t\n\n" + body, b"by uid 0",
           controlDir=w.home.control)


def test_virtualDomainsListOwnerAndAlias(daemon):
    w, d = daemon
    with open(os.path.join(w.home.control, "virtualdomains"), "wb") as f:
        f.write(b"nowhere.mil:bob\neverywhere.org:bob-everywhere\nmovie.edu:alias-movie\n")
    bob = _user(w, "bob")
    me = _user(w, "me")
    w.dotqmail(bob, ".qmail-default", b"./Maildir/\n")
    w.dotqmail(bob, ".qmail-everywhere-default", b"./every.mbox\n")
    w.dotqmail(me, ".qmail-sos", b"bob-sos-copy@test.example\n")
    w.dotqmail(me, ".qmail-sos-owner", b"./owner.mbox\n")
    w.dotqmail(w.home.alias, ".qmail-movie-bob", b"bob-movie@test.example\n")
    _start(d)
    _send(w, b"x@remote.example", [b"info@nowhere.mil", b"sue@everywhere.org",
                                   b"me-sos@test.example", b"bob@movie.edu"])
    md = os.path.join(bob, "Maildir")
    files = d.waitFor(lambda: len(_files(md)) == 3 and _files(md), "three copies in ~bob/Maildir")
    heads = sorted(f.split(b"\n", 2)[1] for f in files)
    assert heads == [b"Delivered-To: bob-info@nowhere.mil",
                     b"Delivered-To: bob-movie@test.example",
                     b"Delivered-To: bob-sos-copy@test.example"]
    listCopy = [f for f in files if b"bob-sos-copy" in f.split(b"\n", 2)[1]][0]
    assert listCopy.startswith(b"Return-Path: <me-sos-owner@test.example>\n")
    assert b"\nDelivered-To: me-sos@test.example\n" in listCopy
    movie = [f for f in files if b"bob-movie" in f.split(b"\n", 2)[1]][0]
    assert b"\nDelivered-To: alias-movie-bob@movie.edu\n" in movie
    assert b"invoked by alias" in movie
    every = os.path.join(bob, "every.mbox")
    waitFor(lambda: os.path.exists(every), "~bob/every.mbox")
    with open(every, "rb") as f:
        assert b"\nDelivered-To: bob-everywhere-sue@everywhere.org\n" in f.read()


def test_exit100BouncesWithOutputAndLoopBounces(daemon):
    w, d = daemon
    sender = _user(w, "snd")
    prog = _user(w, "prog")
    w.dotqmail(prog, ".qmail-reject", b"|echo Sorry, this list is closed.; exit 100\n")
    w.dotqmail(prog, ".qmail-loop", b"&prog-loop@test.example\n")
    _start(d)
    _send(w, b"snd@test.example", [b"prog-reject@test.example"])
    _send(w, b"snd@test.example", [b"prog-loop@test.example"])
    md = os.path.join(sender, "Maildir")
    files = d.waitFor(lambda: len(_files(md)) == 2 and _files(md), "two bounces to snd")
    texts = b"\n".join(files)
    assert b"<prog-reject@test.example>:\nSorry, this list is closed.\n" in texts
    assert (b"This message is looping: it already has my Delivered-To line. (#5.4.6)"
            in texts)
    for f in files:
        assert f.startswith(b"Return-Path: <>\nDelivered-To: snd@test.example\n")
