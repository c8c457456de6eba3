"""
POP3 logins (docs/behaviour/pop3.md 10.2): the built-in checker against C{users/passwd}, and djb's
checkpassword
interface for an external program (FAQ 5.3, C{--checkpassword PROG}).

qmail-popup hands the login to C{checkpassword SUBPROG...}: descriptor 3 carries
C{name\\0password\\0timestamp\\0}; on success the program becomes the user and execs SUBPROG
(qmail-pop3d), which then talks to the client on descriptors 0/1; any nonzero exit is a refused
login and a signal a crash. Here the child's descriptors 0/1 are pipes that the session relays to
and from the client (L{Relay}), so the same code serves the twistd listener and
C{bin/qmail-popup} on stdio.

A login strategy's L{ILogin.start} fires with a L{Result}: C{SERVE} (serve this Maildir in this
process: the built-in checker when the daemon is not root), C{DONE} (a relayed child served the
session and exited 0), C{FAILED} or C{CRASHED}.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from typing import Any, Callable, NoReturn, Protocol as TypingProtocol

from attrs import frozen
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from qmtwist.home import Home
from qmtwist.interfaces import IPasswordChecker
from qmtwist.privsep import RootRefused, spawnAsUser
from qmtwist.users.lookup import parseAssign
from qmtwist.users.passwd import PasswdChecker

log = Logger(namespace="qmtwist.pop3")

#: djb's checkpassword reads at most this much from descriptor 3.
CHECKPW_MAX = 512


class LoginRefused(Exception):
    """The name or password is wrong, or the user has no mailbox."""


@frozen
class Account:
    """A virtual user who may read mail: C{HOME/homes/NAME}, its uid and gid."""

    name: bytes
    uid: int
    gid: int
    home: str

    @property
    def maildir(self) -> str:
        return os.path.join(self.home, "Maildir")


def _tooLong(user: bytes, password: bytes) -> bool:
    """What djb's checkpassword could not even read (L{CHECKPW_MAX}) or split (a NUL)."""
    return len(user) + len(password) > CHECKPW_MAX or b"\0" in user or b"\0" in password


def findAccount(home: Home, user: bytes) -> Account:
    """
    The C{=NAME} line of C{users/assign} for a user whose password has been checked
    (docs/behaviour/pop3.md 10.5); blocking (a file read), run it on a thread.

    @raise LoginRefused: no C{users/assign} or no C{=NAME} line.
    """
    try:
        with open(os.path.join(home.users, "assign"), "rb") as f:
            table = parseAssign(f.read())
    except OSError as e:
        raise LoginRefused("no users/assign") from e
    a = table.exact.get(user.lower())
    if a is None:
        raise LoginRefused("no =NAME line in users/assign")
    return Account(user, a.uid, a.gid, a.home)


def checkBuiltin(home: Home, user: bytes, password: bytes) -> Account:
    """
    Check C{user}/C{password} against C{users/passwd} (L{PasswdChecker.verify}) and find the
    home in C{users/assign} (docs/behaviour/pop3.md 10.5); blocking (scrypt and file reads).

    @raise LoginRefused: no such user, wrong password, or no C{=NAME} line.
    """
    if _tooLong(user, password):
        raise LoginRefused("too long")
    if not PasswdChecker(home).verify(user, password):
        raise LoginRefused("no such user or bad password")
    return findAccount(home, user)


@implementer(IPasswordChecker)
class BuiltinChecker:
    """
    L{IPasswordChecker} for the built-in login: the password through the C{twisted.cred}
    checker of C{users/passwd} (L{PasswdChecker}), then the account from C{users/assign}; fires
    with an L{Account} or fails with L{LoginRefused}.

    @param runInThread: runs the blocking parts off the reactor thread.
    @param passwords: the credentials checker; by default C{users/passwd} of C{home}.
    """

    def __init__(self, home: Home, runInThread: Callable[[Callable[[], Any]], Deferred[Any]],
                 passwords: ICredentialsChecker | None = None) -> None:
        self.home = home
        self.runInThread = runInThread
        self.passwords = passwords or PasswdChecker(home, runInThread)

    def check(self, user: bytes, password: bytes) -> Deferred[Any]:
        if _tooLong(user, password):
            return fail(LoginRefused("too long"))

        def refused(f: Failure) -> NoReturn:
            f.trap(UnauthorizedLogin)
            raise LoginRefused("no such user or bad password")

        d = self.passwords.requestAvatarId(UsernamePassword(user, password))
        return d.addCallbacks(
            lambda name: self.runInThread(lambda: findAccount(self.home, name)), refused)


class Result(Enum):
    SERVE = "serve"
    DONE = "done"
    FAILED = "failed"
    CRASHED = "crashed"


class LoginSession(TypingProtocol):
    """What a login strategy needs from the POP3 session."""

    env: dict[str, bytes]
    transport: Any  # the client's: a relayed child's output is written to it

    def startRelay(self, relay: Relay) -> None: ...


