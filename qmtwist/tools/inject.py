"""
qmail-inject: complete a message's header and queue it (docs/behaviour/tools.md 12.1; also C{qmtwist inject}).

Replaces qmail 1.03's qmail-inject. Address fields are parsed as RFC 822 address lists and
reformatted the way qmail's token822 does (L{qmtwist.tools.token822}); addresses are completed
with C{defaulthost}, C{plusdomain} and C{defaultdomain}, read from C{HOME/control} at each run
(L{qmtwist.tools.header.Completion}). Header recipients are collected right to left within a
field, as qmail does, so C{To: a, b} gives the envelope order C{b}, C{a}.

Differences [qmtwist]: values that contain CR or LF in the environment, in C{-f} or in recipient
arguments are refused (C{newline in ...}, exit 100) so that nobody can inject header lines; a
recipient field that cannot be parsed is fatal (as qmail 1.03, not notqmail's lenient mode).
"""

from __future__ import annotations

import getopt
import os
import time
from typing import BinaryIO

from qmtwist.errors import QueueError
from qmtwist.received import date822
from qmtwist.tools import token822
from qmtwist.tools.base import ProgramEnv
from qmtwist.tools.header import (
    RESENT, Completion, fieldName, quoteAddress, quoteNeeded, readCompletion, rewriteAddressText,
    splitHeader)
from qmtwist.tools.queueclient import queueMessage
from qmtwist.tools.token822 import (
    AT, ATOM, COLON, COMMENT, LEFT, QUOTE, RIGHT, ParseError, Token)

USAGE = "qmail-inject: usage: qmail-inject [ -nNaAhH ] [ -f sender ] [ recip ... ]"

_RESENT_RECIPIENT_FIELDS = {"resent-to", "resent-cc", "resent-bcc"}
_SENDER_FIELDS = {
    "sender", "from", "reply-to", "return-receipt-to", "errors-to", "resent-sender",
    "resent-from", "resent-reply-to"}
_DROPPED = {"bcc", "resent-bcc", "return-path", "content-length"}


# Replaceable in tests: the clock and the pid that go into Date and Message-ID.
clock = time.time
getpid = os.getpid


class Fatal(Exception):
    """Stop with C{qmail-inject: fatal: <text>} (or the raw text) and an exit code."""

    def __init__(self, code: int, text: bytes) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def _fatal(code: int, text: str | bytes) -> Fatal:
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogateescape")
    if not text.endswith(b"\n"):
        text += b"\n"
    return Fatal(code, b"qmail-inject: fatal: " + text)


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


