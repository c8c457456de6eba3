"""STLS with control/servercert.pem, and POP3S on an ssl: endpoint (docs/behaviour/pop3.md 10.1, 10.4)."""

from __future__ import annotations

import os
import poplib
import ssl

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from qmtwist.context import Context, ControlCache
from qmtwist.pop3.listener import makePOP3Service
from qmtwist.pop3.transaction import UNIMPLEMENTED
from tests.integration.pop3.test_listener import (
    FILES, TWO, addUser, asLines, fill)
from tests.conftest import logLines
from tests.integration.smtp.test_tls import (
    MISMATCH, writeCertificate, writeMismatchedCertificate)


def noVerify() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def start(home, endpoint: str):
    ctx = Context(home, reactor, None, ControlCache(home), deferToThread)
    s = makePOP3Service(ctx, endpoint, home.sub("rules", "pop3"), 40, root=False)
    s.startService()
    return s, s.port.getHost().port


@pytest_twisted.ensureDeferred
async def test_stls(pop3home):
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"pw")
    fill(os.path.join(userHome, "Maildir"), uid, gid)
    s, port = start(home, "tcp:0:interface=127.0.0.1")
    try:
        def plainCapa():
            p = poplib.POP3("127.0.0.1", port, timeout=30)
            out = p.capa()
            p.quit()
            return out

        assert await deferToThread(plainCapa) == {"TOP": [], "UIDL": [], "USER": []}
        writeCertificate(os.path.join(home.control, "servercert.pem"))

        def talk():
            p = poplib.POP3("127.0.0.1", port, timeout=30)
            before = p.capa()
            p.stls(context=noVerify())
            after = p.capa()
            p.user("joe")
            p.pass_("pw")
            two = p.retr(2)[1]
            p.quit()
            return before, after, two

        before, after, two = await deferToThread(talk)
        assert before == {"TOP": [], "UIDL": [], "USER": [], "STLS": []}
        assert after == {"TOP": [], "UIDL": [], "USER": []}
        assert two == asLines(TWO)
    finally:
        await s.stopService()


@pytest_twisted.ensureDeferred
async def test_pop3s_endpoint(pop3home):
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"pw")
    fill(os.path.join(userHome, "Maildir"), uid, gid)
    pem = os.path.join(home.control, "servercert.pem")
    writeCertificate(pem)
    s, port = start(home, f"ssl:0:interface=127.0.0.1:privateKey={pem}:certKey={pem}")
    try:
        def talk():
            p = poplib.POP3_SSL("127.0.0.1", port, timeout=30, context=noVerify())
            capa = p.capa()
            p.user("joe")
            p.pass_("pw")
            out = capa, p.stat(), p.retr(2)[1]
            p.quit()
            return out

        capa, stat, two = await deferToThread(talk)
        assert capa == {"TOP": [], "UIDL": [], "USER": []}  # already encrypted: no STLS
        assert stat[0] == len(FILES)
        assert two == asLines(TWO)
    finally:
        await s.stopService()


@pytest_twisted.ensureDeferred
async def test_mismatched_key_no_stls(pop3home, logEvents):
    """A key that is not the certificate's: CAPA offers no STLS and STLS is refused."""
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"pw")
    fill(os.path.join(userHome, "Maildir"), uid, gid)
    writeMismatchedCertificate(os.path.join(home.control, "servercert.pem"))
    s, port = start(home, "tcp:0:interface=127.0.0.1")
    try:
        def talk():
            p = poplib.POP3("127.0.0.1", port, timeout=30)
            capa = p.capa()
            try:
                p._shortcmd("STLS")  # poplib itself refuses when CAPA has no STLS
            except poplib.error_proto as e:
                refused = e.args[0]
            else:
                refused = None
            p.user("joe")
            p.pass_("pw")
            stat = p.stat()
            p.quit()
            return capa, refused, stat

        capa, refused, stat = await deferToThread(talk)
        assert capa == {"TOP": [], "UIDL": [], "USER": []}
        assert refused == UNIMPLEMENTED.rstrip(b"\r\n")
        assert stat[0] == len(FILES)
        assert logLines(logEvents).count(MISMATCH) == 1
    finally:
        await s.stopService()


def test_pop3s_endpoint_mismatched_key_fails_at_start(pop3home, logEvents):
    """An ssl: endpoint serving such a control/servercert.pem does not start; one clear line."""
    writeMismatchedCertificate(os.path.join(pop3home.control, "servercert.pem"))
    with pytest.raises(ValueError):
        start(pop3home, "ssl:0:interface=127.0.0.1")
    assert [line for line in logLines(logEvents) if line.startswith("alert:")] == [
        "alert: cannot start: unable to listen on ssl:0:interface=127.0.0.1: "
        "control/servercert.pem: private key does not match certificate"]