class ILogin(Interface):
    """How qmail-popup's PASS/APOP step is carried out."""

    def start(session: LoginSession, user: bytes, password: bytes, timestamp: bytes,
              apop: bool) -> Deferred:  # type: ignore[misc]
        """
        @return: a Deferred firing with C{(Result, maildir or None)}.
        """


class Relay(ProcessProtocol):
    """
    A child that serves the session: client bytes go to its stdin, its stdout to the client.

    @ivar ended: fires with the L{Result} when the child has exited and its pipes are closed.
    """

    def __init__(self, toClient: Callable[[bytes], None], secret: bytes | None) -> None:
        self.toClient = toClient
        self.secret = secret
        self.ended: Deferred[Result] = Deferred()
        self._open = True

    @property
    def child(self) -> IProcessTransport:
        """The child's transport (set by C{spawnProcess} before any of the methods below run)."""
        assert self.transport is not None
        return self.transport

    def connectionMade(self) -> None:
        if self.secret is not None:
            self.child.writeToChild(3, self.secret)
            self.child.closeChildFD(3)

    def fromClient(self, data: bytes) -> None:
        if self._open:
            self.child.writeToChild(0, data)

    def clientGone(self) -> None:
        """The client vanished: EOF on the child's stdin (qmail-pop3d then deletes nothing)."""
        if self._open:
            self._open = False
            self.child.closeChildFD(0)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.toClient(data)
        else:
            for line in data.decode("utf-8", "replace").splitlines():
                log.warn("pop3: child said: {line}", line=line)

    def processEnded(self, reason: Failure) -> None:
        self._open = False
        if reason.check(ProcessDone):
            result = Result.DONE
        elif getattr(reason.value, "signal", None) is not None:
            result = Result.CRASHED
        else:
            result = Result.FAILED
        self.ended.callback(result)


def childEnv(session: LoginSession, extra: dict[str, str] | None = None) -> dict[bytes, bytes]:
    """The child's environment: ours, the session's tcp-environ and C{extra}."""
    env = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
    env.update({k.encode(): v for k, v in session.env.items()})
    for k, v in (extra or {}).items():
        env[k.encode()] = os.fsencode(v)
    return env


@implementer(ILogin)
class CheckpasswordLogin:
    """
    An external checkpassword program (docs/behaviour/pop3.md 10.2): C{argv} is C{PROG SUBPROG...}, normally
    C{PROG HOME/bin/qmail-pop3d Maildir}.
    """

    def __init__(self, reactor: Any, argv: list[str]) -> None:
        self.reactor = reactor
        self.argv = argv

    def start(self, session: LoginSession, user: bytes, password: bytes, timestamp: bytes,
              apop: bool) -> Deferred:
        relay = Relay(session.transport.write, user + b"\0" + password + b"\0" + timestamp + b"\0")
        try:
            self.reactor.spawnProcess(
                relay, self.argv[0], [os.fsencode(a) for a in self.argv], childEnv(session),
                childFDs={0: "w", 1: "r", 2: "r", 3: "w"})
        except OSError as e:
            log.error("pop3: unable to run {prog}: {err}", prog=self.argv[0], err=str(e))
            return succeed((Result.FAILED, None))
        session.startRelay(relay)
        return relay.ended.addCallback(lambda r: (r, None))


@implementer(ILogin)
class BuiltinLogin:
    """
    The built-in checker (docs/behaviour/pop3.md 10.2, 10.5). Not root: the session serves the Maildir itself.
    Root: L{qmtwist.pop3.child} (qmail-pop3d) runs as the user in the user's home, relayed
    (docs/behaviour/pop3.md 10.4); uid 0 is never served. APOP is refused (the hashes cannot check digests).
    """

    def __init__(self, checker: IPasswordChecker, home: Home, reactor: Any,
                 root: bool | None = None, python: str | None = None) -> None:
        self.python = python or sys.executable
        self.checker = checker
        self.home = home
        self.reactor = reactor
        self.root = os.getuid() == 0 if root is None else root

    def start(self, session: LoginSession, user: bytes, password: bytes, timestamp: bytes,
              apop: bool) -> Deferred:
        if apop:
            return succeed((Result.FAILED, None))
        d = self.checker.check(user, password)

        def ok(account: Account) -> Any:
            if not self.root:
                return (Result.SERVE, account.maildir)
            relay = Relay(session.transport.write, None)
            env = childEnv(session, {"USER": os.fsdecode(account.name), "HOME": account.home,
                                     "SHELL": "/bin/sh"})
            try:
                # started in "/" and dropping to the user itself (docs/behaviour/pop3.md 10.4)
                spawnAsUser(self.reactor, relay, self.python, "qmtwist.pop3.child", account.uid,
                            account.gid, ["--home", account.home, "Maildir"], env,
                            {0: "w", 1: "r", 2: "r"})
            except RootRefused:
                return (Result.FAILED, None)  # uid 0 is never served
            session.startRelay(relay)
            return relay.ended.addCallback(lambda r: (r, None))

        def refused(f: Failure) -> Any:
            if not f.check(LoginRefused):
                log.failure("pop3: password check crashed", f)
                return (Result.CRASHED, None)
            return (Result.FAILED, None)

        return d.addCallbacks(ok, refused)

