"""
SMTP AUTH (RFC 4954) for submission: the SASL mechanisms PLAIN (RFC 4616) and LOGIN, and the
C{twisted.cred} portal they log in through (docs/behaviour/submission.md 16.2); pure apart from
the portal's checker, which runs its blocking part on a thread.

L{Exchange} is one AUTH dialogue: built from the command's mechanism and initial response, it is
fed the client's lines and answers with the next challenge or, at the end, the L{Credentials}.
Responses are decoded here (strict base64, C{=} for an empty initial response, C{*} cancels)
because Twisted's own SASL credentials do not fit: C{twisted.cred.credentials.PLAINCredentials}
would drop the authorization identity, and an authorization identity that is neither empty nor
the login must be refused (a client may not borrow another user's identity: the class of
CVE-2023-27582), so L{Credentials} keeps it for the session to check.

The login itself goes through a L{twisted.cred.portal.Portal} over the C{users/passwd} checker
(L{qmtwist.users.passwd.PasswdChecker}, the one the POP3 built-in login uses); its avatar is
the user's name (L{ISubmitter}).

SCRAM-SHA-256 is not offered: C{users/passwd} holds scrypt hashes, from which no SCRAM
StoredKey/ServerKey can be derived, so it would need a second credential per user written by
C{qmtwist user add}; inside TLS (the only place AUTH is offered) PLAIN does not expose the
password to the network, and the clients in use (mutt, s-nail, swaks, smtplib) all speak PLAIN.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, Callable

from attrs import frozen
from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from zope.interface import Interface, implementer

from qmtwist.home import Home
from qmtwist.users.passwd import PasswdChecker

#: the mechanisms offered, in the order EHLO names them
MECHANISMS = (b"PLAIN", b"LOGIN")

#: more than any real login and password need; a longer response is refused unchecked
MAX_RESPONSE = 1024


class Cancelled(Exception):
    """The client answered C{*} (RFC 4954: 501)."""


class Malformed(Exception):
    """A response that is not base64, or a PLAIN message without its three fields (501)."""


class UnknownMechanism(Exception):
    """AUTH with a mechanism not in L{MECHANISMS} (504)."""


@frozen
class Credentials:
    """
    What the client sent, not yet checked.

    @ivar mechanism: C{PLAIN} or C{LOGIN}.
    @ivar authzid: PLAIN's authorization identity (C{b""} when absent; always so for LOGIN).
    @ivar login: the authentication identity (the C{users/passwd} name).
    """

    mechanism: bytes
    authzid: bytes
    login: bytes
    password: bytes = b""

    def borrowed(self) -> bool:
        """Whether the client asks to act as somebody other than the login (refused)."""
        return self.authzid not in (b"", self.login)

    def __repr__(self) -> str:  # never show the password
        return f"Credentials({self.mechanism!r}, {self.authzid!r}, {self.login!r})"


def decode(response: bytes) -> bytes:
    """A client response line: strict base64; C{*} raises L{Cancelled}.

    @raise Malformed: not base64, or longer than L{MAX_RESPONSE}.
    """
    response = response.strip()
    if response == b"*":
        raise Cancelled()
    if len(response) > MAX_RESPONSE * 4 // 3 + 4:
        raise Malformed()
    try:
        return base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed() from None


def parsePlain(message: bytes) -> Credentials:
    """RFC 4616: C{authzid NUL authcid NUL passwd}; an empty login is malformed.

    @raise Malformed: not three fields, or an empty login.
    """
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise Malformed()
    return Credentials(b"PLAIN", parts[0], parts[1], parts[2])


class Exchange:
    """
    One AUTH dialogue (see the module docstring).

    @param mechanism: the AUTH argument's first word (any case).
    @param initial: the initial response as sent (base64, or C{=} for empty), or L{None}.
    @raise UnknownMechanism: a mechanism not offered.
    """

    def __init__(self, mechanism: bytes, initial: bytes | None) -> None:
        self.mechanism = mechanism.upper()
        if self.mechanism not in MECHANISMS:
            raise UnknownMechanism(mechanism)
        self.initial = initial
        self._login: bytes | None = None

    def start(self) -> bytes | Credentials:
        """The first step: a challenge to send (C{334}), or credentials already."""
        if self.initial is None:
            return b"Username:" if self.mechanism == b"LOGIN" else b""
        initial = b"" if self.initial.strip() == b"=" else decode(self.initial)
        if self.mechanism == b"PLAIN":
            return parsePlain(initial)
        self._login = initial  # LOGIN with the name as initial response (RFC 4954 allows it)
        return b"Password:"

    def respond(self, line: bytes) -> bytes | Credentials:
        """The client's next line: the next challenge, or the credentials.

        @raise Cancelled: C{*}.
        @raise Malformed: see L{decode} and L{parsePlain}.
        """
        data = decode(line)
        if self.mechanism == b"PLAIN":
            return parsePlain(data)
        if self._login is None:
            if not data:
                raise Malformed()
            self._login = data
            return b"Password:"
        return Credentials(b"LOGIN", b"", self._login, data)


class ISubmitter(Interface):
    """The avatar of a submission login: the user's name (bytes)."""


@implementer(IRealm)
class SubmitterRealm:
    """The realm of submission logins: the avatar is the avatar ID, the name itself."""

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if ISubmitter not in interfaces:
            raise NotImplementedError("submission offers only ISubmitter")
        return ISubmitter, avatarId, lambda: None


def makePortal(home: Home, runInThread: Callable[[Callable[[], Any]], Deferred[Any]]) -> Portal:
    """The portal over C{users/passwd}; scrypt and the file read run on C{runInThread}."""
    return Portal(SubmitterRealm(), [PasswdChecker(home, runInThread)])


def login(portal: Portal, credentials: Credentials) -> Deferred[bytes]:
    """Fires with the user's name, or fails with C{UnauthorizedLogin}."""
    d: Deferred[Any] = portal.login(
        UsernamePassword(credentials.login, credentials.password), None, ISubmitter)

    def avatar(result: Any) -> bytes:
        return bytes(result[1])
    return d.addCallback(avatar)
