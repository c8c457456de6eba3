"""POP3 password guessing over real sockets: after three failures an address is refused without
a check (docs/behaviour/pop3.md 10.1), while other addresses log in."""

from __future__ import annotations

import os
import socket

import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.internet.threads import deferToThread

from tests.conftest import logLines
from tests.integration.pop3.test_listener import addUser, fill, service


def login(port: int, password: bytes, source: str = "127.0.0.1") -> bytes:
    """One session: greeting, USER, PASS, then QUIT; everything the server said after USER."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    f = s.makefile("rb")
    try:
        assert f.readline().startswith(b"+OK <")
        s.sendall(b"USER joe\r\n")
        assert f.readline() == b"+OK \r\n"
        s.sendall(b"PASS " + password + b"\r\n")
        answer = f.readline()
        if answer.startswith(b"+OK"):
            s.sendall(b"QUIT\r\n")
            f.readline()
        return answer
    finally:
        f.close()
        s.close()


@pytest_twisted.ensureDeferred
async def test_guessing_is_refused_after_three_failures(pop3home, logEvents):
    home = pop3home
    uid, gid, userHome = addUser(home, "joe", b"pw")
    fill(os.path.join(userHome, "Maildir"), uid, gid, files=[])
    s, port = service(home, root=False)
    try:
        # three guesses at once (each answered after the 1 s failure delay)
        guesses = await gatherResults([deferToThread(login, port, b"guess%d" % i)
                                       for i in range(3)])
        assert guesses == [b"-ERR authorization failed\r\n"] * 3
        # now even the right password is refused from that address, without a check
        assert await deferToThread(login, port, b"pw") == (
            b"-ERR too many failed logins, try later\r\n")
        # another client address logs in
        assert await deferToThread(login, port, b"pw", "127.0.0.2") == b"+OK \r\n"
        lines = logLines(logEvents)
        assert lines.count("pop3: authorization failed for joe from 127.0.0.1") == 3
        assert ("pop3: too many failed logins from 127.0.0.1; refusing logins from 127.0.0.1 "
                "for 30 seconds") in lines
        assert "pop3: too many failed logins from 127.0.0.1; refused joe unchecked" in lines
    finally:
        await s.stopService()
