"""qlist2 (docs/behaviour/tools.md 14.2, FAQ 4.2): subscription by mail with a confirmation round trip."""

from __future__ import annotations

import os
import re

import pytest

from qmtwist.tools import qlist2
from tests.unit.tools.helpers import queuedMessages, runMain, stripReceived

NOW = 1762326189


@pytest.fixture
def listHome(home, tmp_path, monkeypatch):
    monkeypatch.setattr(qlist2, "clock", lambda: NOW)
    d = tmp_path / "me"
    d.mkdir()
    (d / ".qmail-sos-request").write_text("| qlist2 sos my.host.name\n")
    (d / ".qmail-sos").write_text("# the list\nold@x.y\n&keep@x.y\n")
    return home, d


def request(listHome, message: bytes, sender: str = "joe@x.y", *extra: str):
    home, d = listHome
    before = set(queuedMessages(home))
    r = runMain(qlist2.main, home, ["qlist2", "sos", "my.host.name", *extra], message,
                USER="me", HOME=str(d), SENDER=sender)
    return r, [m for m in queuedMessages(home) if m not in before]


def cookieOf(mess: bytes) -> str:
    return re.search(rb"\nSubject: confirm ([0-9a-f]{32})\n", mess).group(1).decode()


def test_subscribeRoundTrip(listHome):
    home, d = listHome
    r, sent = request(listHome, b"From: Joe <joe@x.y>\nSubject: subscribe\n\n", "joe@x.y",
                      "See http://x.y/sos")
    assert (r.code, r.err) == (0, b"")
    [(env, mess)] = sent
    assert env.split(b"\0", 2)[2] == b"Fme-sos-owner@my.host.name\0Tjoe@x.y\0"
    cookie = cookieOf(mess)
    text = stripReceived(mess)
    assert b"\nFrom: me-sos-request@my.host.name\n" in text
    assert b"\nReply-To: me-sos-request@my.host.name\n" in text
    assert b"\nTo: joe@x.y\n" in text
    assert b"confirm " + cookie.encode() in text.split(b"\n\n", 1)[1]
    assert b"See http://x.y/sos" in text and b"me-sos-owner@my.host.name" in text
    assert (d / ".qmail-sos").read_text() == "# the list\nold@x.y\n&keep@x.y\n"
    assert (d / ".qlist-sos" / cookie).read_bytes() == b"subscribe joe@x.y %d\n" % NOW
    assert os.stat(d / ".qlist-sos").st_mode & 0o777 == 0o700

    # the reply, from the subscriber
    r, sent = request(listHome, b"From: joe@x.y\nSubject: Re: confirm " + cookie.encode()
                      + b"\n\n> quoted\n")
    assert (r.code, r.err) == (0, b"")
    assert (d / ".qmail-sos").read_text() == "# the list\nold@x.y\n&keep@x.y\n&joe@x.y\n"
    assert os.stat(d / ".qmail-sos").st_mode & 0o777 == 0o700
    assert not (d / ".qlist-sos" / cookie).exists()
    [(env, mess)] = sent
    assert env.split(b"\0", 2)[2] == (
        b"Fme-sos-owner@my.host.name\0Tjoe@x.y\0Tme-sos-owner@my.host.name\0")
    assert b"\nAcknowledgment: joe@x.y is now a subscriber.\n" in mess


def test_confirmByBodyAndAlreadySubscribed(listHome):
    home, d = listHome
    _, [(_, mess)] = request(listHome, b"From: keep@x.y\n\n")  # empty message subscribes
    cookie = cookieOf(mess)
    _, [(_, ack)] = request(listHome, b"From: other@x.y\nSubject: hello\n\nconfirm: "
                            + cookie.upper().encode() + b"\n", "other@x.y")
    assert b"Acknowledgment: keep@x.y was already a subscriber." in ack
    assert (d / ".qmail-sos").read_text() == "# the list\nold@x.y\n&keep@x.y\n"


def test_unsubscribe(listHome):
    home, d = listHome
    _, [(_, mess)] = request(listHome, b"From: KEEP@x.y\n\nunsubscribe me please\n")
    cookie = cookieOf(mess)
    assert (d / ".qlist-sos" / cookie).read_bytes().startswith(b"unsubscribe KEEP@x.y ")
    _, [(_, ack)] = request(listHome, b"Subject: confirm " + cookie.encode() + b"\n\n")
    assert b"Acknowledgment: KEEP@x.y is no longer a subscriber." in ack
    assert (d / ".qmail-sos").read_text() == "# the list\nold@x.y\n"
    _, [(_, mess)] = request(listHome, b"Subject: unsubscribe\nFrom: nobody@x.y\n\n")
    _, [(_, ack)] = request(listHome, b"Subject: confirm " + cookieOf(mess).encode() + b"\n\n")
    assert b"Hmmm, I don't see nobody@x.y on the subscription list." in ack


