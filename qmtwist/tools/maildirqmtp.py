"""
maildirqmtp: flush a Maildir to a host over QMTP (FAQ 2.4; serialmail's maildirqmtp).

C{maildirqmtp dir prefix host}: port 209, or C{$PORT} [qmtwist]. Several packages go over one
connection; each gets one response netstring (C{K}, C{Z} or C{D} plus text).
"""

from __future__ import annotations

import os
import socket

from qmtwist.qmtp.netstring import NetstringParser, encode, encodeList
from qmtwist.tools.base import ProgramEnv
from qmtwist.tools.maildirserial import Item, Result, flush, port, usage

USAGE = "maildirqmtp: usage: maildirqmtp dir prefix host"
TIMEOUT = 1200


def qmtpSender(host: str, portNumber: int):  # type: ignore[no-untyped-def]
    def send(items: list[Item]) -> list[Result]:
        responses: list[bytes] = []
        with socket.create_connection((host, portNumber), timeout=TIMEOUT) as sock:
            sock.sendall(b"".join(
                encode(b"\n" + i.body) + encode(i.sender) + encodeList([i.recipient])
                for i in items))
            parser = NetstringParser(responses.append)
            try:
                while len(responses) < len(items):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    parser.feed(chunk)
            except Exception:
                pass
        return [Result(r[:1].decode("latin-1") if r[:1] in (b"K", b"Z", b"D") else "Z", r[1:])
                for r in responses]

    return send


def main(argv: list[str], env: ProgramEnv) -> int:
    if argv[1:] == ["--help"]:
        env.stdout.write(USAGE.encode() + b"\n")
        return 0
    if len(argv) != 4:
        return usage(env, USAGE)
    _, maildir, prefix, host = argv
    return flush("maildirqmtp", env, maildir, os.fsencode(prefix), os.fsencode(host),
                 qmtpSender(host, port(env, 209)))
