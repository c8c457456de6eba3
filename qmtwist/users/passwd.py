"""
The password store: C{HOME/users/passwd} (docs/behaviour/pop3.md 10.5), and L{PasswdChecker},
the L{ICredentialsChecker} that checks a name and password against it for the POP3 built-in
login (L{qmtwist.pop3.checkpassword}) and any other listener that authenticates users.

Password hash format [qmtwist]: C{$scrypt$ln=14,r=8,p=1$SALT$KEY}, SALT (16 random bytes) and KEY
(64 bytes) in standard base64 with padding, from C{hashlib.scrypt(pw, salt, n=2**ln, r, p)}.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any, Callable

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface import implementer

from qmtwist.home import Home

SCRYPT_LN, SCRYPT_R, SCRYPT_P = 14, 8, 1


def hashPassword(password: bytes, salt: bytes | None = None) -> bytes:
    """The C{users/passwd} hash of C{password} (the format is in the module docstring)."""
    salt = os.urandom(16) if salt is None else salt
    key = hashlib.scrypt(password, salt=salt, n=2 ** SCRYPT_LN, r=SCRYPT_R, p=SCRYPT_P, dklen=64)
    return b"$scrypt$ln=%d,r=%d,p=%d$%s$%s" % (
        SCRYPT_LN, SCRYPT_R, SCRYPT_P, base64.b64encode(salt), base64.b64encode(key))


def checkPassword(password: bytes, hashed: bytes) -> bool:
    """Whether C{password} matches a hash made by L{hashPassword}; malformed hashes never match."""
    try:
        _, scheme, params, salt, key = hashed.split(b"$")
        if scheme != b"scrypt":
            return False
        p = dict(kv.split(b"=", 1) for kv in params.split(b","))
        ln, r, par = int(p[b"ln"]), int(p[b"r"]), int(p[b"p"])
        if not (14 <= ln <= 20 and 1 <= r <= 32 and 1 <= par <= 16):
            return False
        want = base64.b64decode(key, validate=True)
        got = hashlib.scrypt(password, salt=base64.b64decode(salt, validate=True), n=2 ** ln,
                             r=r, p=par, dklen=len(want), maxmem=2 ** 28)
    except (ValueError, KeyError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def readPasswd(home: Home) -> dict[bytes, bytes]:
    """C{users/passwd} as name -> hash (missing file = nobody)."""
    try:
        with open(os.path.join(home.users, "passwd"), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    out: dict[bytes, bytes] = {}
    for line in data.split(b"\n"):
        if b":" in line:
            name, h = line.split(b":", 1)
            out.setdefault(name, h)
    return out


#: Checked for a name without a line, so that the time taken does not tell names apart.
_NO_SUCH_USER = b"$scrypt$ln=14,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA"


@implementer(ICredentialsChecker)
class PasswdChecker:
    """
    C{users/passwd} as a C{twisted.cred} checker: L{IUsernamePassword} credentials whose name
    has a line there and whose password matches its hash; the avatar ID is the name (bytes).
    The file is read at every check, so a change applies to the next login (pop3.md 10.5).

    @param runInThread: runs the blocking part (file read, scrypt) off the reactor thread.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, home: Home,
                 runInThread: Callable[[Callable[[], Any]], Deferred[Any]] = maybeDeferred) -> None:
        self.home = home
        self.runInThread = runInThread

    def verify(self, user: bytes, password: bytes) -> bool:
        """Whether C{user} has a line whose hash C{password} matches; blocking."""
        hashed = readPasswd(self.home).get(user)
        if hashed is None:
            checkPassword(password, _NO_SUCH_USER)  # the same effort as for a real user
            return False
        return checkPassword(password, hashed)

    def requestAvatarId(self, credentials: Any) -> Deferred[bytes | tuple[()]]:
        """
        Fires with the name, or fails with L{UnauthorizedLogin}.

        @param credentials: an L{IUsernamePassword} (name and password as bytes; text is
            taken as UTF-8).
        """
        user, password = (v.encode() if isinstance(v, str) else v
                          for v in (credentials.username, credentials.password))

        def checked(ok: bool) -> bytes | tuple[()]:
            if not ok:
                raise UnauthorizedLogin()
            return user

        d: Deferred[bool] = self.runInThread(lambda: self.verify(user, password))
        return d.addCallback(checked)
