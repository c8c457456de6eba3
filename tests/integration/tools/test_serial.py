"""FAQ 2.4: maildirsmtp / maildirqmtp flush a Maildir to a test peer on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest

from qmtwist.home import setup
from qmtwist.qmtp.netstring import NetstringParser, decodeList, encode
from tests.support import freePort


class Peer:
    """A tiny SMTP or QMTP server: answers by recipient (bad@ 5xx, later@ 4xx, else ok)."""

    def __init__(self, proto: str) -> None:
        self.proto = proto
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[tuple[bytes, bytes, bytes]] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                (self.smtp if self.proto == "smtp" else self.qmtp)(conn)

    @staticmethod
    def verdict(rcpt: bytes) -> str:
        return "D" if rcpt.startswith(b"bad@") else "Z" if rcpt.startswith(b"later@") else "K"

    def smtp(self, conn: socket.socket) -> None:
        f = conn.makefile("rwb")
        f.write(b"220 peer.example ESMTP\r\n")
        f.flush()
        sender = rcpt = b""
        while True:
            line = f.readline()
            if not line:
                return
            cmd = line[:4].upper()
            if cmd == b"HELO":
                self.helo = line[5:].strip()
                f.write(b"250 peer.example\r\n")
            elif cmd == b"MAIL":
                sender = line.split(b"<", 1)[1].rsplit(b">", 1)[0]
                f.write(b"250 ok\r\n")
            elif cmd == b"RCPT":
                rcpt = line.split(b"<", 1)[1].rsplit(b">", 1)[0]
                v = self.verdict(rcpt)
                f.write({"K": b"250 ok\r\n", "D": b"550 no such user\r\n",
                         "Z": b"451 try later\r\n"}[v])
            elif cmd == b"DATA":
                f.write(b"354 go\r\n")
                f.flush()
                data = b""
                while True:
                    dl = f.readline()
                    if dl == b".\r\n" or not dl:
                        break
                    data += dl[1:] if dl.startswith(b".") else dl
                self.accepted.append((sender, rcpt, data))
                f.write(b"250 ok accepted\r\n")
            elif cmd == b"RSET":
                f.write(b"250 ok\r\n")
            elif cmd == b"QUIT":
                f.write(b"221 bye\r\n")
                f.flush()
                return
            else:
                f.write(b"502 unimplemented\r\n")
            f.flush()

    def qmtp(self, conn: socket.socket) -> None:
        strings: list[bytes] = []
        parser = NetstringParser(strings.append)
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                return
            parser.feed(chunk)
            while len(strings) >= 3:
                message, sender, rcpts = strings[:3]
                del strings[:3]
                [rcpt] = decodeList(rcpts)
                v = self.verdict(rcpt)
                if v == "K":
                    self.accepted.append((sender, rcpt, message))
                conn.sendall(encode(v.encode() + b"said " + v.encode()))

    def close(self) -> None:
        self.sock.close()


def _message(md, name: str, sender: bytes, rcpt: bytes, body: bytes) -> None:
    (md / "new" / name).write_bytes(b"Return-Path: <" + sender + b">\nDelivered-To: " + rcpt
                                    + b"\n" + body)


@pytest.fixture
def pppdir(home, tmp_path):
    setup(home)  # launchers for the modules that exist now
    md = tmp_path / "pppdir"
    r = subprocess.run([home.bin + "/maildirmake", str(md)], capture_output=True)
    assert r.returncode == 0, r.stderr
    _message(md, "1.1.h", b"alice@here.example", b"joe-ppp-bob@virt.host",
             b"Subject: one\n\nline\n.\nend\n")
    _message(md, "2.2.h", b"alice@here.example", b"joe-ppp-bad@virt.host", b"Subject: two\n\n")
    _message(md, "3.3.h", b"", b"joe-ppp-bad@virt.host", b"Subject: three\n\n")
    _message(md, "4.4.h", b"x@y", b"other-carol@virt.host", b"Subject: not ours\n\n")
    return md


@pytest.mark.parametrize("proto", ["smtp", "qmtp"])
def test_flush(home, pppdir, proto):
    peer = Peer(proto)
    try:
        args = [str(pppdir), "joe-ppp-", "127.0.0.1"] + (["helo.example"] if proto == "smtp"
                                                         else [])
        r = subprocess.run([os.path.join(home.bin, "maildir" + proto), *args],
                           env={**os.environ, "PORT": str(peer.port)}, capture_output=True,
                           timeout=60)
    finally:
        peer.close()
    assert (r.returncode, r.stderr) == (0, b"")
    body = b"Subject: one\n\nline\n.\nend\n"
    expected = body.replace(b"\n", b"\r\n") if proto == "smtp" else b"\n" + body
    assert peer.accepted == [(b"alice@here.example", b"bob@virt.host", expected)]
    if proto == "smtp":
        assert peer.helo == b"helo.example"
    assert sorted(os.listdir(pppdir / "new")) == ["4.4.h"]  # only what lacked the prefix
    bounces = [open(os.path.join(home.queue.sub("todo"), n), "rb").read()
               for n in os.listdir(home.queue.sub("todo"))]
    assert [b.split(b"\0", 2)[2] for b in bounces] == [b"F\0Talice@here.example\0"]


def test_deferredStaysAndUnreachable(home, pppdir):
    _message(pppdir, "5.5.h", b"a@b.c", b"joe-ppp-later@virt.host", b"\n")
    for n in ("1.1.h", "2.2.h", "3.3.h"):
        os.unlink(pppdir / "new" / n)
    peer = Peer("smtp")
    try:
        r = subprocess.run([home.bin + "/maildirsmtp", str(pppdir), "joe-ppp-", "127.0.0.1",
                            "h"], env={**os.environ, "PORT": str(peer.port)},
                           capture_output=True, timeout=60)
    finally:
        peer.close()
    assert r.returncode == 111
    assert r.stderr.endswith(b"maildirserial: fatal: making no progress, giving up\n")
    assert sorted(os.listdir(pppdir / "new")) == ["4.4.h", "5.5.h"]
    closedPort = freePort()
    r = subprocess.run([home.bin + "/maildirqmtp", str(pppdir), "joe-ppp-", "127.0.0.1"],
                       env={**os.environ, "PORT": str(closedPort)}, capture_output=True,
                       timeout=60)
    assert r.returncode == 111
    assert sorted(os.listdir(pppdir / "new")) == ["4.4.h", "5.5.h"]


def test_usage(home):
    setup(home)
    r = subprocess.run([home.bin + "/maildirsmtp", "x"], capture_output=True)
    assert (r.returncode, r.stderr) == (
        100, b"maildirsmtp: usage: maildirsmtp dir prefix host helohost\n")