class Injection:
    """
    One run of qmail-inject: options and environment in, header and envelope out.

    @ivar sender: the envelope sender once known (C{-f}, an incoming Return-Path, or default).
    """

    def __init__(self, environ: dict[str, str], completion: Completion, now: float,
                 pid: int) -> None:
        self.environ = environ
        self.completion = completion
        self.now = now
        self.pid = pid
        letters = environ.get("QMAILINJECT", "")
        self.nameComment = "c" in letters
        self.deleteSender = "s" in letters
        self.deleteFrom = "f" in letters
        self.deleteMessageId = "i" in letters
        self.verpRecipient = "r" in letters
        self.verpMessage = "m" in letters
        self.mailhost = self._first("QMAILHOST", "MAILHOST")
        shost = self._first("QMAILSHOST")
        self.mailrhost = self.mailhost if shost is None else shost
        user = self._first("QMAILUSER", "MAILUSER", "USER", "LOGNAME")
        self.mailuser = b"anonymous" if user is None else user
        suser = self._first("QMAILSUSER")
        self.mailruser = self.mailuser if suser is None else suser
        self.fullname = self._first("QMAILNAME", "MAILNAME", "NAME")
        self.sender: bytes | None = None
        self.seen: set[str] = set()
        self.headerRecipients: list[bytes] = []
        self.resentRecipients: list[bytes] = []
        self.toCc: list[bytes] = []
        self.argRecipients: list[bytes] = []
        self.resent = False

    def _first(self, *names: str) -> bytes | None:
        for name in names:
            value = self.environ.get(name)
            if value is not None:
                data = _enc(value)
                if b"\n" in data or b"\r" in data:
                    raise _fatal(100, f"newline in {name}")
                return data
        return None

    # -- addresses ---------------------------------------------------------------------

    def setSenderOption(self, value: str) -> None:
        data = _enc(value)
        if b"\n" in data or b"\r" in data:
            raise _fatal(100, "newline in -f")
        try:
            self.sender = rewriteAddressText(data, self.completion)
        except ParseError:
            raise _fatal(100, b"unable to parse this line:\n" + quoteAddress(data))

    def addArgument(self, value: str) -> None:
        data = _enc(value)
        if b"\n" in data or b"\r" in data:
            raise _fatal(100, "newline in a recipient argument")
        try:
            self.argRecipients.append(rewriteAddressText(data, self.completion))
        except ParseError:
            raise _fatal(100, b"unable to parse address: " + data)

    def _rewriteField(self, field: bytes, collect: list[list[bytes]],
                      setsReturn: bool = False) -> bytes:
        def rewrite(addr: list[Token]) -> list[Token]:
            addr = self.completion.rewrite(addr)
            text = token822.unquote(addr)
            for target in collect:
                target.append(text)
            if setsReturn and self.sender is None:
                self.sender = text + (b"-@[]" if self.verpRecipient else b"")
            return addr

        try:
            return token822.unparse(token822.addressList(token822.parse(field), rewrite))
        except ParseError:
            raise _fatal(100, b"unable to parse this line:\n" + field)

    def headerField(self, field: bytes) -> bytes | None:
        """Process one header field; return what to keep (rewritten), or L{None}."""
        name = fieldName(field)
        if name == "from" and self.deleteFrom:
            return None
        if name == "message-id" and self.deleteMessageId:
            return None
        if name == "return-path" and self.deleteSender:
            return None
        if name:
            self.seen.add(name)
        if name in ("to", "cc"):
            field = self._rewriteField(field, [self.headerRecipients, self.toCc])
        elif name in ("bcc", "apparently-to"):
            field = self._rewriteField(field, [self.headerRecipients])
        elif name in _RESENT_RECIPIENT_FIELDS:
            field = self._rewriteField(field, [self.resentRecipients])
        elif name == "return-path":
            field = self._rewriteField(field, [], setsReturn=True)
        elif name in _SENDER_FIELDS:
            field = self._rewriteField(field, [])
        if name in _DROPPED:
            return None
        return field

    # -- fields qmail-inject adds --------------------------------------------------------

    def _formatted(self, tokens: list[Token], setsReturn: bool = False) -> bytes:
        text = token822.unparse(tokens)
        return self._rewriteField(text, [], setsReturn)

    def defaultFrom(self) -> bytes:
        tokens: list[Token] = [(ATOM, b"From"), (COLON, b"")]
        angle = self.fullname is not None and not self.nameComment
        if angle:
            assert self.fullname is not None
            tokens += [(QUOTE, self.fullname), (LEFT, b"")]
        tokens.append((QUOTE if quoteNeeded(self.mailuser) else ATOM, self.mailuser))
        if self.mailhost is not None:
            tokens += [(AT, b""), (ATOM, self.mailhost)]
        if angle:
            tokens.append((RIGHT, b""))
        if self.fullname is not None and self.nameComment:
            tokens.append((COMMENT, self.fullname))
        return self._formatted(tokens)

    def defaultReturnPath(self) -> None:
        user = self.mailruser
        if self.verpMessage:
            user += b"-%d.%d" % (int(self.now), self.pid)
        if self.verpRecipient:
            user += b"-"
        tokens: list[Token] = [(ATOM, b"Return-Path"), (COLON, b""), (QUOTE, user)]
        if self.mailrhost is not None:
            tokens += [(AT, b""), (ATOM, self.mailrhost)]
        self._formatted(tokens, setsReturn=True)

    def messageId(self) -> bytes:
        t = time.gmtime(self.now)
        return b"Message-ID: <%04d%02d%02d%02d%02d%02d.%d.qmail@%s>\n" % (
            t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, self.pid,
            self.completion.idhost)

    def mailFollowupTo(self) -> bytes:
        path = self.environ.get("QMAILMFTFILE")
        if not path or "mail-followup-to" in self.seen:
            return b""
        try:
            with open(path, "rb") as f:
                lists = {line.strip().lower() for line in f.read().split(b"\n") if line.strip()}
        except FileNotFoundError:
            return b""
        except OSError:
            raise _fatal(111, "read error")
        if not any(a.lower() in lists for a in self.toCc):
            return b""
        return (b"Mail-Followup-To: "
                + b",\n  ".join(quoteAddress(a) for a in reversed(self.toCc)) + b"\n")

    def finishHeader(self, flagQueue: bool) -> bytes:
        """The lines that go before the kept header fields."""
        resent = bool(self.seen & RESENT)
        self.resent = resent
        if self.sender is None:
            self.defaultReturnPath()
        assert self.sender is not None
        out = b""
        if not flagQueue:
            out += b"Return-Path: <" + quoteAddress(self.sender) + b">\n"
        prefix = b"Resent-" if resent else b""
        names = ("resent-date", "resent-message-id", "resent-from", "resent-to", "resent-cc") \
            if resent else ("date", "message-id", "from", "to", "cc")
        if names[0] not in self.seen:
            out += prefix + b"Date: " + date822(self.now) + b"\n"
        if names[1] not in self.seen:
            out += prefix + self.messageId()
        if names[2] not in self.seen:
            out += prefix + self.defaultFrom()
        if names[3] not in self.seen and names[4] not in self.seen:
            out += prefix + b"Cc: recipient list not shown: ;\n"
        if not resent:
            out += self.mailFollowupTo()
        return out


