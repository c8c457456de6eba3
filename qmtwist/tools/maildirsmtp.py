"""
maildirsmtp: flush a Maildir to a host over SMTP (FAQ 2.4; serialmail's maildirsmtp).

C{maildirsmtp dir prefix host helohost}: port 25, or C{$PORT} [qmtwist]. See
L{qmtwist.tools.maildirserial} for what is sent, deleted and bounced.
"""

from __future__ import annotations

import os
import smtplib

from qmtwist.tools.base import ProgramEnv
from qmtwist.tools.maildirserial import Item, Result, flush, port, usage

USAGE = "maildirsmtp: usage: maildirsmtp dir prefix host helohost"
TIMEOUT = 1200


def _kind(code: int) -> str:
    if 200 <= code < 300:
        return "K"
    return "D" if 500 <= code < 600 else "Z"


def smtpSender(host: str, portNumber: int, helohost: str):  # type: ignore[no-untyped-def]
    def send(items: list[Item]) -> list[Result]:
        results: list[Result] = []
        try:
            conn = smtplib.SMTP(timeout=TIMEOUT)
            conn.command_encoding = "latin-1"
            code, msg = conn.connect(host, portNumber)
            if code != 220:
                conn.close()
                return []
            code, msg = conn.helo(helohost)
            if code != 250:
                conn.close()
                return []
            for item in items:
                code, msg = conn.docmd("MAIL", "FROM:<%s>" % item.sender.decode("latin-1"))
                if code == 250:
                    code, msg = conn.docmd("RCPT", "TO:<%s>" % item.recipient.decode("latin-1"))
                if code == 250:
                    code, msg = conn.data(item.body.replace(b"\n", b"\r\n"))
                else:
                    conn.rset()
                results.append(Result(_kind(code), b"%d %s" % (code, msg)))
            try:
                conn.quit()
            except smtplib.SMTPException:
                conn.close()
        except (smtplib.SMTPException, OSError):
            pass
        return results

    return send


def main(argv: list[str], env: ProgramEnv) -> int:
    if argv[1:] == ["--help"]:
        env.stdout.write(USAGE.encode() + b"\n")
        return 0
    if len(argv) != 5:
        return usage(env, USAGE)
    _, maildir, prefix, host, helohost = argv
    send = smtpSender(host, port(env, 25), helohost)
    return flush("maildirsmtp", env, maildir, os.fsencode(prefix), os.fsencode(host), send)