def test_forgedSubscriptionChangesNothing(listHome):
    home, d = listHome
    r, [(env, _)] = request(listHome, b"From: victim@x.y\nSubject: subscribe\n\n",
                            "attacker@evil.example")
    assert env.endswith(b"Tvictim@x.y\0")  # the confirmation goes to the victim
    assert (d / ".qmail-sos").read_text() == "# the list\nold@x.y\n&keep@x.y\n"


@pytest.mark.parametrize("cookie,age", [("0" * 32, 0), (None, qlist2.LIFETIME + 1)])
def test_unknownOrExpired(listHome, cookie, age):
    home, d = listHome
    if cookie is None:
        _, [(_, mess)] = request(listHome, b"From: joe@x.y\n\n")
        cookie = cookieOf(mess)
        path = d / ".qlist-sos" / cookie
        path.write_bytes(b"subscribe joe@x.y %d\n" % (NOW - age))
    r, [(_, mess)] = request(listHome, b"Subject: confirm " + cookie.encode() + b"\n\n")
    assert r.code == 0
    assert b"Sorry, that confirmation code is unknown or has expired." in mess
    assert (d / ".qmail-sos").read_text() == "# the list\nold@x.y\n&keep@x.y\n"


def test_oldCookiesDeleted(listHome):
    home, d = listHome
    (d / ".qlist-sos").mkdir(mode=0o700)
    old = d / ".qlist-sos" / ("a" * 32)
    old.write_text("subscribe x@y 1\n")
    os.utime(old, (NOW - qlist2.LIFETIME - 10,) * 2)
    request(listHome, b"Precedence: bulk\n\n")
    assert not old.exists()


@pytest.mark.parametrize("message,sender,err", [
    (b"From: a@b.c\n\n", "", b"qlist2: ignoring bounce\n"),
    (b"From: a@b.c\n\n", "#@[]", b"qlist2: ignoring bounce\n"),
    (b"Precedence: junk\n\n", "a@b.c", b"qlist2: ignoring Precedence: junk\n"),
    (b"Auto-Submitted: auto-replied\n\n", "a@b.c", b"qlist2: ignoring Auto-Submitted message\n"),
])
def test_ignored(listHome, message, sender, err):
    r, sent = request(listHome, message, sender)
    assert (r.code, r.err, sent) == (0, err, [])


@pytest.mark.parametrize("frm", [b"From: joe\n\n", b"From: <a<b@c>\n\n",
                                 b"From: " + b"a" * 100 + b"@x.y\n\n"])
def test_unusableAddress(listHome, frm):
    r, sent = request(listHome, frm, "x@y.z")
    assert (r.code, r.err, sent) == (
        100, b"qlist2: fatal: sorry, I'm not allowed to use that address\n", [])


def test_usageAndEnvironment(home, tmp_path):
    r = runMain(qlist2.main, home, ["qlist2", "sos"])
    assert (r.code, r.err) == (100, b"qlist2: usage: qlist2 list host [moreinfo]\n")
    r = runMain(qlist2.main, home, ["qlist2", "sos", "h"], b"\n", SENDER="a@b")
    assert (r.code, r.err) == (111, b"qlist2: fatal: USER not set\n")


@pytest.mark.parametrize("subject,body,expected", [
    (b"", b"", ("subscribe", None)),
    (b"unsubscribe", b"", ("unsubscribe", None)),
    (b"Subscribe", b"", ("subscribe", None)),
    (b"whatever", b"\nUNSUBSCRIBE\n", ("unsubscribe", None)),
    (b"unsubscribe", b"\nsubscribe\n", ("subscribe", None)),
    (b"Re: confirm " + b"ab" * 16, b"\nunsubscribe", ("confirm", "ab" * 16)),
    (b"x", b"confirm  :: " + b"CD" * 16, ("confirm", "cd" * 16)),
])
def test_command(subject, body, expected):
    assert qlist2.command(subject, body) == expected


@pytest.mark.parametrize("frm", [b"Reply-To: me-sos-request@my.host.name\n\n",
                                 b"From: me-sos@my.host.name\n\n",
                                 b"From: ME-SOS-owner@my.host.name\n\n"])
def test_listsOwnAddressesRefused(listHome, frm):
    """A request naming the list itself would start an endless confirmation loop."""
    r, sent = request(listHome, frm, "x@y.z")
    assert (r.code, sent) == (100, [])


def test_everyMessageSentIsMarkedAutomatic(listHome):
    r, sent = request(listHome, b"From: joe@x.y\nSubject: subscribe\n\n")
    [(env, mess)] = sent
    text = stripReceived(mess)
    assert b"\nAuto-Submitted: auto-replied\n" in text and b"\nPrecedence: bulk\n" in text
    # ... so the confirmation coming back to a qlist2 (a loop) is ignored
    r, sent = request(listHome, text)
    assert (r.code, sent) == (0, [])