class _Chain:
    """
    A readable stream: C{head} bytes, then the rest of C{tail}, ending with a LF as qmail's
    line reader makes it (a last line without LF gets one).
    """

    def __init__(self, head: bytes, tail: BinaryIO) -> None:
        self.head = head
        self.tail = tail
        self.last = head[-1:]
        self.done = False

    def _tailRead(self, n: int) -> bytes:
        if self.done:
            return b""
        data = self.tail.read(n)
        if not data:
            self.done = True
            return b"\n" if self.last not in (b"", b"\n") else b""
        self.last = data[-1:]
        return data

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            return b"".join(iter(lambda: self.read(65536), b""))
        if self.head:
            data, self.head = self.head[:n], self.head[n:]
            return data
        return self._tailRead(n)


def main(argv: list[str], env: ProgramEnv, requireRecipients: bool = False) -> int:
    """
    qmail-inject. C{requireRecipients} (sendmail's call): a message with no recipient is refused
    with C{no recipients}, exit 100, instead of being queued and dropped [qmtwist].
    """
    try:
        return _run(argv, env, requireRecipients)
    except Fatal as e:
        env.stderr.write(e.text)
        env.stderr.flush()
        return e.code


def _run(argv: list[str], env: ProgramEnv, requireRecipients: bool = False) -> int:
    if argv[1:] == ["--help"]:
        env.stdout.write(_enc(USAGE) + b"\n")
        return 0
    try:
        completion = readCompletion(env.home.control, env.environ,
                                    lambda line: env.warn("qmail-inject: " + line))
    except OSError:
        raise _fatal(111, "read error")
    for name in ("QMAILDEFAULTHOST", "QMAILDEFAULTDOMAIN", "QMAILPLUSDOMAIN", "QMAILIDHOST",
                 "QMAILINJECT", "QMAILMFTFILE"):
        if "\n" in env.environ.get(name, "") or "\r" in env.environ.get(name, ""):
            raise _fatal(100, f"newline in {name}")
    job = Injection(env.environ, completion, clock(), getpid())
    try:
        opts, args = getopt.getopt(argv[1:], "aAhHnNf:")
    except getopt.GetoptError:
        env.stderr.write(_enc(USAGE) + b"\n")
        return 100
    strategy = "default"
    flagQueue = True
    for opt, value in opts:
        if opt in ("-a", "-A", "-h", "-H"):
            strategy = {"-a": "args", "-A": "default", "-h": "header", "-H": "both"}[opt]
        elif opt == "-n":
            flagQueue = False
        elif opt == "-N":
            flagQueue = True
        elif opt == "-f":
            job.setSenderOption(value)
    if strategy == "default":
        strategy = "args" if args else "header"
    if strategy != "header":
        for arg in args:
            job.addArgument(arg)

    try:
        split = splitHeader(env.stdin)
    except OSError:
        raise _fatal(111, "read error")
    kept = [f for f in (job.headerField(field) for field in split.fields) if f is not None]
    top = job.finishHeader(flagQueue)
    head = top + b"".join(kept) + split.bodyStart
    assert job.sender is not None
    recipients = list(job.argRecipients)
    if strategy != "args":
        recipients += job.resentRecipients if job.resent else job.headerRecipients
    if requireRecipients and flagQueue and not recipients:
        # sendmail's callers (MUAs) get an error, not a message the queue drops [qmtwist]
        raise _fatal(100, "no recipients")
    if not flagQueue:
        body = _Chain(head, env.stdin)
        while True:
            chunk = body.read(65536)
            if not chunk:
                break
            env.stdout.write(chunk)
        env.stdout.flush()
        return 0
    try:
        queueMessage(env.home, env.environ, job.sender, recipients, _Chain(head, env.stdin))
    except QueueError as e:
        raise _fatal(100 if e.permanent else 111, e.text)
    return 0
