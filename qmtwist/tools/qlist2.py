"""
qlist2: mailing-list subscriptions by mail, with a confirmation round trip (docs/behaviour/tools.md 14.2).

Replaces qmail 1.01's qlist2 (FAQ 4.2): run as C{| qlist2 LIST HOST [MOREINFO]} from
C{~U/.qmail-LIST-request}. Unlike qlist2, a request never changes the list by itself: it
creates a cookie in C{.qlist-LIST/} and mails C{Subject: confirm <cookie>} to the address; only a
reply carrying the cookie adds C{&addr} to (or removes it from) C{.qmail-LIST}, which is rewritten
atomically with its execute bit set (forward-only, docs/behaviour/local.md 4.3), so nobody can subscribe
someone
else and the list file stays in the format the forwarding list (and majordomo's qmail patch)
uses.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import time

from qmtwist.errors import QueueError
from qmtwist.received import date822
from qmtwist.tools import token822
from qmtwist.tools.base import ProgramEnv
from qmtwist.tools.header import fieldName, readCompletion, splitHeader
from qmtwist.tools.queueclient import queueMessage

USAGE = "qlist2: usage: qlist2 list host [moreinfo]"
LIFETIME = 604800
_COOKIE = re.compile(rb"confirm[ :]*([0-9a-f]{32})", re.IGNORECASE)

clock = time.time  # replaceable in tests


class Stop(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def firstAddress(field: bytes) -> bytes | None:
    """The leftmost address of an address field, unquoted, or L{None}."""
    found: list[bytes] = []

    def collect(addr: list[token822.Token]) -> list[token822.Token]:
        found.append(token822.unquote(addr))
        return addr

    try:
        token822.addressList(token822.parse(field), collect)
    except token822.ParseError:
        return None
    return found[-1] if found else None


def usable(address: bytes) -> bool:
    return (0 < len(address) <= 100 and b"@" in address
            and not any(c <= 32 or c >= 127 or c in b"<>" for c in address))


def command(subject: bytes, body: bytes) -> tuple[str, str | None]:
    """C{("confirm", cookie)}, C{("subscribe", None)} or C{("unsubscribe", None)}."""
    m = _COOKIE.search(subject) or _COOKIE.search(body)
    if m:
        return "confirm", m.group(1).decode().lower()
    for line in body.split(b"\n"):
        word = line.strip().lower()
        if word.startswith(b"subs"):
            return "subscribe", None
        if word.startswith(b"unsu"):
            return "unsubscribe", None
    word = subject.strip().lower()
    if word.startswith(b"unsu"):
        return "unsubscribe", None
    return "subscribe", None


class ListManager:
    """One run of qlist2 for list C{name} of user C{user} in directory C{home}."""

    def __init__(self, env: ProgramEnv, name: str, host: str, moreinfo: str | None,
                 user: str, home: str) -> None:
        self.env = env
        self.name = name
        self.moreinfo = moreinfo
        self.dir = home
        self.listAddress = f"{user}-{name}@{host}".encode()
        self.request = f"{user}-{name}-request@{host}".encode()
        self.owner = f"{user}-{name}-owner@{host}".encode()
        self.listFile = os.path.join(home, f".qmail-{name}")
        self.tempFile = os.path.join(home, f".qtemp-{name}")
        self.lockFile = os.path.join(home, f".qmail-{name}-request")
        self.cookies = os.path.join(home, f".qlist-{name}")

    # -- mail --------------------------------------------------------------------------

    def send(self, to: list[bytes], subject: bytes, body: bytes) -> None:
        now = clock()
        t = time.gmtime(now)
        try:
            idhost = readCompletion(self.env.home.control, self.env.environ).idhost
        except OSError:
            raise Stop(111, "unable to read controls")
        message = (
            b"Date: " + date822(now) + b"\n"
            + b"Message-ID: <%04d%02d%02d%02d%02d%02d.%d.qmail@%s>\n" % (
                t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, os.getpid(),
                idhost)
            + b"From: " + self.request + b"\n"
            + b"Reply-To: " + self.request + b"\n"
            + b"To: " + b", ".join(to) + b"\n"
            # marks every message qlist2 sends, so no qlist2 (this one included) answers it
            + b"Auto-Submitted: auto-replied\n"
            + b"Precedence: bulk\n"
            + b"Subject: " + subject + b"\n\n" + body)
        try:
            queueMessage(self.env.home, self.env.environ, self.owner, to, message)
        except QueueError as e:
            raise Stop(100 if e.permanent else 111, e.text)

    # -- cookies -----------------------------------------------------------------------

    def cleanCookies(self, now: float) -> None:
        try:
            names = os.listdir(self.cookies)
        except FileNotFoundError:
            return
        for n in names:
            path = os.path.join(self.cookies, n)
            try:
                if now - os.stat(path).st_mtime > LIFETIME:
                    os.unlink(path)
            except OSError:
                pass

    def request_(self, action: str, target: bytes) -> None:
        cookie = secrets.token_hex(16)
        now = clock()
        try:
            os.makedirs(self.cookies, mode=0o700, exist_ok=True)
            path = os.path.join(self.cookies, cookie)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(b"%s %s %d\n" % (action.encode(), target, int(now)))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise Stop(111, f"unable to write cookie: {e.strerror}")
        verb = b"added to" if action == "subscribe" else b"removed from"
        body = (
            b"Someone, probably you, asked for the address\n\n   " + target + b"\n\n"
            b"to be " + verb + b" the mailing list " + self.listAddress + b".\n\n"
            b"To confirm, reply to this message keeping its Subject line, or send a message\n"
            b"containing the line\n\n   confirm " + cookie.encode() + b"\n\nto "
            + self.request + b".\n\n"
            b"If you did not ask for this, ignore this message; nothing will change.\n\n"
            b"The list owner is " + self.owner + b".\n")
        if self.moreinfo:
            body += b"\n" + os.fsencode(self.moreinfo) + b"\n"
        self.send([target], b"confirm " + cookie.encode(), body)

    def confirm(self, cookie: str, target: bytes) -> None:
        path = os.path.join(self.cookies, cookie)
        try:
            with open(path, "rb") as f:
                action, address, stamp = f.read().split()
            fresh = clock() - int(stamp) <= LIFETIME
        except (OSError, ValueError):
            fresh = False
        if not fresh:
            self.send([target], b"unknown confirmation code",
                      b"Sorry, that confirmation code is unknown or has expired.\n")
            return
        changed = self.apply(action.decode(), address)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sentence = {
            ("subscribe", True): b"Acknowledgment: %s is now a subscriber.",
            ("subscribe", False): b"Acknowledgment: %s was already a subscriber.",
            ("unsubscribe", True): b"Acknowledgment: %s is no longer a subscriber.",
            ("unsubscribe", False): b"Hmmm, I don't see %s on the subscription list.",
        }[(action.decode(), changed)] % address
        self.send([address, self.owner], b"list " + self.listAddress,
                  sentence + b"\n")

    def apply(self, action: str, address: bytes) -> bool:
        """Change C{.qmail-LIST} under the lock; return whether it changed."""
        try:
            lockFd = os.open(self.lockFile, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as e:
            raise Stop(111, f"unable to open {self.lockFile}: {e.strerror}")
        try:
            fcntl.flock(lockFd, fcntl.LOCK_EX)
            try:
                with open(self.listFile, "rb") as f:
                    lines = f.read().split(b"\n")
            except FileNotFoundError:
                lines = []
            if lines and lines[-1] == b"":
                lines.pop()
            entry = b"&" + address
            present = [i for i, line in enumerate(lines)
                       if line.rstrip().lower() == entry.lower()]
            if action == "subscribe":
                if present:
                    return False
                lines.append(entry)
            else:
                if not present:
                    return False
                lines = [line for i, line in enumerate(lines) if i not in present]
            data = b"".join(line + b"\n" for line in lines)
            fd = os.open(self.tempFile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(self.tempFile, 0o700)
            os.rename(self.tempFile, self.listFile)
            return True
        except OSError as e:
            raise Stop(111, f"unable to rewrite {self.listFile}: {e.strerror}")
        finally:
            os.close(lockFd)


def main(argv: list[str], env: ProgramEnv) -> int:
    if argv[1:] == ["--help"]:
        env.stdout.write(USAGE.encode() + b"\n")
        return 0
    if len(argv) < 3 or len(argv) > 4:
        env.warn(USAGE)
        return 100
    try:
        return _run(argv, env)
    except Stop as e:
        env.warn(f"qlist2: fatal: {e.text}")
        return e.code


def _run(argv: list[str], env: ProgramEnv) -> int:
    for name in ("USER", "HOME"):
        if not env.environ.get(name):
            raise Stop(111, f"{name} not set")
    sender = os.fsencode(env.environ.get("SENDER", ""))
    manager = ListManager(env, argv[1], argv[2], argv[3] if len(argv) > 3 else None,
                          env.environ["USER"], env.environ["HOME"])
    manager.cleanCookies(clock())
    if not sender or sender == b"#@[]":
        env.warn("qlist2: ignoring bounce")
        return 0
    try:
        split = splitHeader(env.stdin)
        body = split.bodyStart + env.stdin.read()
    except OSError:
        raise Stop(111, "unable to read message")
    fields = {}
    for field in split.fields:
        name = field.split(b":", 1)[0].strip().lower()
        fields.setdefault(name, field)
    precedence = fields.get(b"precedence", b"").split(b":", 1)[-1].strip().lower()
    if precedence in (b"bulk", b"junk", b"list"):
        env.warn(f"qlist2: ignoring Precedence: {precedence.decode('latin-1')}")
        return 0
    auto = fields.get(b"auto-submitted", b"").split(b":", 1)[-1].strip().lower()
    if b"auto-submitted" in fields and auto.split(b";")[0].strip() != b"no":
        env.warn("qlist2: ignoring Auto-Submitted message")
        return 0
    target = None
    for name in (b"reply-to", b"from"):
        if name in fields and fieldName(fields[name]):
            target = firstAddress(fields[name])
            if target:
                break
    target = target or sender
    listPrefix = manager.listAddress.rsplit(b"@", 1)[0].lower()
    if not usable(target) or target.lower().split(b"@", 1)[0].startswith(listPrefix):
        # the list's own addresses (LIST, LIST-request, LIST-owner) would loop
        raise Stop(100, "sorry, I'm not allowed to use that address")
    subject = fields.get(b"subject", b"").split(b":", 1)[-1].strip()
    what, cookie = command(subject, body)
    if what == "confirm":
        assert cookie is not None
        manager.confirm(cookie, target)
    else:
        manager.request_(what, target)
    return 0

