"""SASL PLAIN and LOGIN as qmtwist/smtp/auth.py parses them (docs/behaviour/submission.md 16.2),
and the twisted.cred portal over users/passwd."""

from __future__ import annotations

import base64
import io

import pytest
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import maybeDeferred

from qmtwist.smtp.auth import (
    Cancelled, Credentials, Exchange, Malformed, UnknownMechanism, decode, login, makePortal,
    parsePlain)
from qmtwist.users.command import userCommand


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_plain_initial_response_keeps_the_authzid():
    creds = Exchange(b"plain", b64(b"bob\0alice\0pw")).start()
    assert creds == Credentials(b"PLAIN", b"bob", b"alice", b"pw")
    assert creds.borrowed()
    assert not parsePlain(b"\0alice\0pw").borrowed()
    assert not parsePlain(b"alice\0alice\0pw").borrowed()
    assert "pw" not in repr(creds)


def test_plain_without_initial_response_gets_an_empty_challenge():
    ex = Exchange(b"PLAIN", None)
    assert ex.start() == b""
    assert ex.respond(b64(b"\0alice\0pw") + b"\r") == Credentials(b"PLAIN", b"", b"alice", b"pw")


@pytest.mark.parametrize("message", [b"alice\0pw", b"\0\0pw", b"a\0b\0c\0d", b""])
def test_plain_malformed(message):
    with pytest.raises(Malformed):
        Exchange(b"PLAIN", None).respond(b64(message))


def test_plain_equals_is_an_empty_initial_response():
    with pytest.raises(Malformed):  # empty is not three fields
        Exchange(b"PLAIN", b"=").start()


def test_login_two_steps():
    ex = Exchange(b"LOGIN", None)
    assert ex.start() == b"Username:"
    assert ex.respond(b64(b"alice")) == b"Password:"
    assert ex.respond(b64(b"pw")) == Credentials(b"LOGIN", b"", b"alice", b"pw")


def test_login_with_initial_response():
    ex = Exchange(b"LOGIN", b64(b"alice"))
    assert ex.start() == b"Password:"
    assert ex.respond(b64(b"")) == Credentials(b"LOGIN", b"", b"alice", b"")


def test_cancel_bad_base64_and_unknown_mechanism():
    with pytest.raises(Cancelled):
        Exchange(b"LOGIN", None).respond(b"*")
    with pytest.raises(Malformed):
        decode(b"not base64!")
    with pytest.raises(Malformed):
        decode(b"QUFB" * 400)  # longer than any login needs
    with pytest.raises(UnknownMechanism):
        Exchange(b"CRAM-MD5", None)
    with pytest.raises(UnknownMechanism):
        Exchange(b"SCRAM-SHA-256", None)


def test_portal_over_users_passwd(home):
    assert userCommand(home, ["add", "alice", "--password-stdin"],
                       stdin=io.BytesIO(b"secret\n"), stdout=io.StringIO(),
                       stderr=io.StringIO()) == 0
    portal = makePortal(home, maybeDeferred)
    ok = []
    login(portal, Credentials(b"LOGIN", b"", b"alice", b"secret")).addCallback(ok.append)
    assert ok == [b"alice"]
    bad = []
    login(portal, Credentials(b"LOGIN", b"", b"alice", b"wrong")).addErrback(bad.append)
    login(portal, Credentials(b"LOGIN", b"", b"nobody", b"secret")).addErrback(bad.append)
    assert [f.check(UnauthorizedLogin) for f in bad] == [UnauthorizedLogin, UnauthorizedLogin]
