"""
qmail-pop3d: the POP3 transaction state over one Maildir (docs/behaviour/pop3.md 10.3).

L{Transaction} is driven line by line by a session (the twistd listener after a built-in login,
or C{bin/qmail-pop3d} on stdio); it writes replies through C{write} and ends the session with
C{close}. Every Maildir access runs through C{runInThread}, so a big mailbox never blocks the
reactor. Deletions and the new -> cur moves happen only at QUIT; a session that ends otherwise
changes nothing.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from qmtwist.pop3 import mailbox
from qmtwist.pop3.mailbox import Message, NoMaildir

OK = b"+OK \r\n"
NO_MAILDIR = b"-ERR this user has no $HOME/Maildir\r\n"
UNIMPLEMENTED = b"-ERR unimplemented\r\n"
SYNTAX = b"-ERR syntax error\r\n"

RunInThread = Callable[[Callable[[], Any]], "Deferred[Any]"]


class Transaction:
    """
    @param maildir: the Maildir path.
    @param write: sends bytes to the client.
    @param close: ends the session (after the written bytes are flushed).
    """

    log = Logger(namespace="qmtwist.pop3")

    def __init__(self, maildir: str, runInThread: RunInThread, clock: IReactorTime,
                 write: Callable[[bytes], None], close: Callable[[], None]) -> None:
        self.maildir = maildir
        self.runInThread = runInThread
        self.clock = clock
        self.write = write
        self.close = close
        self.messages: list[Message] = []
        self.deleted: set[int] = set()
        self.last = 0
        self.quitting = False

    def start(self) -> Deferred[None]:
        """List the Maildir and greet with C{+OK }; or refuse and close."""
        d = self.runInThread(lambda: mailbox.scan(self.maildir, self.clock.seconds()))

        def listed(messages: list[Message]) -> None:
            self.messages = messages
            self.write(OK)

        def failed(f: Failure) -> None:
            if not f.check(NoMaildir):
                self.log.failure("pop3: unable to list {maildir}", f, maildir=self.maildir)
            self.write(NO_MAILDIR)
            self.quitting = True
            self.close()

        return d.addCallbacks(listed, failed)

    def line(self, verb: bytes, arg: bytes) -> Deferred[None] | None:
        """Handle one command; a Deferred means: wait before reading the next."""
        handler = getattr(self, "do_" + verb.decode("ascii", "replace").lower(), None)
        if handler is None or not verb.isalpha():
            self.write(UNIMPLEMENTED)
            return None
        result: Deferred[None] | None = handler(arg)
        return result

    # -- message numbers

    def _number(self, arg: bytes) -> int | None:
        digits = b""
        for c in arg:
            if 48 <= c <= 57:
                digits += bytes([c])
            else:
                break
        if not digits:
            self.write(SYNTAX)
            return None
        n = int(digits)
        if n == 0:
            self.write(b"-ERR messages are counted from 1\r\n")
            return None
        if n > len(self.messages):
            self.write(b"-ERR not that many messages\r\n")
            return None
        if n - 1 in self.deleted:
            self.write(b"-ERR already deleted\r\n")
            return None
        return n - 1

    # -- commands

    def do_noop(self, arg: bytes) -> None:
        self.write(OK)

    def do_stat(self, arg: bytes) -> None:
        live = [m for i, m in enumerate(self.messages) if i not in self.deleted]
        self.write(b"+OK %d %d\r\n" % (len(live), sum(m.size for m in live)))

    def _listing(self, arg: bytes, field: Callable[[Message], bytes]) -> None:
        if arg:
            i = self._number(arg)
            if i is not None:
                self.write(b"+OK %d %s\r\n" % (i + 1, field(self.messages[i])))
            return
        out = [OK]
        for i, m in enumerate(self.messages):
            if i not in self.deleted:
                out.append(b"%d %s\r\n" % (i + 1, field(m)))
        out.append(b".\r\n")
        self.write(b"".join(out))

    def do_list(self, arg: bytes) -> None:
        self._listing(arg, lambda m: b"%d" % m.size)

    def do_uidl(self, arg: bytes) -> None:
        self._listing(arg, lambda m: m.uid)

    def do_dele(self, arg: bytes) -> None:
        i = self._number(arg)
        if i is None:
            return
        self.deleted.add(i)
        self.last = max(self.last, i + 1)
        self.write(OK)

    def do_rset(self, arg: bytes) -> None:
        self.deleted.clear()
        self.last = 0
        self.write(OK)

    def do_last(self, arg: bytes) -> None:
        self.write(b"+OK %d\r\n" % self.last)

    def _send(self, i: int, limit: int | None) -> Deferred[None]:
        m = self.messages[i]
        d = self.runInThread(
            lambda: mailbox.transmit(mailbox.readMessage(self.maildir, m), limit))

        def sent(data: bytes) -> None:
            self.write(OK + data)

        def failed(f: Failure) -> None:
            f.trap(OSError)
            self.write(b"-ERR unable to open that message\r\n")

        return d.addCallbacks(sent, failed)

    def do_retr(self, arg: bytes) -> Deferred[None] | None:
        i = self._number(arg)
        return None if i is None else self._send(i, None)

    def do_top(self, arg: bytes) -> Deferred[None] | None:
        i = self._number(arg)
        if i is None:
            return None
        rest = arg.lstrip(b"0123456789").lstrip(b" ")
        digits = rest[:len(rest) - len(rest.lstrip(b"0123456789"))]
        return self._send(i, int(digits) if digits else 0)

    def do_quit(self, arg: bytes) -> Deferred[None]:
        self.quitting = True
        messages, deleted = list(self.messages), set(self.deleted)
        d = self.runInThread(lambda: mailbox.finish(self.maildir, messages, deleted))

        def done(ok: bool) -> None:
            if not ok:
                self.write(b"-ERR unable to unlink all deleted messages\r\n")
            self.write(OK)
            self.close()

        def failed(f: Failure) -> None:
            self.log.failure("pop3: QUIT failed in {maildir}", f, maildir=self.maildir)
            self.write(b"-ERR unable to unlink all deleted messages\r\n" + OK)
            self.close()

        return d.addCallbacks(done, failed)
