"""
The recipient check's lookup (qmtwist/local/exists.py, docs/behaviour/smtp-extensions.md 20.5),
on real files, checked against what local delivery's own .qmail lookup (dotqmail.locate) decides.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.defer import maybeDeferred

from qmtwist.control import Control
from qmtwist.errors import MailError
from qmtwist.local import dotqmail
from qmtwist.local.exists import MailboxCheck, hasMailbox
from qmtwist.queue.preprocess import resolveRecipient
from qmtwist.users import UserTable


@pytest.fixture
def table(home, tmp_path):
    alice = str(tmp_path / "alice")
    os.mkdir(alice, 0o755)
    uid, gid = os.getuid(), os.getgid()
    with open(os.path.join(home.users, "assign"), "w") as f:
        f.write(f"=alice:alice:{uid}:{gid}:{alice}:::\n+alice-:alice:{uid}:{gid}:{alice}:-::\n"
                f"=gone:gone:{uid}:{gid}:{tmp_path}/missing:-:x:\n.\n")
    return UserTable(home, root=False), alice


CONTROL = Control(me=b"test.example", locals=frozenset([b"test.example"]),
                  virtualdomains={b"virt.example": b"alice"}, envnoathost=b"test.example")


def touch(*parts: str) -> None:
    with open(os.path.join(*parts), "wb"):
        pass


def delivers(table: UserTable, address: bytes) -> bool:
    """What local delivery decides: not PermanentFailure(NO_MAILBOX) from its .qmail lookup."""
    channel, address = resolveRecipient(CONTROL, address)
    if channel == "remote":
        return True
    try:
        user = table.find(address.rpartition(b"@")[0])
        dotqmail.checkHome(user.home)
        dotqmail.locate(user.home, user.dash, user.ext, b"./Maildir/\n")
    except MailError as e:
        return not (e.permanent and e.text == dotqmail.NO_MAILBOX)
    return True


def check(table: UserTable, address: bytes, expected: bool) -> None:
    assert hasMailbox(table, CONTROL, address) is expected, address
    assert delivers(table, address) is expected, address


def test_unknown_users_and_the_alias_catch_all(home, table):
    t, _ = table
    check(t, b"nobody@test.example", False)
    check(t, b"nobody", False)  # envnoathost
    check(t, b"postmaster@TEST.example", True)  # alias/.qmail-postmaster
    check(t, b"Mailer-Daemon@test.example", True)
    touch(home.alias, ".qmail-default")
    check(t, b"nobody@test.example", True)


def test_users_extensions_and_default_chain(table):
    t, alice = table
    check(t, b"alice@test.example", True)  # the user's own .qmail, else defaultdelivery
    check(t, b"ALICE@test.example", True)
    check(t, b"alice-foo@test.example", False)
    touch(alice, ".qmail-foo")
    check(t, b"alice-foo@test.example", True)
    check(t, b"alice-FOO@test.example", True)
    check(t, b"alice-foo-bar@test.example", False)
    touch(alice, ".qmail-foo-default")
    check(t, b"alice-foo-bar@test.example", True)
    check(t, b"alice-a.b@test.example", False)
    touch(alice, ".qmail-a:b")  # dots in the extension are colons in the name (FAQ 4.6)
    check(t, b"alice-a.b@test.example", True)


def test_virtual_domains_and_remote(table):
    t, alice = table
    check(t, b"x@virt.example", False)  # alice-x
    touch(alice, ".qmail-x")
    check(t, b"x@virt.example", True)
    check(t, b"anyone@elsewhere.example", True)  # remote: not ours to judge


def test_a_temporary_problem_is_never_a_refusal(table, home):
    t, _ = table
    check(t, b"gone@test.example", True)  # home missing: delivery defers
    os.rename(home.alias, home.alias + ".off")
    check(t, b"nobody@test.example", True)  # no alias user: deferral (#4.3.0 text)


@pytest.mark.parametrize("local", [
    b"alice-../alice/.qmail-foo", b"alice-x/../../etc", b"alice-\x00", b"alice-a\nb",
    b"alice-" + b"x" * 300, "alice-x\u2044y".encode(), b"alice-\xc0\xaf",
])
def test_hostile_names_never_reach_a_path(table, tmp_path, local):
    t, alice = table
    touch(alice, ".qmail-foo")
    os.makedirs(os.path.join(alice, ".qmail-x"), exist_ok=True)
    touch(alice, ".qmail-x", "y")
    check(t, local + b"@test.example", False)


def test_utf8_local_parts(table):
    t, alice = table
    check(t, "alice-café@test.example".encode(), False)
    touch(alice, ".qmail-café")
    check(t, "alice-café@test.example".encode(), True)
    check(t, "alice-CAFé@test.example".encode(), True)  # ASCII lower-cased, as delivery does
    check(t, "alice-cafÉ@test.example".encode(), False)  # non-ASCII kept as it is


def test_mailbox_check_uses_the_queue_snapshot(table, home):
    t, _ = table

    class Controls:
        snapshot = CONTROL

    m = MailboxCheck(home, Controls(), maybeDeferred, root=False)
    m.users = t
    results: list[bool] = []
    m.check(b"nobody@test.example").addCallback(results.append)
    m.check(b"alice@test.example").addCallback(results.append)
    assert results == [False, True]
