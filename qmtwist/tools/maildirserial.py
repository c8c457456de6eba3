"""
Flushing a Maildir to a host over a serial link (FAQ 2.4; serialmail's maildirserial).

Shared by L{qmtwist.tools.maildirsmtp} and L{qmtwist.tools.maildirqmtp}. Each message of
C{dir/new} and C{dir/cur} starts with the C{Return-Path} and C{Delivered-To} lines the local
delivery wrote: the sender comes from the first, the recipient is the second minus C{prefix}
(messages whose recipient lacks the prefix are left alone). Both lines are removed before
sending. A message the host accepted is deleted; one rejected permanently (or rejected
temporarily while older than 14 days) is bounced to its sender and deleted; one deferred stays.
A round that makes no progress is retried; after three such rounds the program gives up:
C{maildirserial: fatal: making no progress, giving up}, exit 111.

The client is synchronous (these are stdio tools; no reactor runs here). A C{Sender} sends a
batch of messages over one connection and returns one L{Result} per message.
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable, Protocol

from attrs import frozen

from qmtwist.errors import QueueError
from qmtwist.tools.base import ProgramEnv
from qmtwist.tools.header import readCompletion
from qmtwist.tools.queueclient import queueMessage

TOO_OLD = 14 * 86400
ROUNDS = 3


@frozen
class Item:
    """One message to send: its file, envelope and the bytes to transmit."""

    path: str
    sender: bytes
    recipient: bytes
    body: bytes
    when: float


@frozen
class Result:
    """C{kind}: C{"K"} accepted, C{"Z"} deferred, C{"D"} rejected; C{text} as the host said."""

    kind: str
    text: bytes


class Sender(Protocol):
    def __call__(self, items: list[Item]) -> list[Result]:
        """Send C{items} over one connection; raise C{OSError} when the host is unreachable."""


_RP = re.compile(rb"^Return-Path: <(.*)>\n\Z", re.DOTALL)
_DT = re.compile(rb"^Delivered-To: (.*)\n\Z", re.DOTALL)


def parseMessage(path: str, data: bytes, prefix: bytes, when: float) -> Item | None:
    lines = data.split(b"\n", 2)
    if len(lines) < 3:
        return None
    rp = _RP.match(lines[0] + b"\n")
    dt = _DT.match(lines[1] + b"\n")
    if not rp or not dt or not dt.group(1).startswith(prefix):
        return None
    return Item(path, rp.group(1), dt.group(1)[len(prefix):], lines[2], when)


def scan(maildir: str, prefix: bytes) -> list[Item]:
    """Every usable message of C{maildir}, oldest first."""
    items = []
    for sub in ("new", "cur"):
        d = os.path.join(maildir, sub)
        for name in sorted(os.listdir(d)):
            if name.startswith("."):
                continue
            path = os.path.join(d, name)
            try:
                with open(path, "rb") as f:
                    data = f.read()
                when = os.stat(path).st_mtime
            except OSError:
                continue
            item = parseMessage(path, data, prefix, when)
            if item is not None:
                items.append(item)
    items.sort(key=lambda i: (i.when, i.path))
    return items


def bounceText(me: bytes, program: str, host: bytes, item: Item, result: Result) -> bytes:
    return (
        b"From: MAILER-DAEMON@" + me + b"\n"
        b"To: " + item.sender + b"\n"
        b"Subject: failure notice\n\n"
        b"Hi. This is the " + program.encode() + b" program at " + me + b".\n"
        b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
        b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        b"<" + item.recipient + b">:\n" + host + b" said: " + result.text.rstrip(b"\n")
        + b"\n\n--- Below this line is a copy of the message.\n\n" + item.body)


def flush(program: str, env: ProgramEnv, maildir: str, prefix: bytes, host: bytes,
          send: Sender, now: Callable[[], float] = time.time) -> int:
    """Deliver the Maildir; return the exit code (docs/behaviour/tools.md 13)."""
    try:
        me = readCompletion(env.home.control, env.environ).defaulthost
    except OSError:
        me = b"localhost"
    idle = 0
    while True:
        try:
            items = scan(maildir, prefix)
        except OSError as e:
            env.warn(f"maildirserial: fatal: unable to scan {maildir}: {e.strerror}")
            return 111
        if not items:
            return 0
        progress = False
        stuck = False
        try:
            results = send(items)
        except OSError as e:
            env.warn(f"{program}: warning: unable to talk to {host.decode('latin-1')}: {e}")
            results = []
        for item, result in zip(items, results):
            kind = result.kind
            if kind == "Z" and now() - item.when > TOO_OLD:
                kind = "D"
            if kind == "Z":
                stuck = True
                continue
            if kind == "D" and item.sender:
                try:
                    queueMessage(env.home, env.environ, b"", [item.sender],
                                 bounceText(me, program, host, item, result))
                except QueueError as e:
                    env.warn(f"{program}: warning: unable to bounce: {e.text}")
                    stuck = True
                    continue
            try:
                os.unlink(item.path)
                progress = True
            except OSError as e:
                env.warn(f"{program}: warning: unable to unlink {item.path}: {e.strerror}")
                stuck = True
        if len(results) < len(items):
            stuck = True
        if progress and not stuck:
            continue
        if progress:
            idle = 0
        else:
            idle += 1
        if idle >= ROUNDS:
            env.warn("maildirserial: fatal: making no progress, giving up")
            return 111


def usage(env: ProgramEnv, text: str) -> int:
    env.warn(text)
    return 100


def port(env: ProgramEnv, default: int) -> int:
    try:
        return int(env.environ.get("PORT", default))
    except ValueError:
        return default
